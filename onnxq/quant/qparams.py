"""Scales, zero points and weight quantization.

Affine:     s = (r_max − r_min) / (q_max − q_min),   z = round(q_min − r_min / s)
Symmetric:  s = max(|r_min|, |r_max|) / ((q_max − q_min) / 2),   z = 0 (signed) or (q_max + 1) / 2 (unsigned)
            (s = max(|r_min|, |r_max|) / max_level where the spec narrows its top, ``QuantSpec.max_level``)
Quantize:   q = clip(round(x / s) + z, q_min, q_max);   dequantize: x̂ = (q − z) · s

The range is first widened to include 0 so that zero (padding, ReLU output) is exact. A degenerate range
(all values equal to 0) gets scale 1 and a warning instead of a zero or NaN scale.

LPBQ (per-block weights whose block scales are quantized too, ``spec.block_scale_bits``): with L = 2^bits,
per output channel and block b of the input channels,
    s_b = amax_b / q_max,   c = α · max_b(s_b) / L,   k_b ∈ [1, L] (integer),   q = clip(round(w / (k_b·c)))
The block holding the channel's largest s_b always gets k = L, so max_b(k_b·c) / L = c: the float block
scales k_b·c alone give back c and every k_b (this is how ONNX Runtime's QNN EP turns float block scales
into LPBQ, and how AIMET defines it: k ≤ 2^(8−4) = 16 for int4 weights). The other k_b are chosen among
round(s_b/c) − 2 … + 1 by the block's squared error, and α ∈ {1, 0.9, 0.8, 0.7} by the channel's (a smaller
c clips the outlier block a little and gives every other block a finer grid). Relative weight error on a
64×256 weight with outlier blocks, blocks of 32 (tests/test_qnn_lpbq.py): k = ceil(s_b/c), which never
clips, 0.099; k = round(s_b/c) 0.096; the search 0.088; int4 per channel 0.195.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

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
    qmin, qmax = spec.qmin, spec.qmax
    if spec.symmetric:
        amax = np.maximum(-rmin, rmax)
        half = (qmax - qmin) / 2.0 if spec.max_level is None else float(spec.max_level)
        scale = amax / half
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
    return (spec.qmin - z) * s, (spec.qmax - z) * s


def quantize(x: np.ndarray, scale: np.ndarray, zero: np.ndarray, spec: QuantSpec, axis: int | None = None):
    """Quantize ``x`` with per-tensor or per-channel (``axis``) parameters to the spec's dtype."""
    if axis is not None and np.ndim(scale) == 1:
        shape = [1] * x.ndim
        shape[axis] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    scale, zero = np.asarray(scale, np.float64), np.asarray(zero, np.float64)
    out = np.empty(np.shape(x), spec.dtype.numpy)
    for rows, s, z in _row_chunks(x, scale, zero):
        q = x[rows].astype(np.float64)
        q /= s
        np.round(q, out=q)
        q += z
        np.clip(q, spec.qmin, spec.qmax, out=q)
        out[rows] = q
    return out


def dequantize(q: np.ndarray, scale: np.ndarray, zero: np.ndarray, axis: int | None = None) -> np.ndarray:
    if axis is not None and np.ndim(scale) == 1:
        shape = [1] * q.ndim
        shape[axis] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    scale, zero = np.asarray(scale), np.asarray(zero, np.float64)
    out = np.empty(np.shape(q), np.float32)
    for rows, s, z in _row_chunks(q, scale, zero):
        x = q[rows].astype(np.float64)
        x -= z
        x *= s
        out[rows] = x
    return out


#: elements per float64 working chunk of ``quantize``/``dequantize``: 2 MiB temporaries, however large
#: the weight (whole-tensor float64 temporaries were 4x a float32 weight: +20 MiB for a 5 MB classifier)
CHUNK_ELEMENTS = 1 << 18


def row_blocks(x: np.ndarray, elements: int = CHUNK_ELEMENTS) -> list[slice]:
    """Slices of axis 0 covering ``x`` (at least 1-d) in blocks of about ``elements`` elements."""
    step = max(1, elements // max(1, int(np.prod(np.shape(x)[1:]))))
    return [slice(start, start + step) for start in range(0, len(x), step)]


def _row_chunks(x: np.ndarray, scale: np.ndarray, zero: np.ndarray):
    """(slice of axis 0, scale, zero) covering ``x`` in chunks of about ``CHUNK_ELEMENTS``, the parameters
    sliced along with ``x`` where they vary along axis 0 (else they broadcast as they are). Elementwise
    arithmetic on each chunk gives exactly the whole-tensor result."""
    if np.ndim(x) == 0:
        yield ..., scale, zero
        return
    rows = len(x)

    def part(p: np.ndarray, block: slice) -> np.ndarray:
        sliced = p.ndim == np.ndim(x) and p.shape[0] == rows and rows > 1
        return p[block] if sliced else p

    for block in row_blocks(x):
        yield block, part(scale, block), part(zero, block)


def dequantize_weight(q: np.ndarray, scale: np.ndarray, zero: np.ndarray, spec: QuantSpec) -> np.ndarray:
    """What DequantizeLinear makes of ``quantize_weight``'s result (per tensor, channel or block)."""
    if spec.block_size is not None:  # scales repeated over their blocks: elementwise from there
        axis = spec.axis % q.ndim
        return dequantize(q, np.repeat(scale, spec.block_size, axis=axis), np.repeat(zero, spec.block_size, axis=axis))
    axis = None if spec.granularity is Granularity.PER_TENSOR else spec.axis % q.ndim
    return dequantize(q, np.asarray(scale), np.asarray(zero), axis)


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
    if spec.block_scale_bits is not None:
        lpbq = quantize_weight_lpbq(w, spec, name=name, min_scale=min_scale)
        return lpbq.q, lpbq.block_scales, lpbq.zero
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


#: LPBQ search: fractions of max_b(s_b) tried for the channel scale, offsets tried around round(s_b / c)
LPBQ_ALPHAS = (1.0, 0.9, 0.8, 0.7)
LPBQ_K_OFFSETS = (-2, -1, 0, 1)


@dataclass(frozen=True)
class LpbqWeight:
    """An LPBQ-quantized weight, laid out for DequantizeLinear (block scales: the weight's shape with the
    block axis divided by the block size)."""

    q: np.ndarray  # integer weights (spec dtype)
    block_ints: np.ndarray  # uint8 k_b in [1, 2^bits], block-scale layout
    channel_scale: np.ndarray  # float32 c, 1-D along spec.channel_axis
    zero: np.ndarray  # zero points (0), block-scale layout, spec dtype
    channel_axis: int

    @property
    def block_scales(self) -> np.ndarray:
        """The float32 block scales k_b·c."""
        shape = [1] * self.block_ints.ndim
        shape[self.channel_axis] = -1
        return (self.block_ints.astype(np.float32) * self.channel_scale.reshape(shape)).astype(np.float32)


def quantize_weight_lpbq(
    w: np.ndarray, spec: QuantSpec, *, name: str = "", min_scale: np.ndarray | float | None = None
) -> LpbqWeight:
    """LPBQ-quantize ``w`` (see the module docstring); ``min_scale`` floors the per-channel scale c."""
    w = np.asarray(w, dtype=np.float32)
    block_axis, channel_axis, block = spec.axis % w.ndim, spec.channel_axis % w.ndim, spec.block_size
    if w.shape[block_axis] % block:
        raise ValueError(f"weight '{name}': axis {block_axis} of size {w.shape[block_axis]} is not a "
                         f"multiple of block {block}")
    levels = 1 << spec.block_scale_bits
    moved = np.moveaxis(w, (channel_axis, block_axis), (0, -1))  # [C, ..., K]
    blocks = moved.reshape(moved.shape[0], -1, moved.shape[-1] // block, block)  # [C, R, nb, block]
    s = np.abs(blocks).max(axis=-1) / float(spec.qmax)  # [C, R, nb]
    flat = s.reshape(s.shape[0], -1)
    top = flat.argmax(axis=1)
    s_max = flat.max(axis=1)
    if np.any(s_max < MIN_SCALE):
        logger.debug("weight '%s': %d all-zero channels get scale 1", name, int(np.sum(s_max < MIN_SCALE)))
    s_max = np.where(s_max < MIN_SCALE, 1.0, s_max)  # top block scale L·c = 1, as for other degenerate ranges
    floor = np.zeros_like(s_max) if min_scale is None else np.broadcast_to(
        np.asarray(min_scale, np.float32), s_max.shape)
    best = (np.full(s_max.shape, np.inf), None, None)
    for alpha in LPBQ_ALPHAS:
        c = np.maximum(alpha * s_max / levels, floor).astype(np.float32)
        k, err = _lpbq_block_ints(blocks, s, c, top, levels, spec)
        better = err < best[0]
        best = (np.where(better, err, best[0]),
                k if best[1] is None else np.where(better[:, None, None], k, best[1]),
                c if best[2] is None else np.where(better, c, best[2]))
    _, k, c = best
    scale = (k.astype(np.float32) * c[:, None, None])[..., None]
    q = np.clip(np.round(blocks / scale), spec.qmin, spec.qmax)
    q = np.moveaxis(q.reshape(moved.shape), (0, -1), (channel_axis, block_axis)).astype(spec.dtype.numpy)
    block_shape = (*moved.shape[:-1], moved.shape[-1] // block)
    ints = np.moveaxis(k.reshape(block_shape), (0, -1), (channel_axis, block_axis)).astype(np.uint8)
    return LpbqWeight(q, ints, c.astype(np.float32), np.zeros(ints.shape, spec.dtype.numpy), channel_axis)


def _lpbq_block_ints(blocks, s, c, top, levels, spec) -> tuple[np.ndarray, np.ndarray]:
    """Per block the k (among round(s/c) + LPBQ_K_OFFSETS) with the least squared error, the top block at
    ``levels``; returns (k [C, R, nb], squared error per channel [C])."""
    base = np.round(s / c[:, None, None])
    best_k, best_err = None, None
    for offset in LPBQ_K_OFFSETS:
        k = np.clip(base + offset, 1, levels)
        scale = (k * c[:, None, None])[..., None]
        q = np.clip(np.round(blocks / scale), spec.qmin, spec.qmax)
        err = np.square(q * scale - blocks).sum(axis=-1)
        if best_k is None:
            best_k, best_err = k, err
        else:
            better = err < best_err
            best_k, best_err = np.where(better, k, best_k), np.where(better, err, best_err)
    flat_k = best_k.reshape(best_k.shape[0], -1)
    flat_err = best_err.reshape(best_err.shape[0], -1)
    rows = np.arange(flat_k.shape[0])
    flat_k[rows, top] = levels
    top_blocks = blocks.reshape(blocks.shape[0], -1, blocks.shape[-1])[rows, top]
    top_scale = (levels * c)[:, None]
    top_q = np.clip(np.round(top_blocks / top_scale), spec.qmin, spec.qmax)
    flat_err[rows, top] = np.square(top_q * top_scale - top_blocks).sum(axis=-1)
    return flat_k.reshape(best_k.shape), flat_err.sum(axis=1)
