"""Observers and range methods: streaming equals one-shot exactly; each method on known distributions."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from onnxq.calibration import HistogramObserver, MinMaxObserver, TensorStats, compute_range
from onnxq.errors import OptionError, UnknownNameError
from onnxq.quant.spec import QDType

METHODS = ("minmax", "percentile", "entropy", "mse")
N = 1_000_000


def gaussian_with_outliers(seed: int = 0, n: int = N, fraction: float = 1e-4) -> np.ndarray:
    """N(0, 1) with ``fraction`` of the values replaced by ±50 (half each)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n).astype(np.float32)
    k = int(n * fraction)
    x[: k // 2], x[k // 2 : k] = 50.0, -50.0
    return rng.permutation(x)


def random_batches(x: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """``x`` shuffled and cut at random points into 1..40 batches, each given a random shape."""
    x = rng.permutation(x)
    cuts = np.sort(rng.choice(np.arange(1, x.size), size=int(rng.integers(0, 40)), replace=False))
    parts = np.split(x, cuts)
    return [p.reshape(1, -1) if i % 2 else p for i, p in enumerate(parts)]


def histogram_of(x: np.ndarray, num_bins: int = 2048) -> HistogramObserver:
    observer = HistogramObserver(num_bins)
    observer.update(x)
    return observer


def stats_of(observer: HistogramObserver, name: str = "t") -> TensorStats:
    return TensorStats(name, observer.min, observer.max, observer, count=observer.count)


DISTRIBUTIONS = {
    "gauss_outliers": lambda rng: gaussian_with_outliers(int(rng.integers(99)), n=200_000, fraction=1e-3),
    "relu": lambda rng: np.maximum(rng.standard_normal(100_000), 0).astype(np.float32),
    "negative": lambda rng: -rng.exponential(3.0, 50_000).astype(np.float32),
    "tiny": lambda rng: (rng.standard_normal(50_000) * 1e-6).astype(np.float32),
    "huge": lambda rng: (rng.standard_normal(50_000) * 1e30).astype(np.float32),
    "zeros_then_data": lambda rng: np.r_[np.zeros(1000), rng.uniform(100, 101, 1000)].astype(np.float32),
    "constant": lambda rng: np.full(5000, 3.25, np.float32),
    "int8_data": lambda rng: rng.integers(-128, 128, 20_000).astype(np.int8),
}


@pytest.mark.parametrize("kind", sorted(DISTRIBUTIONS))
def test_histogram_streaming_equals_one_shot(kind: str):
    rng = np.random.default_rng(7)
    x = DISTRIBUTIONS[kind](rng)
    reference = histogram_of(x)
    for _ in range(3):
        streamed = HistogramObserver()
        for batch in random_batches(x, rng):
            streamed.update(batch)
        assert streamed.state == reference.state
        # Merging partial observers in any order gives the same exact state too.
        parts = [histogram_of(b) for b in random_batches(x, rng)]
        merged = HistogramObserver()
        for i in rng.permutation(len(parts)):
            merged.merge(parts[i])
        assert merged.state == reference.state
        for method in METHODS:
            for symmetric in (True, False):
                kwargs = dict(qdtype=QDType.INT8, symmetric=symmetric, percentile=99.9)
                assert compute_range(stats_of(streamed), method, **kwargs) == \
                    compute_range(stats_of(reference), method, **kwargs)


def test_histogram_counts_are_exact():
    x = gaussian_with_outliers(3, n=100_000, fraction=1e-3)
    observer = histogram_of(x)
    w = observer.bin_width
    assert w == 2.0 ** observer.exponent and observer.counts.dtype == np.int64
    magnitude = np.floor(np.abs(x.astype(np.float64)) / w).astype(np.int64)
    signed_bin = np.where(x < 0, -magnitude - 1, magnitude)  # mirror-symmetric bins about 0
    expected = np.bincount(signed_bin - observer.first_bin)
    np.testing.assert_array_equal(observer.counts[: expected.size], expected)
    assert observer.counts.sum() == x.size and (observer.min, observer.max) == (-50.0, 50.0)
    # Each side of zero fits in num_bins bins, and at half the width it would not.
    assert 50.0 / w < 2048 and 50.0 / (w / 2) >= 2048
    folded = observer.abs_counts()
    np.testing.assert_array_equal(folded, np.bincount(np.floor(np.abs(x) / w).astype(np.int64)))


def test_histogram_ignores_nonfinite_values():
    observer = HistogramObserver()
    observer.update(np.array([1.0, np.nan, -np.inf, 2.0, np.inf], np.float32))
    assert (observer.min, observer.max, observer.count, observer.nonfinite) == (1.0, 2.0, 2, 3)


def test_minmax_streaming_equals_one_shot():
    rng = np.random.default_rng(1)
    x = rng.standard_normal(100_000).astype(np.float32) * 7
    one_shot = MinMaxObserver()
    one_shot.update(x)
    assert (one_shot.min, one_shot.max) == (float(x.min()), float(x.max()))
    for _ in range(5):
        streamed = MinMaxObserver()
        for batch in random_batches(x, rng):
            streamed.update(batch)
        assert (streamed.min, streamed.max, streamed.count) == (one_shot.min, one_shot.max, x.size)
        merged = MinMaxObserver()
        for batch in random_batches(x, rng):
            part = MinMaxObserver()
            part.update(batch)
            merged.merge(part)
        assert (merged.min, merged.max) == (one_shot.min, one_shot.max)


def test_minmax_per_channel_and_moving_average():
    rng = np.random.default_rng(2)
    batches = [rng.standard_normal((2, 4, 3, 5)).astype(np.float32) * (i + 1) for i in range(6)]
    per_channel = MinMaxObserver(axis=1)
    for batch in batches:
        per_channel.update(batch)
    everything = np.concatenate(batches)
    np.testing.assert_array_equal(per_channel.min, everything.min(axis=(0, 2, 3)))
    np.testing.assert_array_equal(per_channel.max, everything.max(axis=(0, 2, 3)))

    averaged = MinMaxObserver(averaging_constant=0.25)
    lo, hi = float(batches[0].min()), float(batches[0].max())
    for batch in batches:
        averaged.update(batch)
    for batch in batches[1:]:
        lo += 0.25 * (float(batch.min()) - lo)
        hi += 0.25 * (float(batch.max()) - hi)
    assert averaged.min == pytest.approx(lo) and averaged.max == pytest.approx(hi)
    with pytest.raises(ValueError, match="cannot be merged"):
        averaged.merge(MinMaxObserver())


def test_uniform_minmax_and_percentile_find_the_bounds():
    x = np.random.default_rng(4).uniform(-2.0, 3.0, N).astype(np.float32)
    stats = stats_of(histogram_of(x))
    lo, hi = compute_range(stats, "minmax", qdtype=QDType.UINT8, symmetric=False)
    assert (lo, hi) == (float(x.min()), float(x.max()))
    assert lo == pytest.approx(-2.0, abs=1e-3) and hi == pytest.approx(3.0, abs=1e-3)
    lo, hi = compute_range(stats, "percentile", qdtype=QDType.UINT8, symmetric=False, percentile=99.0)
    assert lo == pytest.approx(-1.95, abs=0.01) and hi == pytest.approx(2.95, abs=0.01)
    for method in ("entropy", "mse"):  # nothing to clip on uniform data: (almost) the whole range
        lo, hi = compute_range(stats, method, qdtype=QDType.UINT8, symmetric=False)
        assert lo == pytest.approx(-2.0, abs=0.05) and hi == pytest.approx(3.0, abs=0.05)


def test_gaussian_with_outliers():
    stats = stats_of(histogram_of(gaussian_with_outliers()))
    # Affine: each tail holds half the outliers plus the Gaussian tail: Q(0.9999) of the mix ≈ Φ⁻¹(1 − 5e-5).
    lo, hi = compute_range(stats, "percentile", qdtype=QDType.UINT8, symmetric=False, percentile=99.99)
    assert lo == pytest.approx(-3.9, abs=0.2) and hi == pytest.approx(3.9, abs=0.2)
    # Symmetric: percentile of |x|; the outliers are 0.01% of |x|, so 99.98 lands at the same 3.9.
    lo, hi = compute_range(stats, "percentile", qdtype=QDType.INT8, symmetric=True, percentile=99.98)
    assert hi == pytest.approx(3.9, abs=0.2) and lo == -hi
    for symmetric, qdtype in ((True, QDType.INT8), (False, QDType.UINT8)):
        lo, hi = compute_range(stats, "entropy", qdtype=qdtype, symmetric=symmetric)
        assert 2.5 < hi < 10.0 and lo == -hi  # well below abs-max (50)
    # MSE counts the outliers' clipping error (1e-4·46² ≈ 0.21) against int8 rounding noise when keeping
    # them ((50/127.5)²/12 ≈ 0.013): keeping them is right for int8; at int4 the noise wins and it clips.
    assert compute_range(stats, "mse", qdtype=QDType.INT8, symmetric=True)[1] > 40.0
    assert 2.5 < compute_range(stats, "mse", qdtype=QDType.INT4, symmetric=True)[1] < 6.0


def test_mse_on_gaussian_int8():
    # Even one outlier at 50 in a million moves the int8 MSE optimum to t ≈ 8 (d/dt: t/(12·127.5²) =
    # 1e-6·(50 − t)), so the bell-shaped case is a clean Gaussian: the optimum is ≈ 4σ.
    x = np.random.default_rng(5).standard_normal(N).astype(np.float32)
    stats = stats_of(histogram_of(x))
    lo, hi = compute_range(stats, "mse", qdtype=QDType.INT8, symmetric=True)
    assert 2.5 < hi < 6.0 and lo == -hi


def test_one_sided_relu_data_affine():
    x = np.maximum(np.random.default_rng(6).standard_normal(N), 0).astype(np.float32)
    stats = stats_of(histogram_of(x))
    for method in METHODS:
        lo, hi = compute_range(stats, method, qdtype=QDType.UINT8, symmetric=False, percentile=99.99)
        assert 0.0 <= lo < 1e-3, method
        assert 2.5 < hi <= float(x.max()), method
    lo, hi = compute_range(stats, "entropy", qdtype=QDType.UINT8, symmetric=False)
    assert hi < float(x.max()) - 0.3  # clips the tail


def test_degenerate_ranges_are_safe_and_named(caplog):
    caplog.set_level(logging.WARNING)
    zeros = stats_of(histogram_of(np.zeros(100, np.float32)), "dead_relu")
    for method in METHODS:
        assert compute_range(zeros, method, qdtype=QDType.INT8, symmetric=True) == (-1.0, 1.0)
    assert "dead_relu" in caplog.text
    constant = stats_of(histogram_of(np.full(10, -3.0, np.float32)), "bias_like")
    assert compute_range(constant, "entropy", qdtype=QDType.INT8, symmetric=False) == (-3.0, 0.0)
    sparse = np.zeros(1_000_000, np.float32)
    sparse[:3] = [1.0, 2.0, 4.0]  # percentile 99.9 of mostly zeros is 0: fall back to min/max
    lo, hi = compute_range(stats_of(histogram_of(sparse), "sparse"), "percentile", qdtype=QDType.UINT8,
                           symmetric=False, percentile=99.9)
    assert (lo, hi) == (0.0, 4.0)
    per_channel = TensorStats("w", np.array([-1.0, 2.0, 0.0]), np.array([1.0, 2.0, 0.0]), axis=0)
    lo, hi = compute_range(per_channel, "minmax", qdtype=QDType.INT8, symmetric=True)
    np.testing.assert_array_equal(lo, [-1.0, 0.0, -1.0])
    np.testing.assert_array_equal(hi, [1.0, 2.0, 1.0])
    assert all(np.isfinite(v).all() for v in (lo, hi))
    empty = TensorStats("never_seen", None, None)
    assert compute_range(empty, "minmax", qdtype=QDType.INT8, symmetric=False) == (-1.0, 1.0)


def test_bad_requests():
    minmax_only = TensorStats("t", -1.0, 1.0)
    with pytest.raises(OptionError, match="needs a histogram"):
        compute_range(minmax_only, "entropy", qdtype=QDType.INT8, symmetric=True)
    with pytest.raises(UnknownNameError, match="known: entropy, minmax, mse, percentile"):
        compute_range(minmax_only, "kl", qdtype=QDType.INT8, symmetric=True)
    with pytest.raises(OptionError, match="percentile"):
        compute_range(minmax_only, "percentile", qdtype=QDType.INT8, symmetric=True, percentile=0)
