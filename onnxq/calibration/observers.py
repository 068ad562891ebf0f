"""Mergeable streaming statistics of tensors: running min/max and an exact power-of-two histogram.

Both observers reduce each batch as soon as it arrives, so memory depends on the number of tensors and
bins, never on the number of samples. Non-finite values (NaN, ±Inf) are counted in ``nonfinite`` and
otherwise ignored: one ``-inf`` attention mask must not turn a range into ``(-inf, x)``.

**MinMaxObserver** keeps the exact min and max (per tensor, or per channel along ``axis``), or with
``averaging_constant = c`` an exponential moving average of the per-batch extremes:
``m ← m + c·(m_batch − m)``. Exact min/max are order-independent and merge by min/max; moving averages
depend on order by definition and cannot be merged.

**ChannelMeanObserver** keeps a running per-channel mean (for bias correction).

**HistogramObserver** counts values ``x`` (signed, not ``|x|``: affine percentiles need both tails; the
histogram of ``|x|`` is the exact fold ``abs_counts``) in bins of width ``w = 2^e`` aligned at integer
multiples of ``w`` with origin 0, mirror-symmetric about zero: ``x ≥ 0`` falls in bin
``j = floor(x / w)`` (``[j·w, (j+1)·w)``), ``x < 0`` in bin ``j = −floor(−x / w) − 1``
(``(j·w, (j+1)·w]``), so that ``|x|`` lies in bin ``k = floor(|x| / w)`` either way. The exponent is the
smallest ``e`` for which each side of zero fits in ``num_bins`` bins: ``floor(max|x| / w) < num_bins``.
The condition is monotone in ``e`` and only depends on the extremes seen so far, so when new data does
not fit, ``w`` is doubled (bins ``j → floor(j / 2)`` on both sides, an exact merge of bin pairs) until it
does. The state after any sequence of updates and merges is therefore the one a single update with all
the data would give: streaming equals one-shot exactly, whatever the batching and order. Counts are
``np.int64``; indices are computed in float64, where ``x · 2^−e`` is exact for float16/float32 data.
Exact zeros (ReLU, padding) are also counted apart in ``zeros`` (they are exact in every quantization
grid; the range methods treat them as a point mass at 0).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

#: Smallest bin-width exponent (all-zero data keeps it; any non-zero value raises it).
MIN_EXPONENT = -1074
#: Elements processed at once by ``HistogramObserver.update``: bounds the temporaries of large tensors.
CHUNK = 1 << 20


#: Magnitudes from here up are sentinels, not data (an attention mask's finfo(float32).min): they are left
#: out of the statistics like NaN/Inf, and counted, so one mask value does not set a tensor's scale to 1e36.
SENTINEL = 1e30


def _finite(array: np.ndarray) -> tuple[np.ndarray, int]:
    """(finite, non-sentinel values as a flat array, number of values dropped)."""
    flat = np.ravel(array)
    if flat.dtype.kind not in "fc" or flat.size == 0:
        return flat, 0
    lo, hi = np.min(flat), np.max(flat)
    if np.isfinite(lo) and np.isfinite(hi) and -SENTINEL < lo and hi < SENTINEL:
        return flat, 0
    keep = np.isfinite(flat) & (np.abs(flat) < SENTINEL)
    return flat[keep], int(flat.size - np.count_nonzero(keep))


class MinMaxObserver:
    """Running min/max, per tensor or per channel (``axis``), exact or as a moving average."""

    def __init__(self, axis: int | None = None, averaging_constant: float | None = None):
        if averaging_constant is not None and not 0.0 < averaging_constant <= 1.0:
            raise ValueError(f"averaging_constant must be in (0, 1], got {averaging_constant}")
        self.axis = axis
        self.averaging_constant = averaging_constant
        self.min: float | np.ndarray | None = None
        self.max: float | np.ndarray | None = None
        self.count = 0
        self.nonfinite = 0

    def _batch_extremes(self, array: np.ndarray) -> tuple[float | np.ndarray, float | np.ndarray] | None:
        if self.axis is None:
            flat, dropped = _finite(array)
            self.nonfinite += dropped
            self.count += flat.size
            if flat.size == 0:
                return None
            return float(np.min(flat)), float(np.max(flat))
        if not -array.ndim <= self.axis < array.ndim:
            raise ValueError(
                f"per-channel axis {self.axis} is out of range for a tensor of rank {array.ndim}")
        moved = np.moveaxis(array, self.axis, 0).reshape(array.shape[self.axis], -1)
        if moved.shape[1] == 0:
            return None
        if moved.dtype.kind in "fc" and not np.all(np.isfinite(moved)):
            keep = np.isfinite(moved)
            self.nonfinite += int(keep.size - np.count_nonzero(keep))
            lo = np.where(keep, moved, np.inf).min(axis=1)
            hi = np.where(keep, moved, -np.inf).max(axis=1)
        else:
            lo, hi = moved.min(axis=1), moved.max(axis=1)
        self.count += moved.size
        return lo.astype(np.float64), hi.astype(np.float64)

    def update(self, array: np.ndarray) -> None:
        """Fold one batch (any shape; per-channel batches must keep the channel count)."""
        extremes = self._batch_extremes(np.asarray(array))
        if extremes is None:
            return
        lo, hi = extremes
        if self.min is None:
            self.min, self.max = lo, hi
            return
        if self.axis is not None and np.shape(lo) != np.shape(self.min):
            raise ValueError(f"per-channel observer saw {np.size(self.min)} channels, then {np.size(lo)}")
        if self.averaging_constant is not None:
            c = self.averaging_constant
            self.min = self.min + c * (lo - self.min)
            self.max = self.max + c * (hi - self.max)
        elif self.axis is None:
            self.min, self.max = min(self.min, lo), max(self.max, hi)
        else:
            self.min, self.max = np.minimum(self.min, lo), np.maximum(self.max, hi)

    def merge(self, other: MinMaxObserver) -> None:
        """Combine with statistics of other data (exact min/max only)."""
        if self.averaging_constant is not None or other.averaging_constant is not None:
            raise ValueError("moving-average statistics depend on the order of the data and cannot be merged")
        if self.axis != other.axis:
            raise ValueError(f"cannot merge observers of axis {self.axis} and axis {other.axis}")
        self.count += other.count
        self.nonfinite += other.nonfinite
        if other.min is None:
            return
        if self.min is None:
            self.min, self.max = other.min, other.max
        else:
            self.min, self.max = np.minimum(self.min, other.min), np.maximum(self.max, other.max)
            if self.axis is None:
                self.min, self.max = float(self.min), float(self.max)


class ChannelMeanObserver:
    """Running mean per channel along ``axis`` (float64 sums; finite, non-sentinel values only).

    Bias correction needs the mean of each quantized layer's input per input channel: the systematic
    output shift that rounding the weights causes is ``ΔW · E[x]``. Sums merge exactly up to float64
    rounding, so streaming matches one-shot to ~1e-12 relative.
    """

    def __init__(self, axis: int):
        self.axis = axis
        self.sum: np.ndarray | None = None
        self.count: np.ndarray | None = None

    def update(self, array: np.ndarray) -> None:
        array = np.asarray(array)
        if array.ndim == 0 or not -array.ndim <= self.axis < array.ndim:
            raise ValueError(f"channel axis {self.axis} is out of range for a tensor of rank {array.ndim}")
        moved = np.moveaxis(array, self.axis, 0).reshape(array.shape[self.axis], -1)
        if moved.size and np.isfinite(lo := moved.min()) and np.isfinite(hi := moved.max()) \
                and -SENTINEL < lo and hi < SENTINEL:  # the usual case: no float64 copy of the tensor
            total = moved.sum(axis=1, dtype=np.float64)
            count = np.full(moved.shape[0], moved.shape[1], dtype=np.int64)
        else:
            keep = np.isfinite(moved) & (np.abs(moved) < SENTINEL)
            total = np.where(keep, moved, 0).sum(axis=1, dtype=np.float64)
            count = keep.sum(axis=1)
        if self.sum is None:
            self.sum, self.count = total, count
            return
        if total.shape != self.sum.shape:
            raise ValueError(f"channel-mean observer saw {self.sum.size} channels, then {total.size}")
        self.sum, self.count = self.sum + total, self.count + count

    def merge(self, other: ChannelMeanObserver) -> None:
        if other.sum is None:
            return
        if self.sum is None:
            self.sum, self.count = other.sum.copy(), other.count.copy()
            return
        self.sum, self.count = self.sum + other.sum, self.count + other.count

    @property
    def mean(self) -> np.ndarray | None:
        """Per-channel mean; channels that saw no finite value read 0 (no correction)."""
        if self.sum is None:
            return None
        return np.where(self.count > 0, self.sum / np.maximum(self.count, 1), 0.0)


@dataclass(frozen=True)
class HistogramState:
    """Everything that defines a histogram; equal states mean equal histograms (used by the tests)."""

    exponent: int
    first_bin: int
    counts: tuple[int, ...]
    min: float | None
    max: float | None
    count: int
    zeros: int
    nonfinite: int


def _fits(exponent: int, amax: float, num_bins: int) -> bool:
    return math.floor(math.ldexp(amax, -exponent)) < num_bins


def _fitting_exponent(current: int, amax: float, num_bins: int) -> int:
    """Smallest exponent >= ``current`` at which ``max|x| = amax`` fits; see the module docstring."""
    if amax == 0.0:
        return current
    # Fitting needs amax / 2^e < num_bins, so e > log2(amax / num_bins): start just below that bound.
    exponent = max(current, math.frexp(amax / num_bins)[1] - 2)
    while not _fits(exponent, amax, num_bins):
        exponent += 1
    return exponent


def _bin_of(x: float, exponent: int) -> int:
    m = math.floor(math.ldexp(abs(x), -exponent))
    return m if x >= 0 else -m - 1


def _rebin(counts: np.ndarray, first_bin: int, shift: int) -> tuple[np.ndarray, int]:
    """Counts of bins ``first_bin…`` at width ``w`` → at width ``w·2^shift`` (j → floor(j / 2^shift))."""
    if shift == 0 or counts.size == 0:
        return counts, first_bin
    shift = min(shift, 62)  # |j| < 2^62, so larger shifts map everything to 0 or -1 alike
    new_index = np.right_shift(np.arange(first_bin, first_bin + counts.size, dtype=np.int64), shift)
    starts = np.flatnonzero(np.r_[True, new_index[1:] != new_index[:-1]])
    return np.add.reduceat(counts, starts), int(new_index[0])


class HistogramObserver:
    """Exact, mergeable histogram with power-of-two bin widths; see the module docstring."""

    def __init__(self, num_bins: int = 2048):
        if num_bins < 8:
            raise ValueError(f"num_bins must be >= 8, got {num_bins}")
        self.num_bins = num_bins
        self.exponent = MIN_EXPONENT
        self.first_bin = 0
        self.counts = np.zeros(1, dtype=np.int64)  # bin 0 only, until data arrives
        self.min: float | None = None
        self.max: float | None = None
        self.count = 0
        self.zeros = 0
        self.nonfinite = 0

    @property
    def bin_width(self) -> float:
        return math.ldexp(1.0, self.exponent)

    @property
    def state(self) -> HistogramState:
        return HistogramState(self.exponent, self.first_bin, tuple(int(c) for c in self.counts),
                              self.min, self.max, self.count, self.zeros, self.nonfinite)

    def _regrid(self, new_min: float, new_max: float, exponent: int) -> None:
        """Move to ``exponent`` and extend the bin window to cover [min(new_min, 0), max(new_max, 0)]."""
        counts, first = _rebin(self.counts, self.first_bin, exponent - self.exponent)
        lo_bin = min(_bin_of(new_min, exponent), 0)
        hi_bin = max(_bin_of(new_max, exponent), 0)
        window = np.zeros(hi_bin - lo_bin + 1, dtype=np.int64)
        window[first - lo_bin:first - lo_bin + counts.size] = counts
        self.exponent, self.first_bin, self.counts = exponent, lo_bin, window

    def _include_extremes(self, lo: float, hi: float) -> None:
        new_min = lo if self.min is None else min(self.min, lo)
        new_max = hi if self.max is None else max(self.max, hi)
        exponent = _fitting_exponent(self.exponent, max(new_max, -new_min, 0.0), self.num_bins)
        self._regrid(new_min, new_max, exponent)
        self.min, self.max = new_min, new_max

    def update(self, array: np.ndarray) -> None:
        """Count the finite values of ``array`` (any shape, any real dtype)."""
        flat, dropped = _finite(np.asarray(array))
        self.nonfinite += dropped
        if flat.size == 0:
            return
        if flat.dtype.kind == "b":
            flat = flat.astype(np.uint8)
        lo, hi = float(np.min(flat)), float(np.max(flat))
        self._include_extremes(lo, hi)
        if max(hi, -lo) == 0.0:  # all zeros: bin 0
            self.counts[-self.first_bin] += flat.size
            self.zeros += flat.size
        else:
            # |x|·2^-e is exact in float32 for float16/32 data while 2^-e is a normal float32 (no overflow:
            # the result is < 2·num_bins; an underflow only happens below 1, where floor gives 0 anyway).
            narrow = flat.dtype in (np.float16, np.float32) and -126 <= self.exponent <= 126
            work = np.float32 if narrow else np.float64
            scale = work(math.ldexp(1.0, -self.exponent)) if -1022 <= self.exponent <= 1022 else None
            for start in range(0, flat.size, CHUNK):
                self._count(flat[start:start + CHUNK], work, scale)
        self.count += flat.size

    def _count(self, chunk: np.ndarray, work: type, scale) -> None:
        magnitude = np.abs(chunk, dtype=work) if chunk.dtype.kind == "f" else np.abs(chunk.astype(work))
        if scale is not None:
            magnitude *= scale
        else:
            np.ldexp(magnitude, -self.exponent, out=magnitude)
        index = np.floor(magnitude, out=magnitude).astype(np.int64)
        if self.first_bin < 0:  # negative values: bin −m−1 = ~m
            index ^= -(chunk < 0).astype(np.int64)  # x ^ -1 == ~x; x ^ 0 == x
        index -= self.first_bin
        self.zeros += chunk.size - int(np.count_nonzero(chunk))
        self.counts += np.bincount(index, minlength=self.counts.size)

    def merge(self, other: HistogramObserver) -> None:
        """Add the counts of ``other`` (same ``num_bins``); the result equals one update with both data."""
        if other.num_bins != self.num_bins:
            raise ValueError(f"cannot merge histograms of {self.num_bins} and {other.num_bins} bins")
        self.nonfinite += other.nonfinite
        if other.min is None:
            return
        # Both exponents are the smallest that fit their data, so the union's is >= either of them.
        self._include_extremes(other.min, other.max)
        counts, first = _rebin(other.counts, other.first_bin, self.exponent - other.exponent)
        self.counts[first - self.first_bin:first - self.first_bin + counts.size] += counts
        self.count += other.count
        self.zeros += other.zeros

    def abs_counts(self) -> np.ndarray:
        """Histogram of ``|x|`` on the same grid: bin ``k`` counts ``k·w <= |x| < (k+1)·w`` (exact)."""
        zero = -self.first_bin  # the window always contains bin 0
        positive, negative = self.counts[zero:], self.counts[:zero][::-1]
        folded = np.zeros(max(positive.size, negative.size), dtype=np.int64)
        folded[:positive.size] += positive
        folded[:negative.size] += negative
        return folded

    def edges(self) -> np.ndarray:
        """Bin edges of ``counts`` (length ``len(counts) + 1``; negative bins are closed on the right)."""
        return np.arange(self.first_bin, self.first_bin + self.counts.size + 1) * self.bin_width
