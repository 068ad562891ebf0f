"""Post-training quantization with verify-and-fall-back.

    prepare (portable graph passes, unique names) → annotate from the target's table → calibrate (streamed)
    → insert Q/DQ → run FP32 and quantized on held-back samples on the target runtime → while the worst
    output's relative L2 error exceeds the budget, move the most harmful layers to higher precision
    (the target's fall-back precision where it has one, else float) and rebuild → record what was done.

The fall-back search (``onnxq.quant.fallback``) ranks layers by sensitivity. Calibration statistics do not
depend on precision, so fall-back never recalibrates: each round is one rebuild and one held-back run.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import NameFixPass

from onnxq import numerics, pipeline, runtime_compat
from onnxq.backends.registry import Target, resolve_target
from onnxq.calibration import CalibrationData, collect_statistics
from onnxq.inspection import QUANT_METADATA_KEY
from onnxq.quant import fallback, metrics
from onnxq.quant.annotate import FLOAT, QuantPlan, annotate
from onnxq.quant.insert_qdq import required_opset
from onnxq.quant.engine import build_qdq_model, mismatched_shared_nodes
from onnxq.quant.recipe import Recipe

logger = logging.getLogger(__name__)

#: Held-back samples used for each layer's sensitivity (the full holdout verifies every round).
SENSITIVITY_SAMPLES = 4


@dataclass
class QuantReport:
    target: str
    precision: str
    method: str
    calibration_samples: int
    holdout_samples: int
    max_error: float
    error: float = math.inf
    output_errors: dict[str, float] = field(default_factory=dict)
    budget_met: bool = False
    layers: dict[str, str] = field(default_factory=dict)  # node -> precision
    kept_float: dict[str, str] = field(default_factory=dict)  # node -> reason
    higher_precision: dict[str, str] = field(default_factory=dict)  # node -> precision it moved to
    rounds: list[fallback.Round] = field(default_factory=list)
    qdq_nodes: int = 0
    speedup: float | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True, default=float)

    def summary(self) -> dict:
        """The compact record stored in the model's metadata (``onnxq inspect`` shows it)."""
        return {
            "target": self.target, "precision": self.precision, "method": self.method,
            "error": round(self.error, 6), "max_error": self.max_error, "budget_met": self.budget_met,
            "kept_float": self.kept_float, "higher_precision": self.higher_precision, "rounds": len(self.rounds),
        }


def prepare(model: ir.Model) -> ir.Model:
    """Portable graph passes, then unique names (exclusions and reports refer to node names)."""
    model, _ = pipeline.run_passes(model, pipeline.parse_pipeline("default"))
    NameFixPass()(model)
    return model


def _copy(proto_bytes: bytes) -> ir.Model:
    import onnx

    return ir.serde.deserialize_model(onnx.load_from_string(proto_bytes))


def _run_many(session, backend, samples) -> list[dict[str, np.ndarray]]:
    return [backend.run(session, sample) for sample in samples]


def _key(forced: dict[str, str]) -> tuple:
    return tuple(sorted(forced.items()))


def _opset_for(model: ir.Model, table, precision: str) -> int:
    """Opset every plan the fall-back loop may build needs (a 16-bit fall-back precision needs 21)."""
    needed = required_opset(annotate(model, table, precision=precision))
    if table.fallback_precision:
        fallback = table.precisions[table.fallback_precision]
        needed = max(needed, fallback.activation.min_opset)
    return needed


def quantize(
    model: ir.Model,
    calibration,
    *,
    target: str | Target = "ort",
    recipe: Recipe | None = None,
    progress: Callable[[str], None] | None = None,
) -> tuple[ir.Model, QuantReport]:
    """Quantize ``model`` for ``target`` with ``calibration`` data; see the module docstring."""
    recipe = recipe or Recipe()
    target = resolve_target(target) if isinstance(target, str) else target
    table = target.table()
    precision = recipe.precision or table.default_precision
    if precision not in table.precisions:
        from onnxq.errors import UnknownNameError

        raise UnknownNameError(f"precision for {target.name}", precision, table.precisions)
    say = progress or (lambda message: None)

    say("preparing graph")
    model = prepare(model)
    runtime_compat.upgrade_opset(model, _opset_for(model, table, precision))
    fp32 = ir.to_proto(model).SerializeToString()
    data = CalibrationData.from_source(calibration, model, limit=recipe.calibration_size, holdout=recipe.holdout)

    overrides = recipe.overrides()
    plan = annotate(model, table, variant=target.variant, precision=precision, overrides=overrides)
    tensors = sorted(plan.activation_specs())
    say(f"calibrating {len(tensors)} tensors")
    stats = collect_statistics(model, tensors, data, method=recipe.method, moving_average=recipe.moving_average)
    dissolved = {d.node: d for d in mismatched_shared_nodes(plan, stats, recipe.method, recipe.percentile)}

    holdout = data.holdout_samples
    report = QuantReport(target.name, precision, recipe.method, data.num_samples or 0, len(holdout), recipe.max_error)
    backend = target.backend
    reference = _run_many(backend.session(fp32), backend, holdout) if holdout else []
    base_forced = {name: FLOAT for name in dissolved}
    errors_seen: dict[tuple, dict[str, float]] = {}

    def build(forced: dict[str, str]) -> tuple[ir.Model, QuantPlan, int]:
        candidate = _copy(fp32)
        plan = annotate(candidate, table, variant=target.variant, precision=precision,
                        overrides=overrides, forced=forced)
        count = build_qdq_model(candidate, plan, stats, method=recipe.method, percentile=recipe.percentile)
        return candidate, plan, count

    def evaluate(forced: dict[str, str], quick: bool) -> tuple[QuantPlan, float]:
        candidate, plan, _ = build(forced)
        samples = holdout[:SENSITIVITY_SAMPLES] if quick else holdout
        # Sensitivity probes skip the runtime's graph optimizations (same maths, much faster session start);
        # every verification round runs the target's real fused kernels.
        session = backend.session(numerics.model_bytes(candidate), optimize=not quick)
        actual = _run_many(session, backend, samples)
        errors = metrics.output_errors(reference[: len(samples)], actual)
        if not quick:
            errors_seen[_key(forced)] = errors
        return plan, max(errors.values(), default=0.0)

    if holdout:
        result = fallback.search(evaluate, base_forced, recipe.max_error, enabled=recipe.fallback, say=say)
        forced, report.error, report.rounds = result.forced, result.error, result.rounds
        report.output_errors = errors_seen.get(_key(forced), {})
        if result.error > recipe.max_error:
            logger.warning("accuracy budget %g not met: worst output error %.4g", recipe.max_error, result.error)
    else:
        logger.warning("no held-back samples: the result is not verified (use --holdout N)")
        forced = base_forced
    candidate, plan, report.qdq_nodes = build(forced)
    report.budget_met = bool(holdout) and report.error <= recipe.max_error
    report.layers = {a.name: a.precision for a in plan.annotations}
    moved = {name: f"moved to {dest} by fall-back (sensitivity {result.sensitivity.get(name, 0):.3g})"
             for name, dest in forced.items() if name not in base_forced} if holdout else {}
    report.kept_float = {
        **{d.node: d.reason for d in plan.decisions if d.node},
        **{name: d.reason for name, d in dissolved.items()},
        **{name: why for name, why in moved.items() if forced[name] == FLOAT},
    }
    report.higher_precision = {name: forced[name] for name in moved if forced[name] != FLOAT}
    candidate.metadata_props[QUANT_METADATA_KEY] = json.dumps(report.summary(), sort_keys=True)
    return candidate, report
