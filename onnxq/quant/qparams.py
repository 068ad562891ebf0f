"""Scales, zero points and weight quantization.

Affine:     s = (r_max − r_min) / (q_max − q_min),   z = round(q_min − r_min / s)
Symmetric:  s = max(|r_min|, |r_max|) / ((q_max − q_min) / 2),   z = 0 (signed) or (q_max + 1) / 2 (unsigned)
Quantize:   q = clip(round(x / s) + z, q_min, q_max);   dequantize: x̂ = (q − z) · s

The range is first widened to include 0 so that zero (padding, ReLU output) is exact. A degenerate range
(all values equal to 0) gets scale 1 and a warning instead of a zero or NaN scale.
"""

from __future__ import annotations

import logging

import numpy as np

from onnxq.quant.spec import Granularity, QuantSpec

logger = logging.getLogger(__name__)

#: Smallest scale we emit: below this, float32 arithmetic in the runtimes loses the value.
MIN_SCALE = 1e-9
#: Magnitudes from here up are sentinels (an attention mask's -3.4e38 = finfo(float32).min), not data;
#: calibration leaves them out (see ``onnxq.calibration.observers``). A constant or a tensor that holds
#: only sentinels and one value gets ``SENTINEL_LIMIT`` instead: far beyond any real value, yet a scale
#: (and requantization ratios around it) that stays representable.
SENTINEL = 1e30
SENTINEL_LIMIT = 1e4



def qparams_from_range(
    rmin: np.ndarray | float, rmax: np.ndarray | float, spec: QuantSpec, *, name: str = "", warn: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """(scale float32, zero point of the spec's dtype), elementwise over per-channel arrays.

    ``warn=False`` logs degenerate ranges at debug level (all-zero weight channels are normal after
    pruning or BN folding; an all-zero activation is worth a warning)."""
    rmin = np.minimum(np.asarray(rmin, dtype=np.float64), 0.0)
    rmax = np.maximum(np.asarray(rmax, dtype=np.float64), 0.0)
    if not (np.all(np.isfinite(rmin)) and np.all(np.isfinite(rmax))):
        raise ValueError(f"tensor '{name}': calibration range is not finite ({rmin}, {rmax})")
    qmin, qmax = spec.dtype.qmin, spec.dtype.qmax
    if spec.symmetric:
        amax = np.maximum(-rmin, rmax)
        scale = amax / ((qmax - qmin) / 2.0)
        zero = np.zeros_like(scale) if spec.dtype.signed else np.full_like(scale, (qmax + 1) // 2)
    else:
        scale = (rmax - rmin) / float(qmax - qmin)
        with np.errstate(divide="ignore", invalid="ignore"):
            zero = np.where(scale > 0, np.round(qmin - rmin / np.where(scale > 0, scale, 1.0)), qmin)
        zero = np.clip(zero, qmin, qmax)
    degenerate = scale < MIN_SCALE
    if np.any(degenerate):
        (logger.warning if warn else logger.debug)(
            "tensor '%s': zero range (constant tensor?) for %d of %d channels; using scale 1",
            name, int(np.count_nonzero(degenerate)), degenerate.size,
        )
        scale = np.where(degenerate, 1.0, scale)
        zero = np.where(degenerate, 0 if spec.dtype.signed else (qmax + 1) // 2 if spec.symmetric else 0, zero)
    return scale.astype(np.float32), zero.astype(spec.dtype.numpy)


def range_of(scale: np.ndarray, zero: np.ndarray, spec: QuantSpec) -> tuple[float, float]:
    """The real range a per-tensor (scale, zero point) represents: [(q_min − z)·s, (q_max − z)·s]."""
    s, z = float(np.asarray(scale).reshape(())), float(np.asarray(zero).reshape(()))
    return (spec.dtype.qmin - z) * s, (spec.dtype.qmax - z) * s


def quantize(x: np.ndarray, scale: np.ndarray, zero: np.ndarray, spec: QuantSpec, axis: int | None = None):
    """Quantize ``x`` with per-tensor or per-channel (``axis``) parameters to the spec's dtype."""
    if axis is not None and np.ndim(scale) == 1:
        shape = [1] * x.ndim
        shape[axis] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    q = np.round(x.astype(np.float64) / scale.astype(np.float64)) + zero.astype(np.float64)
    return np.clip(q, spec.dtype.qmin, spec.dtype.qmax).astype(spec.dtype.numpy)


def dequantize(q: np.ndarray, scale: np.ndarray, zero: np.ndarray, axis: int | None = None) -> np.ndarray:
    if axis is not None and np.ndim(scale) == 1:
        shape = [1] * q.ndim
        shape[axis] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return ((q.astype(np.float64) - zero.astype(np.float64)) * scale).astype(np.float32)


def quantize_weight(
    w: np.ndarray, spec: QuantSpec, *, name: str = "", min_scale: np.ndarray | float | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Quantize a constant weight: (q, scale, zero point) shaped for DequantizeLinear.

    Per-channel: scale/zero are 1-D over ``spec.axis``. Per-block: scale/zero have the weight's shape
    with ``spec.axis`` divided by the block size (DequantizeLinear opset 21 ``block_size`` layout).
    ``min_scale`` (per channel, or scalar) raises scales that are too small, e.g. so that the int32 bias
    ``b / (s_act · s_w)`` of a channel with near-zero weights does not overflow.
    """
    w = np.asarray(w)
    if spec.granularity is Granularity.PER_TENSOR:
        scale, zero = qparams_from_range(w.min(), w.max(), spec, name=name, warn=False)
        if min_scale is not None:
            scale = np.maximum(scale, np.max(min_scale)).astype(np.float32)
        return quantize(w, scale, zero, spec), scale, zero
    axis = spec.axis % w.ndim
    if spec.granularity is Granularity.PER_CHANNEL:
        reduce = tuple(i for i in range(w.ndim) if i != axis)
        scale, zero = qparams_from_range(w.min(axis=reduce), w.max(axis=reduce), spec, name=name, warn=False)
        if min_scale is not None:
            scale = np.maximum(scale, np.asarray(min_scale, np.float32)).astype(np.float32)
        return quantize(w, scale, zero, spec, axis=axis), scale, zero
    block = spec.block_size
    if w.shape[axis] % block:
        raise ValueError(f"weight '{name}': axis {axis} of size {w.shape[axis]} is not a multiple of block {block}")
    moved = np.moveaxis(w, axis, -1)
    blocks = moved.reshape(*moved.shape[:-1], moved.shape[-1] // block, block)
    scale, zero = qparams_from_range(blocks.min(axis=-1), blocks.max(axis=-1), spec, name=name, warn=False)
    q = quantize(blocks, scale[..., None], zero[..., None], spec)
    q = np.moveaxis(q.reshape(moved.shape), -1, axis)
    return q, np.moveaxis(scale, -1, axis), np.moveaxis(zero, -1, axis)
