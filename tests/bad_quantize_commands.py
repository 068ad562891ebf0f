"""The bad-input corpus of ``onnxq quantize``: command lines on a valid model and calibration set that must
be refused with one ``onnxq: error:`` line, exit 2 and nothing written (run by ``tests/test_bad_inputs.py``).

Rows are ``make_bad_models.BadCommand``s; ``args`` follow ``quantize {model}``, with ``{calib}`` the
calibration file (8 samples) besides the optimize cases' placeholders. A row with ``bug`` fails today
because of that library bug and is marked ``xfail(strict=True)``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx

from make_bad_models import MODEL_NAME, BadCommand, good_model

C = BadCommand

CALIB_NAME = "calib.npz"


def write_quantize_inputs(folder: Path) -> tuple[Path, Path]:
    """The valid model the quantize cases run on (weights embedded) and 8 calibration samples for it."""
    folder.mkdir(parents=True, exist_ok=True)
    model, calib = folder / MODEL_NAME, folder / CALIB_NAME
    onnx.save(good_model(), model)
    np.savez(calib, x=np.random.default_rng(0).standard_normal((8, 1, 4)).astype(np.float32))
    return model, calib


def _calib_file(name: str, **arrays: np.ndarray) -> Callable[[Path], None]:
    def write(folder: Path) -> None:
        np.savez(folder / name, **arrays)

    return write


def _empty_folder(folder: Path) -> None:
    (folder / "empty").mkdir()


# fmt: off
BAD_QUANTIZE_COMMANDS: list[BadCommand] = [
    C("output-is-input", "-o {model} --calib {calib}", "is the input file"),
    C("output-is-input-other-spelling", "-o {dir}/../{dirname}/./m.onnx --calib {calib}",
      "is the input file"),
    C("output-is-a-directory", "-o {dir} --calib {calib}", "is a directory; give a file path"),
    C("output-folder-missing", "-o {dir}/missing/q.onnx --calib {calib}",
      "output folder '{dir}/missing' does not exist"),
    C("no-output", "--calib {calib}", "Missing option '-o' / '--output'"),
    C("no-calib", "-o {out}", "Missing option '--calib'"),
    C("unknown-target", "-o {out} --calib {calib} --target tensorrt", "unknown target 'tensorrt'; known: "),
    C("empty-target", "-o {out} --calib {calib} --target ''", "unknown target ''; known: "),
    C("unknown-target-variant", "-o {out} --calib {calib} --target ort:riscv",
      "unknown ort target variant 'riscv'; known: arm64, x86"),
    C("unknown-precision", "-o {out} --calib {calib} --precision a4w4",
      "unknown precision for ort:x86 'a4w4'; known: a16w8, a8w8"),
    C("unknown-precision-of-variant", "-o {out} --calib {calib} --target ort:arm64 --precision int4",
      "unknown precision for ort:arm64 'int4'; known: a16w8, a8w8"),
    C("unknown-method", "-o {out} --calib {calib} --method kl",
      "unknown calibration method 'kl'; known: minmax, percentile, entropy, mse"),
    C("method-in-capitals", "-o {out} --calib {calib} --method MinMax",
      "unknown calibration method 'MinMax'"),
    C("percentile-out-of-range", "-o {out} --calib {calib} --method percentile --percentile 10",
      "percentile must be in (50, 100], got 10.0"),
    C("max-error-zero", "-o {out} --calib {calib} --max-error 0", "max_error must be positive and finite, got 0.0"),
    C("max-error-nan", "-o {out} --calib {calib} --max-error nan", "max_error must be"),
    C("holdout-negative", "-o {out} --calib {calib} --holdout -1", "holdout must be >= 0"),
    C("holdout-takes-every-sample", "-o {out} --calib {calib} --holdout 8",
      "the calibration set is empty: the source holds 8 samples and holdout=8 keeps 8 of them back"),
    C("calibration-size-zero", "-o {out} --calib {calib} --calibration-size 0", "calibration_size >= 1"),
    C("recipe-missing", "-o {out} --calib {calib} --recipe {dir}/none.toml",
      "recipe file '{dir}/none.toml' does not exist"),
    C("calib-missing", "-o {out} --calib {dir}/none.npz", "calibration data '{dir}/none.npz' does not exist"),
    C("calib-is-the-model", "-o {out} --calib {model}", "is not an .npz archive or a folder of them"),
    C("calib-empty-folder", "-o {out} --calib {dir}/empty", "the calibration set is empty",
      setup=_empty_folder),
    C("calib-nan", "-o {out} --calib {dir}/nan.npz", "input 'x' contains 4 NaN/Inf values",
      setup=_calib_file("nan.npz", x=np.full((8, 1, 4), np.nan, np.float32))),
    C("calib-unknown-input", "-o {out} --calib {dir}/names.npz", "unknown input 'q'; the model's inputs: x",
      setup=_calib_file("names.npz", q=np.zeros((8, 1, 4), np.float32))),
    C("calib-wrong-shape", "-o {out} --calib {dir}/shape.npz", "the model expects [1, 4] (axis 1 must be 4)",
      setup=_calib_file("shape.npz", x=np.zeros((8, 1, 5), np.float32))),
    C("calib-integers", "-o {out} --calib {dir}/int.npz",
      "input 'x' holds int64 data, the model expects float32",
      setup=_calib_file("int.npz", x=np.zeros((8, 1, 4), np.int64))),
    C("output-is-calib", "-o {calib} --calib {calib}", "is the input file"),
    C("report-is-input", "-o {out} --calib {calib} --report {model}", "is the input file"),
    C("report-is-output", "-o {out} --calib {calib} --report {out}", "is the output model's path"),
    C("report-is-a-directory", "-o {out} --calib {calib} --report {dir}", "is a directory"),
    C("report-folder-missing", "-o {out} --calib {calib} --report {dir}/missing/r.json",
      "output folder '{dir}/missing' does not exist"),
]
# fmt: on
