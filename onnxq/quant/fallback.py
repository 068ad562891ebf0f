"""Verify-and-fall-back: find few layers to return to higher precision so the budget holds.

1. Build the fully quantized model; verify it on the held-back samples on the target runtime.
2. If it misses the budget, measure each compute layer's *sensitivity*: the output error of the model with
   only that layer quantized (a few held-back samples; cheap, since calibration never reruns).
3. Move layers to higher precision in order of sensitivity, most harmful first: k = 1, 2, 4, ... until the
   budget holds, then bisect back to the fewest layers that still meet it. Each move goes to the target's
   fall-back precision (e.g. A16 on QNN) where the table has one, else to float; if all moves at that
   precision are not enough, a second stage moves the same order to float.

Sensitivity ranking beats greedy "SQNR drop" heuristics when error is spread evenly over many layers
(depthwise-separable nets): it measures what each layer does to the outputs, not to its own tensor.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from onnxq.backends.capability import RowKind
from onnxq.quant.annotate import FLOAT, Annotation, QuantPlan

logger = logging.getLogger(__name__)

#: Build a candidate with ``forced`` decisions, return (plan, output error on the held-back samples).
Evaluate = Callable[[dict[str, str], bool], tuple[QuantPlan, float]]


@dataclass
class Round:
    round: int
    error: float
    quantized_layers: int
    moved: list[str] = field(default_factory=list)


@dataclass
class SearchResult:
    forced: dict[str, str]
    plan: QuantPlan
    error: float
    rounds: list[Round]
    sensitivity: dict[str, float] = field(default_factory=dict)


def next_precision(annotation: Annotation, plan: QuantPlan, *, allow_intermediate: bool) -> str:
    fallback = plan.table.fallback_precision
    if allow_intermediate and fallback and fallback in annotation.row.precisions and annotation.precision != fallback:
        if plan.table.precisions[fallback].level > plan.table.precisions[annotation.precision].level:
            return fallback
    return FLOAT


def search(evaluate: Evaluate, base_forced: dict[str, str], budget: float, *, enabled: bool = True,
           say: Callable[[str], None] = lambda m: None) -> SearchResult:
    """Run the search described in the module docstring; ``evaluate(forced, quick)`` builds and measures."""
    rounds: list[Round] = []

    def measure(forced: dict[str, str], moved: list[str]) -> tuple[QuantPlan, float]:
        plan, error = evaluate(forced, False)
        rounds.append(Round(len(rounds) + 1, error, len(plan.annotations), moved))
        say(f"verification round {len(rounds)}: error {error:.4g} (budget {budget:g})")
        return plan, error

    plan, error = measure(dict(base_forced), [])
    if error <= budget or not enabled:
        return SearchResult(dict(base_forced), plan, error, rounds)

    compute = [a for a in plan.annotations if a.row.kind is RowKind.COMPUTE]
    say(f"measuring the sensitivity of {len(compute)} layers")
    sensitivity = {}
    for annotation in compute:
        solo = dict(base_forced)
        solo.update({other.name: FLOAT for other in compute if other is not annotation})
        sensitivity[annotation.name] = evaluate(solo, True)[1]
    ranked = sorted(compute, key=lambda a: (-sensitivity[a.name], a.name))

    best = SearchResult(dict(base_forced), plan, error, rounds, sensitivity)
    for allow_intermediate in (True, False):
        destinations = {a.name: next_precision(a, plan, allow_intermediate=allow_intermediate) for a in ranked}
        if not allow_intermediate and all(d == FLOAT for d in
                                          (next_precision(a, plan, allow_intermediate=True) for a in ranked)):
            break  # the first stage already moved everything to float

        def forced_for(k: int) -> dict[str, str]:
            forced = dict(base_forced)
            forced.update({a.name: destinations[a.name] for a in ranked[:k]})
            return forced

        low, high, k = 0, None, 1
        while True:
            k = min(k, len(ranked))
            candidate_plan, candidate_error = measure(
                forced_for(k), [f"{a.name} -> {destinations[a.name]}" for a in ranked[:k]])
            if candidate_error <= budget:
                high = k
                best = SearchResult(forced_for(k), candidate_plan, candidate_error, rounds, sensitivity)
                break
            if candidate_error < best.error:
                best = SearchResult(forced_for(k), candidate_plan, candidate_error, rounds, sensitivity)
            low = k
            if k == len(ranked):
                break
            k *= 2
        if high is None:
            continue
        while high - low > 1:
            mid = (low + high) // 2
            candidate_plan, candidate_error = measure(
                forced_for(mid), [f"{a.name} -> {destinations[a.name]}" for a in ranked[:mid]])
            if candidate_error <= budget:
                high = mid
                best = SearchResult(forced_for(mid), candidate_plan, candidate_error, rounds, sensitivity)
            else:
                low = mid
        return best
    logger.warning("the budget %g is not met even with every compute layer moved; best error %.4g",
                   budget, best.error)
    return best
