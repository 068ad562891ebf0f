"""Post-training quantization with verify-and-fall-back.

    prepare (portable graph passes, unique names) → annotate from the target's table → calibrate (streamed)
    → insert Q/DQ → run FP32 and quantized on held-back samples on the target runtime → while the worst
    output's relative L2 error exceeds the budget, move the most harmful layers to higher precision
    (the target's fall-back precision where it has one, else float) and rebuild → record what was done.

Harm of a layer = SQNR lost across it: min SQNR (vs FP32) of its inputs minus SQNR of its output, measured
with the intermediate tensors exposed. Calibration statistics do not depend on precision, so fall-back
never recalibrates: each round is one rebuild and one held-back run.
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
from onnxq.quant import metrics
from onnxq.quant.annotate import FLOAT, Annotation, QuantPlan, annotate
from onnxq.quant.insert_qdq import required_opset
from onnxq.quant.engine import build_qdq_model, mismatched_shared_nodes
from onnxq.quant.recipe import Recipe

logger = logging.getLogger(__name__)

MAX_ROUNDS = 24


@dataclass
class Round:
    round: int
    error: float
    quantized_layers: int
    moved: list[str] = field(default_factory=list)


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
    rounds: list[Round] = field(default_factory=list)
    qdq_nodes: int = 0
    speedup: float | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True, default=float)

    def summary(self) -> dict:
        """The compact record stored in the model's metadata (``onnxq inspect`` shows it)."""
        return {
            "target": self.target, "precision": self.precision, "method": self.method,
            "error": round(self.error, 6), "max_error": self.max_error, "budget_met": self.budget_met,
            "kept_float": self.kept_float, "rounds": len(self.rounds),
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


def _exposed(model: ir.Model, names: list[str]) -> bytes:
    values = {v.name: v for node in model.graph for v in node.outputs}
    present = {v.name for v in model.graph.outputs}
    for name in names:
        value = values.get(name)
        if value is not None and name not in present:
            if value.dtype is None:
                value.dtype = ir.DataType.FLOAT
            model.graph.outputs.append(value)
            present.add(name)
    return numerics.model_bytes(model)


def layer_harm(fp32: bytes, quantized: ir.Model, plan: QuantPlan, target: Target, samples) -> dict[str, float]:
    """dB of SQNR each annotation loses between its inputs and its output (higher = more harmful)."""
    watch: dict[str, tuple[list[str], str]] = {}
    for annotation in plan.annotations:
        inputs = [v.name for v in annotation.nodes[0].inputs if v is not None and v.const_value is None]
        watch[annotation.name] = (inputs, annotation.output.name)
    names = sorted({n for ins, out in watch.values() for n in [*ins, out]})
    backend = target.backend
    ref = _run_many(backend.session(_exposed(_copy(fp32), names), optimize=False), backend, samples)
    got = _run_many(backend.session(_exposed(quantized, names), optimize=False), backend, samples)
    sqnr = {}
    for name in names:
        if name in ref[0] and name in got[0]:
            sqnr[name] = metrics.sqnr_db(metrics.stacked(ref, name), metrics.stacked(got, name))
    harm = {}
    for layer, (inputs, output) in watch.items():
        if output not in sqnr:
            continue
        before = min([sqnr[n] for n in inputs if n in sqnr] or [metrics.SQNR_CAP_DB])
        harm[layer] = before - sqnr[output]
    return harm


def _opset_for(model: ir.Model, table, precision: str) -> int:
    """Opset every plan the fall-back loop may build needs (a 16-bit fall-back precision needs 21)."""
    needed = required_opset(annotate(model, table, precision=precision))
    if table.fallback_precision:
        fallback = table.precisions[table.fallback_precision]
        needed = max(needed, fallback.activation.min_opset)
    return needed


def _next_precision(annotation: Annotation, plan: QuantPlan) -> str:
    fallback = plan.table.fallback_precision
    if fallback and annotation.precision != fallback and fallback in annotation.row.precisions:
        current = plan.table.precisions[annotation.precision].level
        if plan.table.precisions[fallback].level > current:
            return fallback
    return FLOAT


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
    forced: dict[str, str] = {name: FLOAT for name in dissolved}
    reasons: dict[str, str] = {name: d.reason for name, d in dissolved.items()}

    for round_index in range(MAX_ROUNDS):
        candidate = _copy(fp32)
        plan = annotate(candidate, table, variant=target.variant, precision=precision,
                        overrides=overrides, forced=forced)
        report.qdq_nodes = build_qdq_model(candidate, plan, stats, method=recipe.method,
                                           percentile=recipe.percentile)
        if not holdout:
            logger.warning("no held-back samples: the result is not verified (use --holdout N)")
            break
        say(f"verifying on {target.name} (round {round_index + 1})")
        actual = _run_many(backend.session(numerics.model_bytes(candidate)), backend, holdout)
        errors = metrics.output_errors(reference, actual)
        error = max(errors.values(), default=0.0)
        this_round = Round(round_index + 1, error, len(plan.annotations))
        report.rounds.append(this_round)
        report.error, report.output_errors = error, errors
        if error <= recipe.max_error or not recipe.fallback:
            break
        harm = layer_harm(fp32, candidate, plan, target, holdout)
        ranked = sorted((a for a in plan.annotations if a.name in harm), key=lambda a: (-harm[a.name], a.name))
        if not ranked:
            break
        step = max(1, math.ceil(len(plan.annotations) / 20))
        for annotation in ranked[:step]:
            destination = _next_precision(annotation, plan)
            forced[annotation.name] = destination
            reasons[annotation.name] = (
                f"lost {harm[annotation.name]:.1f} dB SQNR; output error {error:.3g} > budget {recipe.max_error:g}"
            )
            this_round.moved.append(f"{annotation.name} -> {destination}")
    report.budget_met = report.error <= recipe.max_error if holdout else False
    report.layers = {a.name: a.precision for a in plan.annotations}
    report.kept_float = {
        **{d.node: d.reason for d in plan.decisions if d.node},
        **{name: reasons[name] for name, dest in forced.items() if dest == FLOAT},
    }
    candidate.metadata_props[QUANT_METADATA_KEY] = json.dumps(report.summary(), sort_keys=True)
    return candidate, report
