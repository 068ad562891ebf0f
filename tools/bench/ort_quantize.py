"""Child process: ONNX Runtime's static quantizer, used the way its documentation advises.

    python -m tools.bench.ort_quantize MODEL CALIB.npz OUT.onnx --batch-axes JSON --precision a8w8 --result R.json

1. ``quant_pre_process`` (symbolic + ONNX shape inference, ORT basic optimization). It crashes on many
   third-party models (see NOTES.md), so a failure is recorded as "pre-process failed: ..." and the
   original model is quantized instead — what a user following the docs would end up doing.
   (``--precision dynamic``: ``quantize_dynamic`` with int8 weights instead, no calibration.)
2. ``quantize_static`` in QDQ format, per-channel weights, U8 activations / S8 weights (what ORT's x86
   int8 kernels want), MinMax calibration, fed by a ``CalibrationDataReader`` over the same npz as every
   other tool (one sample per batch, batch axes as the zoo record says).

The result JSON says what happened and how long each step took inside the process (the parent measures
wall time and peak RSS of the whole process).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from tools.bench.child import run_quantizer_child

#: precision -> (activation type, weight type) names of onnxruntime.quantization.QuantType
PRECISIONS = {"a8w8": ("QUInt8", "QInt8"), "a16w8": ("QUInt16", "QInt8")}


def _reader(calib: Path, batch_axes: dict):
    """A CalibrationDataReader yielding one-sample feeds, batch axes restored."""
    from onnxruntime.quantization import CalibrationDataReader

    from models.artifacts import batches, read_samples

    class NpzReader(CalibrationDataReader):
        def __init__(self) -> None:
            self._feeds = iter(list(batches(read_samples(calib), batch_axes, batch_size=1)))

        def get_next(self):
            return next(self._feeds, None)

    return NpzReader()


def quantize(model: Path, calib: Path, out: Path, batch_axes: dict, precision: str) -> dict:
    import onnxruntime
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if precision == "dynamic":  # ORT's documented dynamic path: quantize_dynamic, int8 weights
        from onnxruntime.quantization import quantize_dynamic

        start = time.perf_counter()
        quantize_dynamic(str(model), str(out), weight_type=QuantType.QInt8)
        return {"onnxruntime": onnxruntime.__version__, "notes": ["quantize_dynamic (no calibration)"],
                "quantize_s": time.perf_counter() - start}
    if precision not in PRECISIONS:
        raise SystemExit(f"ORT child: precision '{precision}' not mapped; known: {', '.join(PRECISIONS)}")
    activation, weight = (getattr(QuantType, name) for name in PRECISIONS[precision])
    result: dict = {"onnxruntime": onnxruntime.__version__, "notes": []}
    with tempfile.TemporaryDirectory() as scratch:
        source = model
        start = time.perf_counter()
        try:
            prepared = Path(scratch) / "preprocessed.onnx"
            quant_pre_process(str(model), str(prepared))
            source = prepared
            result["pre_process"] = "ok"
        except Exception as exc:  # noqa: BLE001 - any crash of the pre-processor is the finding
            lines = str(exc).strip().splitlines() or [""]
            result["pre_process"] = f"pre-process failed: {type(exc).__name__} {lines[0][:200]}".rstrip()
            result["notes"].append(result["pre_process"])
        result["pre_process_s"] = time.perf_counter() - start
        start = time.perf_counter()
        quantize_static(
            str(source), str(out), _reader(calib, batch_axes),
            quant_format=QuantFormat.QDQ, per_channel=True, activation_type=activation, weight_type=weight,
            calibrate_method=CalibrationMethod.MinMax,
        )
        result["quantize_s"] = time.perf_counter() - start
    return result


def main(argv: list[str] | None = None) -> int:
    return run_quantizer_child(__doc__.splitlines()[0], quantize, argv)


if __name__ == "__main__":
    sys.exit(main())
