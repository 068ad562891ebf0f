"""Quantizer benchmark: onnxq against ONNX Runtime's quantizer and NVIDIA ModelOpt on the model zoo.

    python -m tools.bench [--quick] [--models a,b] [--precisions a8w8] [--json out.json] [--update-md]

Why a package of small modules rather than one script: each quantizer runs in its own child process (so
wall time and peak RSS belong to that tool alone), and the children import different things — ModelOpt's
child runs in a separate virtualenv with its own onnx/onnxruntime — so every child entry point must stay
importable without the rest. One module, one job:

* ``zoo``               — find or build a zoo model, cut its calibration set to the benchmark's size.
* ``measure``           — run one command in a fresh process; wall time, peak RSS, exit status.
* ``quantizers``        — the command line of each tool (onnxq CLI, ORT child, ModelOpt child).
* ``ort_quantize``      — child: ORT's quantizer as its documentation advises.
* ``modelopt_quantize`` — child: ModelOpt's ONNX INT8 quantizer on CPU.
* ``modelopt_env``      — the ModelOpt virtualenv: find it, or install it where that pulls no CUDA torch.
* ``evaluate``          — child: fidelity on the eval set and interleaved latency of FP32 and every result.
* ``tasks``             — task metrics from the zoo's labels (accuracy, detector recall).
* ``environment``       — machine and package versions for the record.
* ``render``            — tables (console and BENCHMARKS.md section).
* ``runner``            — the core loop: models × precisions × tools → one JSON-able result.
* ``qnn``               — subpackage: the same zoo quantized for Qualcomm's HTP by onnxq and by ORT's QNN
                          recipe, measured on the QNN simulator (``python -m tools.bench.qnn``).

Nothing here imports torch, onnxq or a quantizer at import time: ``import tools.bench`` is cheap.
"""

from __future__ import annotations

from pathlib import Path

#: Repository root (tools/bench/ is two levels down).
ROOT = Path(__file__).resolve().parents[2]
#: Everything the benchmark writes by default lives here (gitignored via ``/.cache/``).
CACHE = ROOT / ".cache" / "bench"

__all__ = ["CACHE", "ROOT"]
