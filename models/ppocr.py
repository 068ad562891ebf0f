"""What the zoo's two PaddleOCR models (``ppocr_det``, ``ppocr_rec``) share: the wheel, the input
normalisation, and how their ``score`` functions read model outputs.

Both ONNX files ship inside the ``rapidocr-onnxruntime`` 1.4.4 wheel (``rapidocr_onnxruntime/models/``):
PaddleOCR's PP-OCRv4 mobile detector and recognizer (Chinese + English), converted by paddle2onnx. They
are fetched like every wheel-borne zoo model (``models.wheels``: pinned version, SHA-256 per file), never
from a model hub. rapidocr reads images as BGR (``utils/load_image.py`` converts RGB to BGR) and both
stages normalise with mean = std = 0.5 (``ch_ppocr_det/utils.py: DetPreProcess``,
``ch_ppocr_rec/text_recognize.py: resize_norm_img``): ``x = (pixel / 255 - 0.5) / 0.5``, channels first.
rapidocr resizes with OpenCV's bilinear filter; OpenCV is not a dependency here, so Pillow's bilinear
filter (which also averages when shrinking) stands in for it.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from models.registry import BuildContext, ZooError
from models.wheels import WheelFile, WheelUnavailableError, fetch

logger = logging.getLogger(__name__)

_PROJECT, _VERSION = "rapidocr-onnxruntime", "1.4.4"
DETECTOR = WheelFile(
    _PROJECT,
    _VERSION,
    "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
    "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9",
)
RECOGNIZER = WheelFile(
    _PROJECT,
    _VERSION,
    "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
    "48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b",
)


def install_model(file: WheelFile, context: BuildContext) -> Path:
    """Fetch ``file`` (verified) and copy it, unchanged, to the build's ONNX path."""
    try:
        source = fetch(file, context.cache_dir)
    except WheelUnavailableError as exc:
        raise ZooError(f"{context.name}: {exc}") from None
    shutil.copyfile(source, context.onnx_path)
    return context.onnx_path


def normalize(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB [H, W, 3] -> float32 [3, H, W]: BGR order, ``(x / 255 - 0.5) / 0.5``, as rapidocr feeds."""
    bgr = np.asarray(rgb)[:, :, ::-1].astype(np.float32) / 255.0
    return ((bgr - 0.5) / 0.5).transpose(2, 0, 1).astype(np.float32)


def _first_output(run: Any) -> np.ndarray:
    if isinstance(run, Mapping):
        run = next(iter(run.values()))
    elif isinstance(run, (list, tuple)):
        run = run[0]
    return np.asarray(run)


def per_image(outputs: Iterable[Any] | np.ndarray) -> Iterator[np.ndarray]:
    """The first (only) model output, one image at a time, from any of the shapes outputs come in.

    ``outputs`` is either one array stacked over images, or a sequence of runs, each a dict of outputs by
    name (how the benchmark collects them), a list of arrays (``session.run``), or an array; a run holds a
    batch of one or more images.
    """
    if isinstance(outputs, np.ndarray):
        yield from outputs
        return
    for run in outputs:
        yield from _first_output(run)
