"""Post-training quantization with verify-and-fall-back.

    prepare (portable graph passes, unique names) → annotate from the target's table → calibrate (streamed)
    → insert Q/DQ → run FP32 and quantized on held-back samples on the target runtime → while the worst
    output's relative L2 error exceeds the budget, move the most harmful layers to higher precision
    (the target's fall-back precision where it has one, else float) and rebuild → record what was done.

The fall-back search (``onnxq.quant.fallback``) ranks layers by sensitivity. Calibration statistics do not
depend on precision, so fall-back never recalibrates: each round is one rebuild and one held-back run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import NameFixPass

from onnxq import heap, model_io, pipeline, runtime_compat
from onnxq.backends.registry import Target, resolve_target
from onnxq.calibration import CalibrationData, collect_statistics
from onnxq.inspection import QUANT_METADATA_KEY
from onnxq.quant import bias_correction, fallback, metrics
from onnxq.quant.annotate import FLOAT, QuantPlan, annotate
from onnxq.quant.insert_qdq import required_opset
from onnxq.quant.engine import build_qdq_model, mismatched_shared_nodes
from onnxq.quant.recipe import CLASSIFIER_TAIL_OPS, Recipe, default_budget
from onnxq.quant.spec import QDType
from onnxq.session_files import SessionFiles, unmap

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
    bias_correction: bool = True  # Conv/Gemm biases corrected for their rounded weights' mean shift
    speedup: float | None = None
    #: accelerators: nodes the target runs, and those it refused with the runtime's reason
    placement: dict | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True, default=float)

    def summary(self) -> dict:
        """The compact record stored in the model's metadata (``onnxq inspect`` shows it)."""
        return {
            "target": self.target, "precision": self.precision, "method": self.method,
            "error": round(self.error, 6), "max_error": self.max_error, "budget_met": self.budget_met,
            "kept_float": self.kept_float, "higher_precision": self.higher_precision, "rounds": len(self.rounds),
            **({"placement": self.placement} if self.placement is not None else {}),
        }


def prepare(model: ir.Model) -> ir.Model:
    """Portable graph passes, then unique names (exclusions and reports refer to node names)."""
    model, _ = pipeline.run_passes(model, pipeline.parse_pipeline("default"))
    NameFixPass()(model)
    return model


def check_finite_weights(plan: QuantPlan) -> None:
    """NaN/Inf in a tensor the plan quantizes (weight, bias, constant input) is a broken model, not a range."""
    from onnxq.errors import InvalidModelError

    uses = [(u.node, u.input_index) for u in plan.weights() + plan.static_inputs()]
    uses += [(b.node, b.input_index) for b in plan.biases()]
    for node, index in uses:
        value = node.inputs[index]
        array = value.const_value.numpy()
        bad = int(np.count_nonzero(~np.isfinite(array))) if np.issubdtype(array.dtype, np.floating) else 0
        if bad:
            raise InvalidModelError(
                f"initializer '{value.name}' (input {index} of {node.op_type} '{node.name}') holds {bad} NaN/Inf "
                f"values and cannot be quantized; fix the model or keep the node float (recipe exclude = "
                f"[\"{node.name}\"])")


def check_placement(model: ir.Model, target: Target, files: SessionFiles | None = None) -> dict | None:
    """Ask the target runtime where the model's nodes run; warn, with the fix, when some cannot."""
    total = sum(1 for _ in model.graph)
    with contextlib.ExitStack() as stack:
        files = files or stack.enter_context(SessionFiles())
        with files.model_file(model) as path:
            placement = target.backend.placement(path, variant=target.variant, total_nodes=total)
    if placement is None:
        return None
    refused = {name: f"{op}: {reason}" for name, (op, reason) in sorted(placement.refused.items())}
    record = {"total_nodes": total, "on_target": total - len(refused) if placement.error is None else 0,
              "full_offload": placement.full_offload, "refused": refused}
    if placement.error:
        record["error"] = placement.error
    if not placement.full_offload:
        logger.warning("%s", offload_advice(record, target.name))
    return record


def offload_advice(record: dict, target_name: str) -> str:
    """One paragraph: which nodes the target refused, why, and what to do."""
    if record.get("error") and not record["refused"]:
        return f"{target_name} could not compile the model: {record['error']}"
    ops = sorted({why.split(":", 1)[0] for why in record["refused"].values()})
    first = next(iter(record["refused"].items()))
    return (f"{target_name} runs {record['on_target']} of {record['total_nodes']} nodes; "
            f"{len(record['refused'])} would fall back to the CPU (op types: {', '.join(ops)}; e.g. "
            f"'{first[0]}': {first[1]}). Fix: replace or remove these ops before quantizing, give static "
            f"shapes (--input-shape) if the reason is a shape, or accept CPU fallback at export "
            f"(--allow-cpu-fallback)")


def static_input_shapes(model: ir.Model, calibration, target_name: str) -> ir.Model:
    """Fix dynamic input dims from the first calibration sample (the target compiles static graphs)."""
    dynamic = [v for v in model.graph.inputs if v.name not in model.graph.initializers and (
        v.shape is None or any(not isinstance(d, int) for d in v.shape))]
    if not dynamic:
        return model
    data = CalibrationData.from_source(calibration, model, limit=1, holdout=0)
    if not data.reiterable:
        from onnxq.errors import CalibrationDataError

        raise CalibrationDataError(
            f"{target_name} needs static input shapes and a one-shot calibration stream cannot lend its first "
            f"sample for them: give the shapes (--input-shape NAME=1x3x224x224) or a re-iterable source")
    first = next(iter(data))
    shapes = {v.name: tuple(first[v.name].shape) for v in dynamic}
    logger.info("static input shapes for %s from the first calibration sample: %s", target_name, shapes)
    from onnxq.pass_api import get_pass

    model, _ = pipeline.run_passes(model, [get_pass("fix-input-shapes")(shapes=shapes)])
    return model


def _reference_outputs(model: ir.Model, backend, samples, files: SessionFiles) -> list[dict[str, np.ndarray]]:
    """FP32 outputs of ``samples``; the session lives only for this call."""
    with files.model_file(model) as path:
        session = backend.reference_session(path)
    return _run_many(session, backend, samples)


def _run_many(session, backend, samples) -> list[dict[str, np.ndarray]]:
    return [backend.run(session, sample) for sample in samples]


def _float_outputs(model: ir.Model) -> list[tuple[tuple | None, str | None]]:
    """(shape, head op) of each float graph output, for ``default_budget``."""
    outputs = []
    for value in model.graph.outputs:
        if value.dtype is None or not value.dtype.is_floating_point():
            continue
        shape = None if value.shape is None else tuple(d if isinstance(d, int) else None for d in value.shape)
        producer = value.producer()
        for _ in range(8):
            if producer is None or producer.op_type not in CLASSIFIER_TAIL_OPS or not producer.inputs \
                    or producer.inputs[0] is None:
                break
            producer = producer.inputs[0].producer()
        outputs.append((shape, None if producer is None else producer.op_type))
    return outputs


def _key(forced: dict[str, str]) -> tuple:
    return tuple(sorted(forced.items()))


def _opset_for(model: ir.Model, table, precision: str) -> int:
    """Opset every plan the fall-back loop may build needs (a 16-bit fall-back precision needs 21)."""
    needed = required_opset(annotate(model, table, precision=precision))
    for name in table.fallback_precisions:
        precision = table.precisions[name]
        weights = QDType.parse(precision.weight_dtype).min_opset if precision.weight_dtype else 0
        needed = max(needed, precision.activation.min_opset, weights)
    return needed


def quantize(
    model: ir.Model,
    calibration,
    *,
    target: str | Target = "ort",
    recipe: Recipe | None = None,
    progress: Callable[[str], None] | None = None,
    session_files: SessionFiles | None = None,
) -> tuple[ir.Model, QuantReport]:
    """Quantize ``model`` for ``target`` with ``calibration`` data; see the module docstring. ``model``
    itself is not changed.

    Every ORT session reads its model from a private temporary folder where the FP32 weights are written
    once and memory-mapped, not copied, and the quantizer reads them from there too (``onnxq.session_files``).
    ``session_files``: the caller's folder (``SessionFiles.load`` may have put ``model``'s weights there
    already); the returned model's unquantized weights then stay references into it, to be saved before it
    closes. Without it the folder is quantize's own, and the returned model holds its weights in memory."""
    if session_files is not None:
        return _quantize(model, calibration, target=target, recipe=recipe, progress=progress,
                         files=session_files)
    with SessionFiles() as files:
        quantized, report = _quantize(model, calibration, target=target, recipe=recipe, progress=progress,
                                      files=files)
        files.materialize(quantized)
        return quantized, report


def _quantize(model: ir.Model, calibration, *, target: str | Target, recipe: Recipe | None,
              progress: Callable[[str], None] | None, files: SessionFiles) -> tuple[ir.Model, QuantReport]:
    recipe = recipe or Recipe()
    target = resolve_target(target) if isinstance(target, str) else target
    table = target.table()
    precision = recipe.precision or table.default_precision
    if precision not in table.precisions:
        from onnxq.errors import UnknownNameError

        raise UnknownNameError(f"precision for {target.name}", precision, table.precisions)
    say = progress or (lambda message: None)

    # A copy of the caller's model (clones share tensors): passes rewrite it, and its weights move to the
    # session folder, where every session and every candidate build reads them, mapped only while in use.
    model = model.clone()
    model_io.load_external_attributes(model)
    files.externalize(model)
    if table.static_shapes:
        model = static_input_shapes(model, calibration, target.name)
    if table.opset and runtime_compat.default_opset(model) < table.opset:
        runtime_compat.upgrade_opset(model, table.opset)
    say("preparing graph")
    # The passes read weights that they then replace (a Conv's before BN folding): those tensors are the
    # caller's too, and would stay mapped (EfficientNet-Lite0: 5 MiB resident for the rest of the run).
    read_by_passes = [value.const_value for value in model.graph.initializers.values()]
    model = prepare(model)
    runtime_compat.upgrade_opset(model, _opset_for(model, table, precision))
    files.externalize(model)
    files.release(model)
    for tensor in read_by_passes:
        unmap(tensor)
    del read_by_passes
    heap.release()
    data = CalibrationData.from_source(calibration, model, limit=recipe.calibration_size, holdout=recipe.holdout)

    overrides = recipe.overrides()
    plan = annotate(model, table, variant=target.variant, precision=precision, overrides=overrides)
    check_finite_weights(plan)
    files.release(model)
    tensors = sorted(plan.activation_specs())
    say(f"calibrating {len(tensors)} tensors")
    means = bias_correction.mean_requests(plan) if recipe.bias_correction else {}
    stats = collect_statistics(model, tensors, data, method=recipe.method, moving_average=recipe.moving_average,
                               session_files=files, channel_means=means)
    files.release(model)
    heap.release(collect=False)
    dissolved = {d.node: d for d in mismatched_shared_nodes(plan, stats, recipe.method, recipe.percentile)}

    holdout = data.holdout_samples
    budget = recipe.max_error if recipe.max_error is not None else default_budget(_float_outputs(model))
    report = QuantReport(target.name, precision, recipe.method, data.num_samples or 0, len(holdout), budget,
                         bias_correction=recipe.bias_correction)
    backend = target.backend
    reference = _reference_outputs(model, backend, holdout, files) if holdout else []
    heap.release(collect=False)
    # A Concat whose inputs' ranges differ too much cannot share an 8-bit scale: 16 bits where the target
    # has them (float would break full offload on an accelerator), else float.
    base_forced = {name: (table.fallback_precisions or (FLOAT,))[0] for name in dissolved}
    errors_seen: dict[tuple, dict[str, float]] = {}

    def build(forced: dict[str, str]) -> tuple[ir.Model, QuantPlan, int]:
        candidate = model.clone()  # shares the FP32 weights: a candidate costs its graph, not a copy
        plan = annotate(candidate, table, variant=target.variant, precision=precision,
                        overrides=overrides, forced=forced)
        count = build_qdq_model(candidate, plan, stats, method=recipe.method, percentile=recipe.percentile,
                                bias_correction=recipe.bias_correction)
        files.release(model)  # the FP32 weights it read
        heap.release(collect=False)  # the build's temporaries, before a session stacks on them
        return candidate, plan, count

    def measure(candidate: ir.Model, samples, quick: bool) -> dict[str, float]:
        with files.model_file(candidate) as path:
            session = target.session(path, quick=quick)
        outputs = _run_many(session, backend, samples)
        del session  # before the metrics' temporaries
        return metrics.output_errors(reference[: len(samples)], outputs)

    def evaluate(forced: dict[str, str], quick: bool) -> tuple[QuantPlan, float]:
        candidate, plan, _ = build(forced)
        samples = holdout[:SENSITIVITY_SAMPLES] if quick else holdout
        # Sensitivity probes use the quick session (no graph optimizations; the CPU EP in place of a
        # simulated accelerator); verification rounds run the target's real kernels, except on a simulator,
        # where they use the quick session too and the final model is verified on the real one below.
        errors = measure(candidate, samples, quick or backend.simulated)
        if not quick:
            errors_seen[_key(forced)] = errors
        # Candidates are cyclic: earlier rounds' are garbage by now (the search keeps no plan). Collect after
        # a verification round (every weight quantized); after a sensitivity probe only once their garbage
        # has grown (a collection costs 30-50 ms; see heap).
        del candidate
        heap.release(collect=None if quick else True)
        return plan, max(errors.values(), default=0.0)

    result = None
    if holdout:
        result = fallback.search(evaluate, base_forced, report.max_error, enabled=recipe.fallback,
                                 every_layer=table.full_offload, say=say)
        forced, report.error, report.rounds = result.forced, result.error, result.rounds
        report.output_errors = errors_seen.get(_key(forced), {})
    else:
        logger.warning("no held-back samples: the result is not verified (use --holdout N)")
        forced = base_forced
    candidate, plan, report.qdq_nodes = build(forced)
    if holdout and backend.simulated:
        # The search ran on the CPU stand-in; the simulator has the last word. Where it measures more error
        # than the stand-in did, search again against a budget tightened by that ratio (twice at most).
        for attempt in range(3):
            say(f"verifying on {target.name} ({len(holdout)} samples)")
            try:
                report.output_errors = measure(candidate, holdout, False)
            except Exception as error:  # noqa: BLE001 - the runtime's own exception types
                logger.warning("%s could not run the quantized model (%s); the error reported is the CPU "
                               "stand-in's", target.name, str(error).splitlines()[0] if str(error) else error)
                break
            report.error = max(report.output_errors.values(), default=0.0)
            proxy_error = result.error
            if report.error <= report.max_error or not recipe.fallback or attempt == 2 or proxy_error <= 0 \
                    or proxy_error > budget:
                break
            budget = budget * min(proxy_error / report.error, 0.9)
            say(f"{target.name} measured {report.error:.4g} where the CPU stand-in measured {proxy_error:.4g}: "
                f"searching again for {budget:.4g} on the stand-in")
            result = fallback.search(evaluate, base_forced, budget, every_layer=table.full_offload,
                                     sensitivity=result.sensitivity, say=say)
            report.rounds = report.rounds + result.rounds
            forced = result.forced
            candidate, plan, report.qdq_nodes = build(forced)
    if holdout and report.error > report.max_error:
        logger.warning("accuracy budget %g not met: worst output error %.4g", report.max_error, report.error)
    report.budget_met = bool(holdout) and report.error <= report.max_error
    report.layers = {a.name: a.precision for a in plan.annotations}
    moved = {name: f"moved to {dest} by fall-back (sensitivity {result.sensitivity.get(name, 0):.3g})"
             for name, dest in forced.items() if name not in base_forced} if result else {}
    report.kept_float = {
        **{d.node: d.reason for d in plan.decisions if d.node},
        **{name: f"{d.reason}; kept float" for name, d in dissolved.items() if base_forced[name] == FLOAT},
        **{name: why for name, why in moved.items() if forced[name] == FLOAT},
    }
    report.higher_precision = {
        **{name: base_forced[name] for name in dissolved if base_forced[name] != FLOAT},
        **{name: forced[name] for name in moved if forced[name] != FLOAT},
    }
    report.placement = check_placement(candidate, target, files)
    candidate.metadata_props[QUANT_METADATA_KEY] = json.dumps(report.summary(), sort_keys=True)
    return candidate, report
