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

from onnxq.backends.capability import Match, RowKind
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
    """What the search chose. No plan: a plan holds its candidate model, weights and all (the caller
    rebuilds the one it keeps), and the search would otherwise keep its best candidate alive throughout."""

    forced: dict[str, str]
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
    usable = [p for p in chain if precisions[p].level > precisions[annotation.precision].level
              and (p in annotation.row.precisions or _another_row_runs(plan, annotation, p))]
    return usable[-1] if usable else annotation.precision


def _rerank(evaluate: Evaluate, ranked: list[str], start: dict[str, str], base_forced: dict[str, str],
            compute: list[str], sensitivity: dict[str, float], say: Callable[[str], None]) -> list[str]:
    """Rank (layer names) for the next stage: a layer a stage moved is measured alone at its new precision
    (every other compute layer float); the others keep their measured sensitivity."""
    moved = [name for name in ranked if name in start and name not in base_forced]
    say(f"measuring {len(moved)} layers at their fall-back precision")
    residual = {}
    for name in moved:
        solo = _alone(name, compute, base_forced)
        solo[name] = start[name]
        residual[name] = evaluate(solo, True)[1]
    return sorted(ranked, key=lambda name: (-residual.get(name, sensitivity[name]), name))


def _alone(name: str, compute: list[str], base_forced: dict[str, str]) -> dict[str, str]:
    """Forced decisions that leave ``name`` the one layer of ``compute`` not float (a sensitivity probe)."""
    solo = dict(base_forced)
    solo.update({other: FLOAT for other in compute if other != name})
    return solo


def _another_row_runs(plan: QuantPlan, annotation: Annotation, precision: str) -> bool:
    """Whether a single-op row of the table runs the annotation's anchor at ``precision`` (ORT: the dynamic
    MatMul row for a MatMul that was static; its check must accept the node)."""
    anchor = annotation.nodes[0]
    return any(
        row is not annotation.row and len(row.ops) == 1 and precision in row.precisions
        and (row.check is None or row.check(Match((anchor,), plan.variant)) is None)
        for row in plan.table.rows_for(anchor.op_type)
    )


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

    # The first round's plan ranks and routes the layers. What the search needs of it is read out at once
    # and the plan goes: it holds its candidate model (quantized weights and all) for as long as it lives.
    # Later rounds' plans go at once too.
    plan, error = measure(dict(base_forced), [])
    if error <= budget or not enabled:
        return SearchResult(dict(base_forced), error, rounds)

    layers = [a for a in plan.annotations
              if (every_layer or a.row.kind is RowKind.COMPUTE) and a.name not in base_forced]
    compute = [a.name for a in layers]
    current = {a.name: a.precision for a in layers}  # the first round's precision of each layer
    routes = [{a.name: destination(a, plan, stage) for a in layers} for stage in stages(plan)]
    cumulative = plan.table.fallback_cumulative
    del plan, layers
    known = sensitivity if sensitivity is not None else {}
    missing = [name for name in compute if name not in known]
    if missing:
        say(f"measuring the sensitivity of {len(missing)} layers")
    sensitivity = dict(known)
    for name in missing:
        sensitivity[name] = evaluate(_alone(name, compute, base_forced), True)[1]
    ranked = sorted(compute, key=lambda name: (-sensitivity[name], name))

    best = SearchResult(dict(base_forced), error, rounds, sensitivity)
    previous: dict[str, str] | None = None
    start = dict(base_forced)  # what a stage's moves are added to
    for route in routes:
        destinations = {name: route[name] for name in ranked}
        destinations = {name: dest for name, dest in destinations.items() if start.get(name) != dest}
        if destinations == previous or not any(destinations[name] != current[name] for name in ranked
                                               if name in destinations):
            continue  # this stage would build the same candidates as the last one
        previous = destinations
        movable = [name for name in ranked if name in destinations and destinations[name] != current[name]]

        def forced_for(k: int) -> dict[str, str]:
            forced = dict(start)
            forced.update({name: destinations[name] for name in movable[:k]})
            return forced

        def moved(forced: dict[str, str]) -> list[str]:
            return [f"{name} -> {dest}" for name, dest in forced.items() if name not in base_forced]

        low, high, k = 0, None, 1
        while True:
            k = min(k, len(movable))
            candidate_error = measure(forced_for(k), moved(forced_for(k)))[1]
            if candidate_error <= budget:
                high = k
                best = SearchResult(forced_for(k), candidate_error, rounds, sensitivity)
                break
            if candidate_error < best.error:
                best = SearchResult(forced_for(k), candidate_error, rounds, sensitivity)
            low = k
            if k == len(movable):
                break
            k *= 2
        if high is None:
            if cumulative and movable:
                # the next stage starts from this one with every layer moved, ranked by what each layer
                # still costs there (its error alone at this stage's precision)
                start = forced_for(len(movable))
                ranked = _rerank(evaluate, ranked, start, base_forced, compute, sensitivity, say)
            continue
        while high - low > 1:
            mid = (low + high) // 2
            candidate_error = measure(forced_for(mid), moved(forced_for(mid)))[1]
            if candidate_error <= budget:
                high = mid
                best = SearchResult(forced_for(mid), candidate_error, rounds, sensitivity)
            else:
                low = mid
        return best
    logger.warning("the budget %g is not met even with every compute layer moved; best error %.4g",
                   budget, best.error)
    return best
