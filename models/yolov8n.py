"""yolov8n_320: an Ultralytics YOLOv8n detector export (320 x 320) from the ``nudenet`` wheel, as is.

Why it exists: a genuine YOLOv8n export, the single most common third-party detector file, which no other
zoo model resembles. Ultralytics 8.2.46 wrote it through torch 2.3.1's TorchScript exporter (opset 17,
IR 10) with every dynamic dimension on: input ``images`` [batch, 3, height, width], so the anchor grid and
strides are computed inside the graph (Shape, Range, Expand, ConstantOfShape, Concat). SiLU is spelled
Sigmoid + Mul, the C2f blocks Split and Concat, the neck upsamples with Resize, and the DFL box head ends in
a Softmax over 16 bins and a fixed 1x1 Conv. Its one output ``output0`` [batch, 22, anchors] concatenates
4 box coordinates (cx, cy, w, h in input pixels, 0..320) with 18 class sigmoid scores (0..1): one Concat of
two tensors whose ranges differ by 300x, the classic trap for per-tensor quantization with shared Concat
scales (the class scores drown in the coordinates' quantization step).

We use the file only as a real YOLOv8n export graph. Its 18 classes are nudenet's body-part labels (faces,
feet, armpits, belly, ... ``CLASSES``); nothing here depends on what they mean, and the data is ordinary
pictures of people in which the model finds faces, arms and the like.

File: ``nudenet/320n.onnx`` in nudenet 3.4.2 (``models.wheels``: pinned version and SHA-256). Input as
nudenet's ``_read_image`` prepares it: pad the picture on the bottom and right with black to a square,
resize to 320 x 320, RGB, ``x / 255``, channels first (nudenet resizes with OpenCV's bilinear filter;
Pillow's bilinear filter, which also averages when shrinking, stands in for it).

Data, 64 calibration and 64 evaluation images, from pictures bundled with scikit-image, with random crops
(40-100 % of the short side, aspect 0.6-1.6, so the letterbox padding varies), flips and scale jitter:
calibration uses the grey ``camera`` photo (a man with a camera), mosaics of 2-5 x 2-5 faces from the
first 50 faces of ``lfw_subset`` (Labeled Faces in the Wild, 25 x 25, grey), and photos without people
(coffee, tissue, galaxies, coins, brick, grass) for colour and background statistics; evaluation uses the
colour ``astronaut`` photo and mosaics of the other 50 faces. No source picture is shared by the two sets.

Metric (``score``, against FP32 since there are no labels): per image, FP32's ``TOP_K`` most confident
anchors (confidence = the largest class score), or all anchors above ``SCORE_THRESHOLD`` if there are
more; ``anchor_class_agreement`` is the share of those anchors whose argmax class is the same in the
candidate (issue #3's bar: >= 97 %), ``anchor_box_iou`` the mean IoU of their boxes. ``detection_recall``:
the share of FP32's detections after nudenet's post-processing (score >= 0.25, class-agnostic NMS at IoU
0.45) that the candidate's detections match (same class, IoU >= 0.5).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import numpy as np

from models.datasets.photos import load_photo
from models.ppocr import install_model, per_image
from models.registry import BuildContext, BuiltModel
from models.wheels import WheelFile

logger = logging.getLogger(__name__)

MODEL = WheelFile(
    "nudenet",
    "3.4.2",
    "nudenet/320n.onnx",
    "c15d8273adad2d0a92f014cc69ab2d6c311a06777a55545f2c4eb46f51911f0f",
)
#: nudenet's label list, in output order (the file's ``names`` metadata says the same).
CLASSES = (
    "FEMALE_GENITALIA_COVERED",
    "FACE_FEMALE",
    "BUTTOCKS_EXPOSED",
    "FEMALE_BREAST_EXPOSED",
    "FEMALE_GENITALIA_EXPOSED",
    "MALE_BREAST_EXPOSED",
    "ANUS_EXPOSED",
    "FEET_EXPOSED",
    "BELLY_COVERED",
    "FEET_COVERED",
    "ARMPITS_COVERED",
    "ARMPITS_EXPOSED",
    "FACE_MALE",
    "BELLY_EXPOSED",
    "MALE_GENITALIA_EXPOSED",
    "ANUS_COVERED",
    "FEMALE_BREAST_COVERED",
    "BUTTOCKS_COVERED",
)
SIZE = 320
TOP_K, SCORE_THRESHOLD, NMS_IOU, MATCH_IOU = 20, 0.25, 0.45, 0.5
#: lfw_subset holds 100 faces, then 100 non-faces; the faces are split between the two sets.
CALIB_FACES, EVAL_FACES = range(0, 50), range(50, 100)
CALIB_PLAN = (("camera", 16), ("faces", 24), ("coffee", 4), ("immunohistochemistry", 4),
              ("hubble_deep_field", 4), ("coins", 4), ("brick", 4), ("grass", 4))
EVAL_PLAN = (("astronaut", 32), ("faces", 32))
BATCH = 16


def letterbox(image: np.ndarray, size: int = SIZE) -> np.ndarray:
    """uint8 RGB [H, W, 3] -> float32 [3, size, size] as nudenet feeds it: pad bottom/right, resize, /255."""
    from PIL import Image

    height, width = image.shape[:2]
    side = max(height, width)
    square = np.zeros((side, side, 3), np.uint8)
    square[:height, :width] = image
    resized = np.asarray(Image.fromarray(square).resize((size, size), Image.Resampling.BILINEAR))
    return (resized.astype(np.float32) / 255.0).transpose(2, 0, 1).copy()


def _crop(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random crop (40-100 % of the short side, aspect 0.6-1.6), flipped half the time."""
    height, width = image.shape[:2]
    side = min(height, width) * rng.uniform(0.4, 1.0)
    aspect = rng.uniform(0.6, 1.6)
    crop_h = int(min(height, side / np.sqrt(aspect)))
    crop_w = int(min(width, side * np.sqrt(aspect)))
    top, left = int(rng.integers(0, height - crop_h + 1)), int(rng.integers(0, width - crop_w + 1))
    crop = image[top : top + crop_h, left : left + crop_w]
    return np.ascontiguousarray(crop[:, ::-1] if rng.random() < 0.5 else crop)


def face_mosaic(faces: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """2-5 rows x 2-5 columns of distinct faces (grey floats in 0..1) as one uint8 RGB picture."""
    rows, cols = int(rng.integers(2, 6)), int(rng.integers(2, 6))
    chosen = faces[rng.choice(len(faces), rows * cols, replace=False)]
    tiles = [face[:, ::-1] if rng.random() < 0.5 else face for face in chosen]
    mosaic = np.block([[tiles[r * cols + c] for c in range(cols)] for r in range(rows)])
    grey = np.clip(mosaic * 255.0 * rng.uniform(0.8, 1.1), 0, 255).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)


def _images(plan: tuple[tuple[str, int], ...], faces: range, seed: int) -> np.ndarray:
    import skimage.data

    rng = np.random.default_rng(seed)
    face_tiles = skimage.data.lfw_subset()[faces.start : faces.stop]
    samples = []
    for source, count in plan:
        for _ in range(count):
            picture = face_mosaic(face_tiles, rng) if source == "faces" else _crop(load_photo(source), rng)
            samples.append(letterbox(picture))
    return np.stack(samples)


# --- post-processing and metric --------------------------------------------------------------------


def xyxy(prediction: np.ndarray) -> np.ndarray:
    """Boxes [anchors, 4] (x1, y1, x2, y2) from one image's output [22, anchors] (cx, cy, w, h first)."""
    cx, cy, w, h = np.asarray(prediction, np.float64)[:4]
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes [n, 4] against boxes [m, 4] (x1, y1, x2, y2): [n, m]."""
    a, b = np.asarray(a, np.float64)[:, None], np.asarray(b, np.float64)[None]
    inter_w = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    inter_h = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = inter_w * inter_h
    area_a = np.clip(a[..., 2] - a[..., 0], 0, None) * np.clip(a[..., 3] - a[..., 1], 0, None)
    area_b = np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(b[..., 3] - b[..., 1], 0, None)
    union = area_a + area_b - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def top_anchors(prediction: np.ndarray, k: int = TOP_K, threshold: float = SCORE_THRESHOLD) -> np.ndarray:
    """Indices of the ``k`` most confident anchors, or of all above ``threshold`` if there are more."""
    confidence = np.asarray(prediction)[4:].max(axis=0)
    count = max(k, int((confidence > threshold).sum()))
    return np.argsort(-confidence, kind="stable")[:count]


def detect(prediction: np.ndarray) -> np.ndarray:
    """nudenet's post-processing of one image: [D, 6] = (class, score, x1, y1, x2, y2), best first."""
    scores = np.asarray(prediction)[4:]
    confidence, classes = scores.max(axis=0), scores.argmax(axis=0)
    candidates = np.flatnonzero(confidence >= SCORE_THRESHOLD)
    candidates = candidates[np.argsort(-confidence[candidates], kind="stable")]
    boxes = xyxy(prediction)[candidates]
    keep: list[int] = []
    suppressed = np.zeros(len(candidates), dtype=bool)
    for i in range(len(candidates)):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= box_iou(boxes[i : i + 1], boxes)[0] > NMS_IOU
    chosen = candidates[keep]
    detections = np.column_stack([classes[chosen], confidence[chosen], boxes[keep]])
    return detections.astype(np.float32).reshape(-1, 6)


def score(reference_outputs: Iterable[Any], candidate_outputs: Iterable[Any]) -> dict[str, float]:
    """``anchor_class_agreement`` (first), ``anchor_box_iou``, ``detection_recall`` of candidate vs FP32.

    Outputs: one stacked array [images, 22, anchors], or per-run dicts/lists/arrays
    (``models.ppocr.per_image``).
    """
    same, ious, found, wanted = [], [], 0, 0
    for reference, candidate in zip(per_image(reference_outputs), per_image(candidate_outputs), strict=True):
        anchors = top_anchors(reference)
        ref_classes = np.asarray(reference)[4:, anchors].argmax(axis=0)
        got_classes = np.asarray(candidate)[4:, anchors].argmax(axis=0)
        same.extend(ref_classes == got_classes)
        ious.extend(np.diag(box_iou(xyxy(reference)[anchors], xyxy(candidate)[anchors])))
        expected, got = detect(reference), detect(candidate)
        wanted += len(expected)
        if len(expected) and len(got):
            overlap = box_iou(expected[:, 2:], got[:, 2:]) >= MATCH_IOU
            overlap &= expected[:, :1] == got[None, :, 0]
            found += int(overlap.any(axis=1).sum())
    if not same:
        raise ValueError("score: no outputs")
    return {
        "anchor_class_agreement": float(np.mean(same)),
        "anchor_box_iou": float(np.mean(ious)),
        "detection_recall": found / wanted if wanted else 1.0,
    }


def build(context: BuildContext) -> BuiltModel:
    import onnxruntime as ort

    install_model(MODEL, context)
    calib = _images(CALIB_PLAN, CALIB_FACES, context.seed)
    evaluation = _images(EVAL_PLAN, EVAL_FACES, context.seed + 1)
    session = ort.InferenceSession(str(context.onnx_path), providers=["CPUExecutionProvider"])
    starts = range(0, len(evaluation), BATCH)
    outputs = np.concatenate([session.run(None, {"images": evaluation[i : i + BATCH]})[0] for i in starts])
    detections = [detect(prediction) for prediction in outputs]
    found = np.concatenate([d[:, 0] for d in detections]).astype(int)
    counts = np.bincount(found, minlength=len(CLASSES))
    faces = {CLASSES.index("FACE_FEMALE"), CLASSES.index("FACE_MALE")}
    return BuiltModel(
        calib={"images": calib},
        eval_inputs={"images": evaluation},
        labels=None,
        batch_axes={"images": 0},
        exporter="Ultralytics 8.2.46 / torch 2.3.1 TorchScript exporter (third-party file, used as shipped)",
        source=MODEL.describe()
        | {
            "architecture": "YOLOv8n detector, 18 classes (nudenet's body-part labels), 320 x 320",
            "data": "scikit-image photos (astronaut, camera, others without people) and lfw_subset face "
            "mosaics, letterboxed",
            "preprocessing": f"pad bottom/right to a square, resize to {SIZE}, RGB, x/255 (nudenet)",
        },
        metrics={
            "fp32_detections_per_image": round(float(np.mean([len(d) for d in detections])), 2),
            "fp32_images_with_a_face": round(float(np.mean([bool(faces & set(d[:, 0].astype(int)))
                                                           for d in detections])), 4),
            "fp32_mean_top_confidence": round(float(outputs[:, 4:].max(axis=(1, 2)).mean()), 4),
            "eval_detections_by_class_index": {str(cls): int(n) for cls, n in enumerate(counts) if n},
        },
        notes=[
            f"a sample is one letterboxed picture [3, {SIZE}, {SIZE}]; any batch size (and size) works",
            "no labels: scored against FP32's outputs",
            "task metric: anchor_class_agreement, share of FP32's most confident anchors (top "
            f"{TOP_K}, or all above {SCORE_THRESHOLD}) whose argmax class the candidate keeps "
            "(models.yolov8n.score(reference_outputs, candidate_outputs))",
            "the classes are nudenet's body-part labels; the file is used only as a real YOLOv8n export",
        ],
    )
