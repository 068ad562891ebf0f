"""Child process, run by ModelOpt's own virtualenv: NVIDIA ModelOpt's ONNX INT8 post-training quantizer.

    .cache/bench/modelopt-venv/bin/python -m tools.bench.modelopt_quantize MODEL CALIB.npz OUT.onnx \\
        --batch-axes JSON --result R.json

Settings, and why:

* ``quantize_mode="int8"``, ``calibration_method="max"`` — abs-max, the counterpart of ORT's MinMax (the
  default, entropy, would compare calibration methods rather than quantizers).
* ``calibration_eps=["cpu"]`` — this machine has no GPU; ModelOpt's default list starts with CUDA/TensorRT.
* ``high_precision_dtype="fp32"`` — the default, fp16, converts every non-quantized op to float16 for
  TensorRT; ORT's CPU provider has few fp16 kernels, so the default would measure casts, not quantization.
* Calibration through a ``CalibrationDataReader`` with one sample per batch, batch axes restored, so models
  whose batch axis is not axis 0 (silero's state) calibrate on the same samples as with the other tools.

This module imports only numpy, onnxruntime (the venv's) and modelopt; ``models.artifacts`` needs numpy
and onnx, both present in that venv.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from tools.bench.child import run_quantizer_child

SETTINGS = {"quantize_mode": "int8", "calibration_method": "max", "calibration_eps": ["cpu"],
            "high_precision_dtype": "fp32"}


def _reader(calib: Path, batch_axes: dict):
    from onnxruntime.quantization import CalibrationDataReader

    from models.artifacts import batches, read_samples

    class NpzReader(CalibrationDataReader):
        def __init__(self) -> None:
            self._all = list(batches(read_samples(calib), batch_axes, batch_size=1))
            self._feeds = iter(self._all)

        def get_next(self):
            return next(self._feeds, None)

        def get_first(self):  # ModelOpt test-runs the model on it (its own readers have this method)
            return self._all[0]

        def rewind(self) -> None:
            self._feeds = iter(self._all)

    return NpzReader()


def quantize(model: Path, calib: Path, out: Path, batch_axes: dict, precision: str) -> dict:
    if precision != "a8w8":
        raise SystemExit(f"unavailable: ModelOpt's ONNX quantizer has no {precision} mode (int8, fp8, int4 only)")
    from importlib.metadata import version

    from modelopt.onnx.quantization import quantize as modelopt_quantize

    result = {"modelopt": version("nvidia-modelopt"), "settings": SETTINGS, "notes": []}
    start = time.perf_counter()
    modelopt_quantize(str(model), calibration_data_reader=_reader(calib, batch_axes), output_path=str(out),
                      log_level="WARNING", **SETTINGS)
    result["quantize_s"] = time.perf_counter() - start
    if not out.exists():
        raise RuntimeError(f"ModelOpt returned without writing {out}")
    return result


def main(argv: list[str] | None = None) -> int:
    return run_quantizer_child(__doc__.splitlines()[0], quantize, argv)


if __name__ == "__main__":
    sys.exit(main())
