"""Fidelity metrics of a quantized model against FP32, shared by verification, `compare` and benchmarks.

relative L2 error  e = ||q − f||₂ / ||f||₂      SQNR = −20·log10(e) dB
top-1 agreement    fraction of samples whose argmax over the last axis is the same
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

SQNR_CAP_DB = 100.0


def relative_l2(reference: np.ndarray, actual: np.ndarray) -> float:
    reference = np.asarray(reference, np.float64).ravel()
    actual = np.asarray(actual, np.float64).ravel()
    if reference.shape != actual.shape or not np.all(np.isfinite(actual)):
        return float("inf")
    norm = float(np.linalg.norm(reference))
    diff = float(np.linalg.norm(actual - reference))
    if norm == 0.0:
        return 0.0 if diff == 0.0 else float("inf")
    return diff / norm


def sqnr_db(reference: np.ndarray, actual: np.ndarray) -> float:
    error = relative_l2(reference, actual)
    if error == 0.0:
        return SQNR_CAP_DB
    if not np.isfinite(error):
        return -SQNR_CAP_DB
    return float(min(SQNR_CAP_DB, -20.0 * np.log10(error)))


def stacked(samples: Sequence[Mapping[str, np.ndarray]], name: str) -> np.ndarray:
    return np.concatenate([np.asarray(s[name]).reshape(1, -1) if np.ndim(s[name]) == 0 else
                           np.asarray(s[name]).reshape(-1) for s in samples])


#: Slices of an output whose RMS differ by more than this are judged as separate groups (see below).
MIXED_SCALE_RATIO = 10.0
#: A group must hold at least this share of the slices to be judged on its own.
MIXED_SCALE_MIN_SHARE = 0.1


def output_errors(
    reference: Sequence[Mapping[str, np.ndarray]], actual: Sequence[Mapping[str, np.ndarray]]
) -> dict[str, float]:
    """Relative L2 error per output over all samples (float outputs only), the worst of its scale groups.

    Both are summed a sample at a time: stacking the samples in float64 cost PP-OCR det's verification
    (8 probability maps of 832x640) about 100 MiB of temporaries, its fall-back search's peak."""
    errors = {}
    for name in reference[0]:
        if not np.issubdtype(np.asarray(reference[0][name]).dtype, np.floating):
            continue
        errors[name] = _streamed_relative_l2([r[name] for r in reference], [a[name] for a in actual])
        if np.isfinite(errors[name]) and np.ndim(reference[0][name]) >= 2:
            errors[name] = max(errors[name], mixed_scale_error([r[name] for r in reference],
                                                               [a[name] for a in actual]))
    return errors


def _streamed_relative_l2(reference: Sequence[np.ndarray], actual: Sequence[np.ndarray]) -> float:
    """``relative_l2`` of the samples concatenated, from per-sample sums of squares."""
    if sum(np.size(r) for r in reference) != sum(np.size(a) for a in actual) or len(reference) != len(actual):
        return float("inf")
    reference_sq = error_sq = 0.0
    for ref, got in zip(reference, actual, strict=True):
        ref, got = np.asarray(ref, np.float64).ravel(), np.asarray(got).ravel()
        if ref.shape != got.shape or not np.all(np.isfinite(got)):
            return float("inf")
        reference_sq += float(np.dot(ref, ref))
        difference = got.astype(np.float64) - ref  # a new array: the caller's outputs stay as they are
        error_sq += float(np.dot(difference, difference))
    return _ratio(error_sq, reference_sq)


def _ratio(error_sq: float, reference_sq: float) -> float:
    if reference_sq == 0.0:
        return 0.0 if error_sq == 0.0 else float("inf")
    return float(np.sqrt(error_sq / reference_sq))


def mixed_scale_error(reference: Sequence[np.ndarray], actual: Sequence[np.ndarray]) -> float:
    """Worst relative L2 of the scale groups of an output that concatenates quantities of different scales.

    A detector head's [N, 4 + classes, anchors] output puts box coordinates (0..640) next to class scores
    (0..1): one relative L2 over it sees only the boxes, however badly the scores are damaged. Along axis 1
    and the last axis, slices are sorted by RMS and split where neighbours differ more than
    ``MIXED_SCALE_RATIO``; when every group is one contiguous block of the axis (what a Concat makes), each
    group holding at least ``MIXED_SCALE_MIN_SHARE`` of the slices is judged on its own. Outputs of one
    scale (logits, embeddings, maps) have no such split and keep their plain error. Per-slice sums of
    squares are gathered a sample at a time.
    """
    if len({np.shape(r) for r in reference}) != 1:
        return 0.0  # shapes vary with the samples (sequence length, image width): no common slices
    shape = np.shape(reference[0])  # [batch, ...]
    worst = 0.0
    for axis in sorted({1, len(shape) - 1}):
        slices = shape[axis]
        if slices < 2:
            continue
        reference_sq, error_sq = np.zeros(slices), np.zeros(slices)
        for ref, got in zip(reference, actual, strict=True):
            ref = np.moveaxis(np.asarray(ref, np.float64), axis, 0).reshape(slices, -1)
            got = np.moveaxis(np.asarray(got, np.float64), axis, 0).reshape(slices, -1) - ref
            reference_sq += np.einsum("ij,ij->i", ref, ref)
            error_sq += np.einsum("ij,ij->i", got, got)
        rms = np.sqrt(reference_sq / (len(reference) * int(np.prod(shape)) // slices))
        order = np.argsort(rms)
        sorted_rms = rms[order]
        cuts = [i + 1 for i in range(len(order) - 1)
                if sorted_rms[i + 1] > MIXED_SCALE_RATIO * max(sorted_rms[i], np.finfo(np.float64).tiny)]
        groups = np.split(order, cuts) if cuts else []
        # a concatenation puts each quantity in one block of the axis; scattered quiet slices (softmax
        # classes that never fire, a transformer's few loud hidden dims) are not separate quantities
        if not all(group.max() - group.min() + 1 == len(group) for group in groups):
            continue
        for group in groups:
            if len(group) >= MIXED_SCALE_MIN_SHARE * len(order) and sorted_rms[-1] > 0:
                worst = max(worst, _ratio(float(error_sq[group].sum()), float(reference_sq[group].sum())))
    return worst


def top1_agreement(reference: Sequence[np.ndarray], actual: Sequence[np.ndarray]) -> float:
    """Argmax agreement over the last axis, over every leading index of every sample."""
    ref = np.concatenate([np.argmax(np.asarray(r), axis=-1).ravel() for r in reference])
    got = np.concatenate([np.argmax(np.asarray(a), axis=-1).ravel() for a in actual])
    return float(np.mean(ref == got)) if ref.size else 1.0
