"""``onnxq export --target qnn:<soc>``: a QDQ model → EPContext model + context binary + encodings + report.

1. Check the model can be exported: it is quantized (Q/DQ present), its input shapes are static, and the
   HTP takes every node (strict session, CPU fallback disabled). A node the HTP refuses is an error that
   names the node, its op, the runtime's reason and the fix, unless ``allow_cpu_fallback``.
2. Compile in a fresh process (``compile.py``: same input, same bytes) into a staging folder beside the
   destination: ``<stem>_ctx.onnx`` (EPContext node, embed mode 0) and ``<stem>_ctx_qnn.bin``.
3. Run the EPContext model back on the HTP simulator on a sample and compare with the QDQ model on ORT's
   CPU EP; write ``<stem>.encodings.json`` (AIMET 1.0.0) and ``<stem>_export.json`` (files with sha256,
   placement, the run-back check).
4. Move the files into the destination folder only when all of that succeeded.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx

from onnxq.backends.qnn import encodings, runtime, socs
from onnxq.errors import OnnxqError, OutputPathError, ValidationError

#: the run-back check: worst |EPContext on HTP - QDQ on CPU| in units of an 8-bit step of the output's range
#: (a 16-bit output is held to the same absolute accuracy as an 8-bit one: the HTP's 16-bit arithmetic is
#: not bit-exact with the CPU's, the probe measured up to a few 8-bit steps on int4 weights)
RUNBACK_TOLERANCE_LSB = 4.0


class TargetCannotRunError(OnnxqError):
    """The target cannot run (part of) the model; the message names the nodes, why, and what to do."""


@dataclass
class ExportReport:
    target: str
    soc_model: int
    htp_arch: str
    files: dict[str, dict] = field(default_factory=dict)  # name -> {"sha256", "bytes"}
    placement: dict = field(default_factory=dict)
    runback: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)
    encodings_version: str = encodings.FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True) + "\n"


def _static_inputs(proto: onnx.ModelProto, target: str) -> None:
    initializers = {t.name for t in proto.graph.initializer}
    for value in proto.graph.input:
        if value.name in initializers:
            continue
        dims = value.type.tensor_type.shape.dim
        if any(not d.HasField("dim_value") for d in dims):
            shown = "x".join(d.dim_param or "?" if not d.HasField("dim_value") else str(d.dim_value) for d in dims)
            raise TargetCannotRunError(
                f"{target} needs static input shapes; input '{value.name}' is {shown}: quantize with "
                f"--target {target} (fixes shapes from the calibration data) or pass --input-shape")


def _check_quantized(proto: onnx.ModelProto, target: str) -> None:
    if not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in proto.graph.node):
        raise TargetCannotRunError(
            f"the model has no Q/DQ nodes: the HTP runs quantized models; run `onnxq quantize MODEL -o Q.onnx "
            f"--calib DATA --target {target}` first")


def refusal_message(target: str, placement: runtime.Placement) -> str:
    if not placement.refused:
        return f"{target} cannot compile the model: {placement.error}"
    items = list(placement.refused.items())
    shown = "; ".join(f"'{name}' ({op}): {why}" if name else f"an unnamed {op}: {why}" for name, (op, why) in items[:3])
    more = f" and {len(items) - 3} more" if len(items) > 3 else ""
    return (f"{target} cannot run {len(items)} of {placement.total_nodes} nodes: {shown}{more}. Fix: quantize "
            f"with --target {target} so every op gets the Q/DQ the HTP needs, replace or remove unsupported ops, "
            f"or pass --allow-cpu-fallback to let ONNX Runtime run them on the CPU")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _compile(model_path: Path, ctx_path: Path, soc: socs.Soc, strict: bool) -> None:
    command = [sys.executable, "-m", "onnxq.backends.qnn.compile", str(model_path), str(ctx_path),
               str(soc.soc_model), "strict" if strict else "lenient"]
    done = subprocess.run(command, capture_output=True, text=True, errors="replace")
    if done.returncode != 0:
        lines = [ln for ln in done.stderr.splitlines() if ln.startswith("ONNXQ_COMPILE_ERROR: ")]
        detail = lines[-1].split(": ", 1)[1] if lines else (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise TargetCannotRunError(f"QNN context compilation for {soc.name} failed: {detail}")


def _sample_feeds(proto: onnx.ModelProto, feeds: dict[str, np.ndarray] | None) -> dict[str, np.ndarray]:
    if feeds:
        return feeds
    from onnx import helper

    rng = np.random.default_rng(0)
    initializers = {t.name for t in proto.graph.initializer}
    result = {}
    for value in proto.graph.input:
        if value.name in initializers:
            continue
        tensor_type = value.type.tensor_type
        dims = [d.dim_value for d in tensor_type.shape.dim]
        dtype = helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
        if np.issubdtype(dtype, np.floating):
            result[value.name] = rng.standard_normal(dims).astype(dtype)
        else:
            result[value.name] = np.zeros(dims, dtype)
    return result


def _output_steps(proto: onnx.ModelProto) -> dict[str, float]:
    """Graph output -> an 8-bit step of the range of the DequantizeLinear producing it (its own step for
    8-bit outputs; range / 255 for 16-bit ones)."""
    initializers = {t.name: t for t in proto.graph.initializer}
    steps = {}
    for node in proto.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[1] in initializers:
            scale = onnx.numpy_helper.to_array(initializers[node.input[1]])
            zero = initializers.get(node.input[2]) if len(node.input) > 2 else None
            bits = onnx.numpy_helper.to_array(zero).dtype.itemsize * 8 if zero is not None else 8
            if scale.size == 1:
                steps[node.output[0]] = float(scale.reshape(())) * ((1 << bits) - 1) / 255.0
    return {o.name: steps[o.name] for o in proto.graph.output if o.name in steps}


def _runback(model_path: Path, ctx_path: Path, soc: socs.Soc, feeds, strict: bool) -> dict:
    import onnxruntime as ort

    proto = onnx.load(str(model_path), load_external_data=False)
    feeds = _sample_feeds(proto, feeds)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    reference = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    with runtime.captured_stderr():
        compiled = ort.InferenceSession(str(ctx_path), runtime.session_options(str(soc.soc_model), strict=strict))
    names = [o.name for o in reference.get_outputs()]
    expected = reference.run(names, feeds)
    actual = compiled.run(names, feeds)
    steps = _output_steps(proto)
    worst_lsb, worst_abs = 0.0, 0.0
    for name, a, b in zip(names, expected, actual, strict=True):
        diff = float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)))) if np.size(a) else 0.0
        worst_abs = max(worst_abs, diff)
        if name in steps and steps[name] > 0:
            worst_lsb = max(worst_lsb, diff / steps[name])
    return {"outputs": names, "max_abs_diff": worst_abs, "max_diff_lsb": worst_lsb,
            "tolerance_lsb": RUNBACK_TOLERANCE_LSB, "passed": worst_lsb <= RUNBACK_TOLERANCE_LSB}


def export(model_path: Path, soc: socs.Soc, out_dir: Path, *, allow_cpu_fallback: bool = False,
           feeds: dict[str, np.ndarray] | None = None) -> ExportReport:
    target = f"qnn:{soc.name}"
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputPathError(f"output '{out_dir}' is a file; export writes a folder (-o DIR)")
    parent = out_dir.parent if str(out_dir.parent) else Path(".")
    if not parent.is_dir():
        raise OutputPathError(f"output folder '{parent}' does not exist")
    if not os.access(parent, os.W_OK):
        raise OutputPathError(f"output folder '{parent}' is not writable")
    reason = runtime.available()
    if reason:
        raise runtime.QnnUnavailableError(reason)
    proto = onnx.load(str(model_path), load_external_data=False)
    _check_quantized(proto, target)
    _static_inputs(proto, target)
    total = len(proto.graph.node)
    placement = runtime.placement(str(model_path), str(soc.soc_model), total)
    if not placement.full_offload and (placement.error or not allow_cpu_fallback):
        raise TargetCannotRunError(refusal_message(target, placement))

    stem = model_path.stem
    names = [f"{stem}_ctx.onnx", f"{stem}_ctx_qnn.bin", f"{stem}.encodings.json", f"{stem}_export.json"]
    for name in names:
        existing = out_dir / name
        if existing.exists() and existing.resolve() == model_path.resolve():
            raise OutputPathError(f"export would overwrite its input '{model_path}'; choose another folder")
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=parent))
    try:
        ctx_path = staging / names[0]
        _compile(model_path, ctx_path, soc, strict=not allow_cpu_fallback)
        produced = sorted(p.name for p in staging.iterdir())
        if names[1] not in produced:
            raise TargetCannotRunError(f"{target} took no part of the model (QNN wrote no context binary); "
                                       f"quantize it with --target {target} first")
        report = ExportReport(target, soc.soc_model, soc.arch, versions=runtime.versions())
        report.placement = {"total_nodes": total, "full_offload": placement.full_offload,
                            "refused": {k: f"{op}: {why}" for k, (op, why) in sorted(placement.refused.items())}}
        report.runback = _runback(model_path, ctx_path, soc, feeds, strict=not allow_cpu_fallback)
        if not report.runback["passed"]:
            raise ValidationError(
                f"the compiled context disagrees with the QDQ model by {report.runback['max_diff_lsb']:.1f} "
                f"8-bit steps of the output range (tolerance {RUNBACK_TOLERANCE_LSB:g}); nothing was written")
        (staging / names[2]).write_text(encodings.dumps(encodings.encodings_from_qdq(proto)))
        report.files = {name: {"sha256": _sha256(staging / name), "bytes": (staging / name).stat().st_size}
                        for name in names[:3]}
        (staging / names[3]).write_text(report.to_json())
        out_dir.mkdir(exist_ok=True)
        for name in names:
            os.replace(staging / name, out_dir / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return report
