"""ppocr_det: PaddleOCR's PP-OCRv4 mobile text detector (DBNet) from the rapidocr-onnxruntime wheel, as is.

Why it exists: a real third-party detector whose output is a dense map, not boxes. paddle2onnx wrote it
(opset 12, IR 8, no producer name, all four input dims dynamic): a PP-LCNet backbone with squeeze-excite
blocks (GlobalAveragePool, HardSigmoid), hard-swish spelled Mul/Add/Clip/Div, ~340 Constant nodes, three
BatchNormalization nodes left unfolded, an FPN with Resize upsampling and a DB head ending in two
ConvTranspose and a Sigmoid. The zoo must quantize files like this, not only torch's clean exports.

File: ``rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx`` in rapidocr-onnxruntime 1.4.4
(``models.ppocr``). Input ``x`` [N, 3, H, W] (dims ``p2o.DynamicDimension.0..2``; H and W must be
multiples of 32), BGR, ``(x / 255 - 0.5) / 0.5``. Output ``sigmoid_0.tmp_0`` [N, 1, H, W]: per pixel, the
probability of lying in a text kernel (a text line shrunk towards its centre line).

Preprocessing follows rapidocr's ``DetPreProcess`` (resize so both sides are multiples of 32, normalise as
above), at one fixed size so samples stack: rendered pages (1216 x 1600) become 640 x 832 (rapidocr would
run them at full size), which sets fonts at 9-23 px; the model still finds every line (see the metrics).

Data: rendered pages (``models.datasets.documents``: title, paragraphs, a ruled table, an equation, a
photo, references, header, page number), 32 for calibration and 16 for evaluation, with disjoint
sentences and photos. The eval file's ``label`` is [pages, 128, 4]: the ink box (x1, y1, x2, y2) of every
line of text in input pixels, -1 pads.

Metric (``score``): DB post-processing binarizes the map at 0.3 before it looks for boxes, so what a
quantized model must keep is that binary map. Per page, the IoU of the pixels above 0.3 in the FP32 and
the candidate outputs (1.0 when both are empty), averaged over pages: ``prob_map_iou``. The build also
reports how well FP32 itself finds the rendered lines (``coverage``): a line counts as found when, along
its middle rows, the binary map covers at least half its width; and the map's precision: the share of
positive pixels that lie inside some line box (grown by 2 px) rather than on the photo, rules or paper.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import numpy as np

from models.datasets.documents import font_source, render_page
from models.datasets.photos import CALIBRATION_PHOTOS, EVALUATION_PHOTOS, load_photo
from models.datasets.text import split_sentences
from models.ppocr import DETECTOR, install_model, normalize, per_image
from models.registry import BuildContext, BuiltModel, ZooError

logger = logging.getLogger(__name__)

CALIB_PAGES, EVAL_PAGES, SENTENCES_PER_PAGE = 32, 16, 20
WIDTH, MAX_LINES = 640, 128
THRESHOLD = 0.3  # DBPostProcess(thresh=0.3) in rapidocr's config.yaml
FOUND_FRACTION, BOX_MARGIN = 0.5, 2


def detector_input(image: np.ndarray, width: int = WIDTH) -> tuple[np.ndarray, float, float]:
    """A page as the detector's input [3, H, W] (``width`` wide, H a multiple of 32), and the x/y scales."""
    from PIL import Image

    height, page_width = image.shape[:2]
    input_height = max(32, int(round(height * width / page_width / 32)) * 32)
    resized = Image.fromarray(image).resize((width, input_height), Image.Resampling.BILINEAR)
    return normalize(np.asarray(resized)), width / page_width, input_height / height


def _pages(sentences: list[str], photos: tuple[str, ...], count: int, seed: int):
    rng = np.random.default_rng(seed)
    images, labels = [], np.full((count, MAX_LINES, 4), -1.0, dtype=np.float32)
    for index in range(count):
        chunk = sentences[index * SENTENCES_PER_PAGE : (index + 1) * SENTENCES_PER_PAGE]
        page = render_page(chunk, load_photo(photos[index % len(photos)]), rng)
        image, sx, sy = detector_input(page.image)
        if len(page.lines) > MAX_LINES:
            raise ZooError(f"ppocr_det: page {index} has {len(page.lines)} lines of text, not <= {MAX_LINES}")
        images.append(image)
        lines = np.array(page.lines, dtype=np.float32).reshape(-1, 4) * np.array([sx, sy, sx, sy], np.float32)
        labels[index, : len(lines)] = lines
    return np.stack(images), labels


def binarize(prob_map: np.ndarray) -> np.ndarray:
    """The text mask DB post-processing starts from: probability above ``THRESHOLD``."""
    return np.asarray(prob_map) > THRESHOLD


def score(reference_outputs: Iterable[Any], candidate_outputs: Iterable[Any]) -> dict[str, float]:
    """``prob_map_iou``: IoU of the binarized maps of FP32 and candidate, mean over pages (1.0 = same).

    Outputs: one stacked array, or per-run dicts/lists/arrays (``models.ppocr.per_image``).
    """
    ious = []
    for reference, candidate in zip(per_image(reference_outputs), per_image(candidate_outputs), strict=True):
        ref, got = binarize(reference), binarize(candidate)
        union = np.logical_or(ref, got).sum()
        ious.append(1.0 if union == 0 else float(np.logical_and(ref, got).sum() / union))
    if not ious:
        raise ValueError("score: no outputs")
    return {"prob_map_iou": float(np.mean(ious))}


def coverage(outputs: Iterable[Any], labels: np.ndarray) -> dict[str, float]:
    """How well binarized maps find the labelled text lines, and how much of them is text.

    ``lines_found``: share of lines whose middle rows (centre ± 1 px) are covered over at least half the
    line's width. ``mean_line_coverage``: that covered share, averaged over lines. ``map_precision``: share of
    positive pixels inside a line box grown by ``BOX_MARGIN`` pixels.
    """
    covered, inside_pixels, positive_pixels = [], 0, 0
    for prob_map, lines in zip(per_image(outputs), labels, strict=False):
        mask = binarize(prob_map)[0]
        inside = np.zeros_like(mask)
        for x1, y1, x2, y2 in lines[lines[:, 0] >= 0]:
            left, top = int(np.floor(x1)), int(np.floor(y1))
            right, bottom = int(np.ceil(x2)), int(np.ceil(y2))
            middle = (top + bottom) // 2
            covered.append(float(mask[max(top, middle - 1) : middle + 2, left:right].any(axis=0).mean()))
            inside[
                max(top - BOX_MARGIN, 0) : bottom + BOX_MARGIN, max(left - BOX_MARGIN, 0) : right + BOX_MARGIN
            ] = True
        inside_pixels += int(np.logical_and(mask, inside).sum())
        positive_pixels += int(mask.sum())
    values = np.array(covered)
    return {
        "lines_found": float(np.mean(values >= FOUND_FRACTION)) if len(values) else 0.0,
        "mean_line_coverage": float(values.mean()) if len(values) else 0.0,
        "map_precision": inside_pixels / positive_pixels if positive_pixels else 0.0,
    }


def build(context: BuildContext) -> BuiltModel:
    import onnxruntime as ort

    install_model(DETECTOR, context)
    parts = split_sentences(
        {"calib": CALIB_PAGES * SENTENCES_PER_PAGE, "eval": EVAL_PAGES * SENTENCES_PER_PAGE},
        seed=context.seed,
    )
    calib, _ = _pages(parts["calib"], CALIBRATION_PHOTOS, CALIB_PAGES, context.seed)
    evaluation, labels = _pages(parts["eval"], EVALUATION_PHOTOS, EVAL_PAGES, context.seed + 1)
    session = ort.InferenceSession(str(context.onnx_path), providers=["CPUExecutionProvider"])
    outputs = [session.run(None, {"x": evaluation[i : i + 1]}) for i in range(EVAL_PAGES)]
    found = coverage(outputs, labels)
    return BuiltModel(
        calib={"x": calib},
        eval_inputs={"x": evaluation},
        labels=labels,
        batch_axes={"x": 0},
        exporter="paddle2onnx (third-party file, used as shipped)",
        source=DETECTOR.describe()
        | {
            "architecture": "PP-OCRv4 mobile text detector (DBNet, PP-LCNet backbone), Chinese + English",
            "data": f"rendered pages ({font_source()} fonts, stdlib docstrings, scikit-image photos)",
            "preprocessing": f"{WIDTH} px wide, height a multiple of 32; BGR, (x/255 - 0.5)/0.5 (rapidocr)",
        },
        metrics={
            "fp32_text_lines_found": round(found["lines_found"], 4),
            "fp32_mean_line_coverage": round(found["mean_line_coverage"], 4),
            "fp32_map_precision": round(found["map_precision"], 4),
            "fp32_positive_pixels": round(float(np.mean([binarize(o[0]).mean() for o in outputs])), 4),
            "eval_text_lines": int((labels[..., 0] >= 0).sum()),
        },
        notes=[
            f"a sample is one page [3, {evaluation.shape[2]}, {evaluation.shape[3]}]; any batch size works",
            "label: [page, line, (x1, y1, x2, y2)] ink box of each text line in input pixels; -1 pads",
            f"task metric: prob_map_iou, IoU of FP32 and candidate maps binarized at {THRESHOLD} "
            "(models.ppocr_det.score(reference_outputs, candidate_outputs))",
        ],
    )
