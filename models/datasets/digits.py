"""scikit-learn's bundled handwritten digits (UCI, 1797 images of 8x8, values 0..16), split once for all.

The split is fixed (stratified, seed 0): 70 % train, 30 % test. Calibration samples come from the train part
(what a deployment would have), evaluation is the whole test part with labels, so they never overlap.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class DigitsSplit:
    x_train: np.ndarray  # [N, 1, H, W] float32 in [0, 1]
    y_train: np.ndarray  # [N] int64
    x_test: np.ndarray
    y_test: np.ndarray

    def calibration(self, count: int, seed: int = 0) -> np.ndarray:
        """``count`` training images chosen with ``seed`` (no test image can be among them)."""
        index = np.random.default_rng(seed).choice(len(self.x_train), size=count, replace=False)
        return self.x_train[np.sort(index)]


def _upsample(images: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of [N, 8, 8] to [N, size, size] (scipy's order-1 zoom: no torch needed)."""
    from scipy.ndimage import zoom

    factor = size / images.shape[-1]
    return np.stack([zoom(image, factor, order=1, mode="nearest", grid_mode=True) for image in images])


def load_digits_split(size: int = 8, test_fraction: float = 0.3, seed: int = 0) -> DigitsSplit:
    """The digits as float32 [N, 1, size, size] in [0, 1], stratified train/test split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    images = (data.images / 16.0).astype(np.float32)
    if size != images.shape[-1]:
        images = np.clip(_upsample(images, size), 0.0, 1.0).astype(np.float32)
    images = images[:, None]
    labels = data.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=test_fraction, random_state=seed, stratify=labels
    )
    return DigitsSplit(x_train, y_train, x_test, y_test)
