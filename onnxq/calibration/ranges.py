"""Calibration statistics → clipping range ``(r_min, r_max)``, per method.

Notation: ``h`` is the tensor's histogram (``observers.HistogramObserver``) with bin width ``w``;
``c_k`` the counts of ``|x|`` in bins ``[k·w, (k+1)·w)`` (the signed histogram folded), ``N = Σ c_k``,
``n`` the number of bins up to the last non-empty one, ``m_k = (k + ½)·w`` the bin centres;
``x_min, x_max`` the exact extremes; ``L`` the number of quantization levels covering ``[0, t]``:
``(q_max − q_min + 1) / 2`` when symmetric or when the data has both signs (128 for int8), else
``q_max − q_min + 1`` (256 for int8 on ReLU-like data); ``num_quant_levels`` overrides it (entropy;
mse derives its step from ``qdtype``). A threshold ``t`` on ``|x|`` becomes the range
``(max(x_min, −t), min(x_max, t))``: for symmetric specs the quantizer uses ``max(|r_min|, r_max) = t``;
one-sided data keeps its zero end.

* ``minmax``: ``(x_min, x_max)``, exact (or the moving averages, if collected with ``moving_average``).
  Per-channel statistics always give per-channel min/max (histograms are per tensor).
* ``percentile`` (p, e.g. 99.999): symmetric: ``t = Q_|x|(p/100)``, the p-th percentile of ``|x|``;
  affine: both tails of the signed histogram, ``(Q_x(1 − p/100), Q_x(p/100))``. ``Q`` interpolates
  linearly inside the bin where the cumulative count crosses ``q·N``; exact zeros are a point mass at 0.
* ``entropy`` (TensorRT's KL calibrator): for each candidate ``i`` (``L ≤ i ≤ n``, at most
  ``MAX_CANDIDATES`` of them): ``P = c_0 … c_{i−1}`` with the clipped mass ``Σ_{k≥i} c_k`` added to
  ``P_{i−1}``; ``Q`` = ``c_0 … c_{i−1}`` (without the clipped mass) merged into ``L`` equal groups
  of bins, each group's mass spread evenly over its non-empty bins; both normalised to sum 1;
  ``t = i·w`` for the ``i`` minimising ``KL(P‖Q) = Σ P_k · log(P_k / Q_k)``; empty bins of ``Q`` where
  ``P`` has mass get probability ``SMOOTHING`` (as MXNet and ORT do). Clipping shows up as the spike at
  ``P_{i−1}``, rounding as the flattening in ``Q``. Bin 0 is given the count of bin 1 (as TensorRT's
  reference implementation does): exact zeros (ReLU, padding) are exact in every grid and would
  otherwise make every merge of bin 0 look costly.
  With ``n ≤ L`` (fewer bins than levels) nothing is gained by clipping: ``t = max|x|``.
* ``mse``: for candidate thresholds ``t_j = min((j+1)·w, max|x|)``, the expected squared error per
  value under the histogram: ``E(t) = N_in(t)·s(t)²/12 + Σ_{k>j} c_k·((m_k − t)² + w²/12)`` with
  ``s(t)`` the step the quantizer will use (``2t/(q_max − q_min)`` symmetric,
  ``(min(x_max⁺, t) + min(x_min⁻, t))/(q_max − q_min)`` affine) and ``s²/12`` the rounding noise of
  the non-zero values inside the range (``N_in`` excludes exact zeros). ``t = argmin E``. Note that
  MSE weighs rare large outliers by their squared distance: 0.01% of values at ±50 on N(0, 1) cost
  more clipped (1e-4·46² ≈ 0.21) than the int8 rounding noise they cause when kept (≈0.013), so MSE
  keeps them at 8 bits (and clips them at 4); entropy and percentile clip them.

Degenerate results (no finite data, all zeros, ``r_min == r_max``) become a safe non-zero range with a
warning naming the tensor: a constant ``c`` gives ``(min(c, 0), max(c, 0))``, zero gives ``(−1, 1)``;
a histogram method that clips everything (>p% exact zeros) falls back to min/max.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np

from onnxq.calibration.observers import HistogramObserver
from onnxq.errors import OptionError, UnknownNameError
from onnxq.quant.spec import QDType

logger = logging.getLogger(__name__)

METHODS = ("minmax", "percentile", "entropy", "mse")
HISTOGRAM_METHODS = ("percentile", "entropy", "mse")
#: Most thresholds the entropy search evaluates (evenly strided over the histogram).
MAX_CANDIDATES = 512
#: Probability given to empty candidate bins that the reference fills (MXNet's and ORT's smoothing).
SMOOTHING = 1e-4

Range = tuple[float, float] | tuple[np.ndarray, np.ndarray]


@dataclass
class TensorStats:
    """What calibration learned about one tensor."""

    name: str
    min: float | np.ndarray | None
    max: float | np.ndarray | None
    histogram: HistogramObserver | None = None
    axis: int | None = None
    count: int = 0
    nonfinite: int = 0
    #: mean per channel along axis 1, where it was asked for (the input of a layer that bias correction fixes)
    channel_mean: np.ndarray | None = None
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def range(
        self,
        method: str = "minmax",
        qdtype: QDType = QDType.INT8,
        symmetric: bool = False,
        percentile: float = 99.999,
        num_quant_levels: int | None = None,
    ) -> Range:
        """Clipping range for ``method``; see ``compute_range``. Cached: the engine asks again every
        verification round, and an entropy search costs tens of milliseconds."""
        hist = self.histogram
        key = (method, qdtype, symmetric, percentile, num_quant_levels,
               None if hist is None else (hist.count, hist.exponent, hist.nonfinite))
        if key not in self._cache:
            self._cache[key] = compute_range(self, method, qdtype=qdtype, symmetric=symmetric,
                                             percentile=percentile, num_quant_levels=num_quant_levels)
        return self._cache[key]


def compute_range(
    stats: TensorStats,
    method: str,
    *,
    qdtype: QDType,
    symmetric: bool,
    percentile: float = 99.999,
    num_quant_levels: int | None = None,
) -> Range:
    """``(r_min, r_max)`` of ``stats`` by ``method`` (floats, or arrays for per-channel statistics)."""
    if method not in METHODS:
        raise UnknownNameError("calibration method", method, METHODS)
    if not 0.0 < percentile <= 100.0:
        raise OptionError(f"percentile must be in (0, 100], got {percentile}")
    if stats.min is None or stats.max is None:
        logger.warning("tensor '%s': no finite calibration values; using the range (-1, 1)", stats.name)
        return -1.0, 1.0
    if np.ndim(stats.min) > 0:
        if method != "minmax":
            logger.debug("tensor '%s': per-channel statistics are min/max only (asked: %s)",
                         stats.name, method)
        return _safe_range(stats.name, np.asarray(stats.min), np.asarray(stats.max))
    if method == "minmax":
        return _safe_range(stats.name, float(stats.min), float(stats.max))
    hist = stats.histogram
    if hist is None or hist.min is None:
        raise OptionError(
            f"tensor '{stats.name}': method '{method}' needs a histogram, but the statistics were collected "
            "with method='minmax'; collect them with the method you use"
        )
    if method == "percentile":
        lo, hi = _percentile_range(hist, percentile / 100.0, symmetric)
    else:
        levels = num_quant_levels or _default_levels(hist, qdtype, symmetric)
        if method == "entropy":
            t = _entropy_threshold(hist.abs_counts(), hist.bin_width, levels, _amax(hist))
        else:
            t = _mse_threshold(hist, qdtype, symmetric)
        lo, hi = max(hist.min, -t), min(hist.max, t)
    if not hi > lo and hist.max > hist.min:
        logger.warning("tensor '%s': %s range is empty (mostly exact zeros?); using min/max",
                       stats.name, method)
        lo, hi = hist.min, hist.max
    return _safe_range(stats.name, float(lo), float(hi))


def _amax(hist: HistogramObserver) -> float:
    return max(hist.max, -hist.min, 0.0)


def _default_levels(hist: HistogramObserver, qdtype: QDType, symmetric: bool) -> int:
    levels = qdtype.qmax - qdtype.qmin + 1
    one_sided = hist.min >= 0.0 or hist.max <= 0.0
    return levels if one_sided and not symmetric else levels // 2


def _safe_range(name: str, lo, hi) -> Range:
    """Replace empty or non-finite ranges by a usable one, with a warning naming the tensor."""
    lo_a, hi_a = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    bad = ~(np.isfinite(lo_a) & np.isfinite(hi_a) & (hi_a > lo_a))
    if np.any(bad):
        constant = bad & np.isfinite(lo_a) & (lo_a == hi_a) & (lo_a != 0.0)
        logger.warning(
            "tensor '%s': degenerate calibration range (constant or all-zero values) for %d of %d channels; "
            "using a safe non-zero range", name, int(np.count_nonzero(bad)), bad.size,
        )
        lo_a = np.where(bad, np.where(constant, np.minimum(lo_a, 0.0), -1.0), lo_a)
        hi_a = np.where(bad, np.where(constant, np.maximum(hi_a, 0.0), 1.0), hi_a)
    if lo_a.ndim == 0:
        return float(lo_a), float(hi_a)
    return lo_a, hi_a


def _quantile(counts: np.ndarray, first_bin: int, width: float, zeros: int, q: float) -> float:
    """Value below which a fraction ``q`` of the histogram's mass lies.

    Linear inside the bin where the cumulative count crosses ``q·N``; the exact zeros counted in bin 0
    are a point mass at 0 (so 60% of ReLU zeros put every percentile below 60 at exactly 0).
    """
    zero = -first_bin
    parts = [counts[:zero], [zeros, counts[zero] - zeros], counts[zero + 1:]]
    masses = np.concatenate(parts).astype(np.float64)
    starts = np.concatenate([np.arange(first_bin, 0), [0, 0], np.arange(1, first_bin + counts.size)]) * width
    widths = np.full(masses.size, width)
    widths[zero] = 0.0
    cumulative = np.cumsum(masses)
    rank = q * float(cumulative[-1])
    k = min(int(np.searchsorted(cumulative, rank, side="left")), masses.size - 1)
    before = float(cumulative[k - 1]) if k > 0 else 0.0
    inside = (rank - before) / masses[k] if masses[k] > 0 else 0.0
    return float(starts[k] + min(max(inside, 0.0), 1.0) * widths[k])


def _percentile_range(hist: HistogramObserver, q: float, symmetric: bool) -> tuple[float, float]:
    w = hist.bin_width
    if symmetric:
        t = _quantile(hist.abs_counts(), 0, w, hist.zeros, q)
        return max(hist.min, -t), min(hist.max, t)
    lo = _quantile(hist.counts, hist.first_bin, w, hist.zeros, 1.0 - q)
    hi = _quantile(hist.counts, hist.first_bin, w, hist.zeros, q)
    return max(lo, hist.min), min(hi, hist.max)


def _trim(counts: np.ndarray) -> np.ndarray:
    nonzero = np.flatnonzero(counts)
    return counts[: nonzero[-1] + 1] if nonzero.size else counts[:0]


def _entropy_threshold(abs_counts: np.ndarray, width: float, levels: int, amax: float) -> float:
    """TensorRT's KL-divergence threshold search over a histogram of ``|x|``; see the module docstring."""
    counts = _trim(abs_counts).astype(np.float64)
    n = counts.size
    if n <= levels:
        return amax
    if n > 1:
        counts[0] = counts[1]  # exact zeros (ReLU, padding) are exact in every grid: do not let them dominate
    stride = max(1, math.ceil((n - levels) / MAX_CANDIDATES))
    candidates = list(range(levels, n + 1, stride))
    if candidates[-1] != n:
        candidates.append(n)
    beyond = np.concatenate([np.cumsum(counts[::-1])[::-1], [0.0]])  # beyond[i] = Σ_{k>=i} c_k
    divergences = np.empty(len(candidates))
    for slot, i in enumerate(candidates):
        reference = counts[:i].copy()
        reference[-1] += beyond[i]  # the clipped values pile up at the threshold
        group = (np.arange(i) * levels) // i
        nonzero = counts[:i] > 0
        sums = np.bincount(group, weights=counts[:i], minlength=levels)
        filled = np.bincount(group, weights=nonzero, minlength=levels)
        candidate = np.where(nonzero, sums[group] / np.maximum(filled[group], 1.0), 0.0)
        divergences[slot] = _kl_divergence(reference, candidate)
    best = candidates[int(np.argmin(divergences))]
    return min(best * width, amax)


def _kl_divergence(reference: np.ndarray, candidate: np.ndarray) -> float:
    """KL(P‖Q) of two count vectors, normalised; bins where Q is empty but P is not get ``SMOOTHING``."""
    if candidate.sum() <= 0:
        return math.inf
    p = reference / reference.sum()
    q = candidate / candidate.sum()
    used = p > 0
    q = np.where(used & (q == 0), SMOOTHING, q)
    q /= q.sum()
    return float(np.sum(p[used] * np.log(p[used] / q[used])))


def _mse_threshold(hist: HistogramObserver, qdtype: QDType, symmetric: bool) -> float:
    """Threshold minimising expected quantization + clipping squared error; see the module docstring."""
    w = hist.bin_width
    counts = _trim(hist.abs_counts()).astype(np.float64)
    amax = _amax(hist)
    if counts.size == 0 or amax == 0.0:
        return amax
    centres = (np.arange(counts.size) + 0.5) * w
    t = np.minimum((np.arange(counts.size) + 1) * w, amax)  # candidate j keeps bins 0..j
    suffix = lambda a: np.concatenate([np.cumsum(a[::-1])[::-1][1:], [0.0]])  # Σ_{k>j}  # noqa: E731
    s0, s1 = suffix(counts), suffix(counts * centres)
    s2 = suffix(counts * (centres**2 + w * w / 12.0))
    clipping = s2 - 2.0 * t * s1 + t * t * s0
    steps = float(qdtype.qmax - qdtype.qmin)
    if symmetric:
        step = 2.0 * t / steps
    else:
        step = (np.minimum(max(hist.max, 0.0), t) + np.minimum(max(-hist.min, 0.0), t)) / steps
    inside = np.cumsum(counts) - hist.zeros  # exact zeros have no rounding error
    error = inside * step * step / 12.0 + clipping
    return float(t[int(np.argmin(error))])
