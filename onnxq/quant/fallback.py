"""Verify-and-fall-back: find few layers to return to higher precision so the budget holds.

1. Build the fully quantized model; verify it on the held-back samples on the target runtime.
2. If it misses the budget, measure each compute layer's (every layer's, on full-offload targets) *sensitivity*: the output error of the model with
   only that layer quantized (a few held-back samples; cheap, since calibration never reruns).
3. Move layers to higher precision in order of sensitivity, most harmful first: k = 1, 2, 4, ... until the
   budget holds, then bisect back to the fewest layers that still meet it. Moves go through the target's
   fall-back stages in order (QNN: A16W8, then A16W16, then nothing — float would leave the HTP; ORT:
   straight to float): a stage runs only when the previous one could not meet the budget with every
   layer moved.

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


def stages(plan: QuantPlan) -> list[str]:
    """The fall-back stages: the table's fall-back precisions in order, then float where allowed."""
    return [*plan.table.fallback_precisions] + ([FLOAT] if plan.table.float_fallback else [])


def destination(annotation: Annotation, plan: QuantPlan, stage: str) -> str:
    """Where ``annotation`` goes in ``stage``: the highest precision of the chain up to the stage that its
    row supports and that is above its current one; unchanged if there is none (float only in the float
    stage)."""
    if stage == FLOAT:
        return FLOAT
    precisions = plan.table.precisions
    chain = plan.table.fallback_precisions[: plan.table.fallback_precisions.index(stage) + 1]
    usable = [p for p in chain if p in annotation.row.precisions
              and precisions[p].level > precisions[annotation.precision].level]
    return usable[-1] if usable else annotation.precision


def search(evaluate: Evaluate, base_forced: dict[str, str], budget: float, *, enabled: bool = True,
           every_layer: bool = False, sensitivity: dict[str, float] | None = None,
           say: Callable[[str], None] = lambda m: None) -> SearchResult:
    """Run the search described in the module docstring; ``evaluate(forced, quick)`` builds and measures.

    ``every_layer``: rank every annotated op, not only compute layers (full-offload targets, where an
    8-bit ReLU6 or residual Add between 16-bit convolutions can hold most of the error).
    ``sensitivity``: measurements of an earlier search on the same model, reused.
    """
    rounds: list[Round] = []

    def measure(forced: dict[str, str], moved: list[str]) -> tuple[QuantPlan, float]:
        plan, error = evaluate(forced, False)
        rounds.append(Round(len(rounds) + 1, error, len(plan.annotations), moved))
        say(f"verification round {len(rounds)}: error {error:.4g} (budget {budget:g})")
        return plan, error

    plan, error = measure(dict(base_forced), [])
    if error <= budget or not enabled:
        return SearchResult(dict(base_forced), plan, error, rounds)

    compute = [a for a in plan.annotations
               if (every_layer or a.row.kind is RowKind.COMPUTE) and a.name not in base_forced]
    known = sensitivity if sensitivity is not None else {}
    missing = [a for a in compute if a.name not in known]
    if missing:
        say(f"measuring the sensitivity of {len(missing)} layers")
    sensitivity = dict(known)
    for annotation in missing:
        solo = dict(base_forced)
        solo.update({other.name: FLOAT for other in compute if other is not annotation})
        sensitivity[annotation.name] = evaluate(solo, True)[1]
    ranked = sorted(compute, key=lambda a: (-sensitivity[a.name], a.name))

    best = SearchResult(dict(base_forced), plan, error, rounds, sensitivity)
    previous: dict[str, str] | None = None
    for stage in stages(plan):
        destinations = {a.name: destination(a, plan, stage) for a in ranked}
        if destinations == previous or all(destinations[a.name] == a.precision for a in ranked):
            continue  # this stage would build the same candidates as the last one
        previous = destinations

        def forced_for(k: int) -> dict[str, str]:
            forced = dict(base_forced)
            forced.update({a.name: destinations[a.name] for a in ranked[:k]
                           if destinations[a.name] != a.precision})
            return forced

        def moved(k: int) -> list[str]:
            return [f"{a.name} -> {destinations[a.name]}" for a in ranked[:k] if destinations[a.name] != a.precision]

        low, high, k = 0, None, 1
        while True:
            k = min(k, len(ranked))
            candidate_plan, candidate_error = measure(forced_for(k), moved(k))
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
            candidate_plan, candidate_error = measure(forced_for(mid), moved(mid))
            if candidate_error <= budget:
                high = mid
                best = SearchResult(forced_for(mid), candidate_plan, candidate_error, rounds, sensitivity)
            else:
                low = mid
        return best
    logger.warning("the budget %g is not met even with every compute layer moved; best error %.4g",
                   budget, best.error)
    return best
