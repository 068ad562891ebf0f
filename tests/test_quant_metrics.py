"""Verification metrics: relative L2 per output, judged per scale group where an output mixes scales."""

from __future__ import annotations

import numpy as np

from onnxq.quant import metrics


def _yolo_like(rng, samples=4, anchors=200):
    """[1, 4 + 18, anchors]: box coordinates in pixels (0..320) concatenated with class scores (0..1)."""
    return [np.concatenate([rng.uniform(0, 320, (1, 4, anchors)), rng.uniform(0, 1, (1, 18, anchors))], axis=1)
            for _ in range(samples)]


def test_damaged_scores_next_to_boxes_are_seen():
    rng = np.random.default_rng(0)
    reference = _yolo_like(rng)
    damaged = [np.concatenate([r[:, :4], np.round(r[:, 4:] * 4) / 4], axis=1) for r in reference]  # 2-bit scores
    plain = metrics.relative_l2(np.stack(reference), np.stack(damaged))
    assert plain < 0.01  # what one relative L2 over the whole output says
    error = metrics.output_errors([{"y": r} for r in reference], [{"y": d} for d in damaged])["y"]
    expected = metrics.relative_l2(np.stack([r[:, 4:] for r in reference]), np.stack([d[:, 4:] for d in damaged]))
    assert abs(error - expected) < 1e-9 and error > 0.1


def test_one_scale_outputs_keep_their_plain_error():
    rng = np.random.default_rng(1)
    for shape in [(1, 1000), (1, 16, 384), (1, 1, 32, 32)]:
        reference = [rng.standard_normal(shape) for _ in range(4)]
        noisy = [r + 0.05 * rng.standard_normal(shape) for r in reference]
        plain = metrics.relative_l2(np.stack(reference), np.stack(noisy))
        assert metrics.output_errors([{"y": r} for r in reference], [{"y": n} for n in noisy])["y"] == plain


def test_small_groups_and_varying_shapes_do_not_count_alone():
    rng = np.random.default_rng(2)
    # one near-silent channel among 32 (3 %): its relative error is huge and irrelevant
    reference = [np.concatenate([rng.standard_normal((1, 31, 50)), 1e-6 * np.ones((1, 1, 50))], axis=1)
                 for _ in range(4)]
    actual = [np.concatenate([r[:, :31], np.zeros((1, 1, 50))], axis=1) for r in reference]
    assert metrics.output_errors([{"y": r} for r in reference], [{"y": a} for a in actual])["y"] < 1e-5
    widths = [np.ones((1, 2, w)) for w in (10, 12)]
    assert metrics.mixed_scale_error(widths, widths) == 0.0


def test_scattered_quiet_slices_are_not_a_separate_quantity():
    """Softmax classes that never fire are quiet but scattered over the class axis: not a concatenation."""
    rng = np.random.default_rng(3)
    loud = rng.permutation(100)[:30]
    scale = np.full(100, 1e-4)
    scale[loud] = 1.0
    reference = [rng.uniform(0, 1, (1, 20, 100)) * scale for _ in range(4)]
    actual = [np.round(r * 255) / 255 for r in reference]  # 8-bit: quiet classes become 0
    plain = metrics.relative_l2(np.stack(reference), np.stack(actual))
    assert metrics.output_errors([{"y": r} for r in reference], [{"y": a} for a in actual])["y"] == plain


def test_errors_are_summed_a_sample_at_a_time_and_leave_the_outputs_alone():
    """Eight PP-OCR det probability maps (832x640): stacking them in float64 took ~100 MiB of temporaries, the
    fall-back search's peak; per-sample sums keep to a few copies of one sample. Same value as stacked."""
    import tracemalloc

    rng = np.random.default_rng(4)
    reference = [rng.random((1, 1, 832, 640), dtype=np.float32) for _ in range(8)]
    actual = [(r + rng.normal(0, 0.01, r.shape)).astype(np.float32) for r in reference]
    kept = [a.copy() for a in actual]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        error = metrics.output_errors([{"y": r} for r in reference], [{"y": a} for a in actual])["y"]
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert peak < 24 * 2**20, f"{peak / 2**20:.1f} MiB of temporaries"
    assert abs(error - metrics.relative_l2(np.stack(reference), np.stack(actual))) < 1e-12
    assert all(np.array_equal(a, k) for a, k in zip(actual, kept))
