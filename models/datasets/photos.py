"""Natural photographs bundled with scikit-image, turned into ImageNet-style 224x224 samples.

scikit-image ships a dozen real photos in its wheel (astronaut, coffee, chelsea the cat, a rocket, a
motorcycle, a clock, ...), so calibration and evaluation images exist offline. Calibration and evaluation
use *different photos* (not just different crops), so no pixel of one set appears in the other. Each photo
yields several samples: random crops of 50-100 % of the shorter side, random horizontal flips, bilinear
resize, all from a seeded generator. Grey photos are replicated to three channels.
"""

from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger(__name__)

#: Photos by role. Colour photos are split between the two sets so both see real colour statistics.
CALIBRATION_PHOTOS = (
    "astronaut",
    "coffee",
    "immunohistochemistry",
    "hubble_deep_field",
    "camera",
    "coins",
    "grass",
    "brick",
)
EVALUATION_PHOTOS = ("chelsea", "rocket", "motorcycle", "retina", "clock", "moon", "gravel", "cell")

#: Normalisations as (mean, std) in 0..255 units: torchvision-style ImageNet, and TensorFlow's EfficientNet
#: Lite (``efficientnet_lite_builder.py``: MEAN_RGB 127, STDDEV_RGB 128), which its weights were trained with.
IMAGENET = (
    np.array([0.485, 0.456, 0.406], dtype=np.float32) * 255,
    np.array([0.229, 0.224, 0.225], dtype=np.float32) * 255,
)
TF_LITE = (np.full(3, 127.0, dtype=np.float32), np.full(3, 128.0, dtype=np.float32))


def load_photo(name: str) -> np.ndarray:
    """A bundled photo as uint8 RGB [H, W, 3]."""
    import skimage.data

    if name == "motorcycle":
        image = skimage.data.stereo_motorcycle()[0]
    else:
        image = getattr(skimage.data, name)()
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3]).astype(np.uint8)


def random_crops(image: np.ndarray, count: int, size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``count`` square crops (50-100 % of the short side), maybe flipped, resized to ``size`` (uint8 RGB)."""
    from PIL import Image

    height, width = image.shape[:2]
    crops = []
    for _ in range(count):
        side = int(min(height, width) * rng.uniform(0.5, 1.0))
        top = int(rng.integers(0, height - side + 1))
        left = int(rng.integers(0, width - side + 1))
        crop = image[top : top + side, left : left + side]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        resized = Image.fromarray(np.ascontiguousarray(crop)).resize((size, size), Image.Resampling.BILINEAR)
        crops.append(np.asarray(resized))
    return crops


def normalized_batch(
    images: list[np.ndarray], normalization: tuple[np.ndarray, np.ndarray] = IMAGENET
) -> np.ndarray:
    """uint8 RGB [H, W, 3] images to float32 NCHW, ``(x - mean) / std`` per channel."""
    mean, std = normalization
    stacked = np.stack(images).astype(np.float32)
    return ((stacked - mean) / std).astype(np.float32).transpose(0, 3, 1, 2).copy()


def photo_samples(
    photos: tuple[str, ...], per_photo: int, size: int, seed: int
) -> tuple[list[np.ndarray], list[str]]:
    """Crops of every photo in ``photos`` (uint8 RGB) and, for each, the photo it came from."""
    rng = np.random.default_rng(seed)
    images, origins = [], []
    for name in photos:
        crops = random_crops(load_photo(name), per_photo, size, rng)
        images.extend(crops)
        origins.extend([name] * len(crops))
    return images, origins
