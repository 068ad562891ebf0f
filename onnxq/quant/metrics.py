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
    """Relative L2 error per output over all samples (float outputs only), the worst of its scale groups."""
    errors = {}
    for name in reference[0]:
        if not np.issubdtype(np.asarray(reference[0][name]).dtype, np.floating):
            continue
        errors[name] = relative_l2(stacked(reference, name), stacked(actual, name))
        if np.isfinite(errors[name]) and np.ndim(reference[0][name]) >= 2:
            errors[name] = max(errors[name], mixed_scale_error([r[name] for r in reference],
                                                               [a[name] for a in actual]))
    return errors


def mixed_scale_error(reference: Sequence[np.ndarray], actual: Sequence[np.ndarray]) -> float:
    """Worst relative L2 of the scale groups of an output that concatenates quantities of different scales.

    A detector head's [N, 4 + classes, anchors] output puts box coordinates (0..640) next to class scores
    (0..1): one relative L2 over it sees only the boxes, however badly the scores are damaged. Along axis 1
    and the last axis, slices are sorted by RMS and split where neighbours differ more than
    ``MIXED_SCALE_RATIO``; when every group is one contiguous block of the axis (what a Concat makes), each
    group holding at least ``MIXED_SCALE_MIN_SHARE`` of the slices is judged on its own. Outputs of one
    scale (logits, embeddings, maps) have no such split and keep their plain error.
    """
    if len({np.shape(r) for r in reference}) != 1:
        return 0.0  # shapes vary with the samples (sequence length, image width): no common slices
    ref = np.stack([np.asarray(r, np.float64) for r in reference])  # [samples, batch, ...]
    got = np.stack([np.asarray(a, np.float64) for a in actual])
    worst = 0.0
    for axis in sorted({2, ref.ndim - 1}):
        if ref.shape[axis] < 2:
            continue
        moved_ref, moved_got = np.moveaxis(ref, axis, 0), np.moveaxis(got, axis, 0)
        rms = np.sqrt(np.mean(moved_ref.reshape(ref.shape[axis], -1) ** 2, axis=1))
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
                worst = max(worst, relative_l2(moved_ref[group], moved_got[group]))
    return worst


def top1_agreement(reference: Sequence[np.ndarray], actual: Sequence[np.ndarray]) -> float:
    """Argmax agreement over the last axis, over every leading index of every sample."""
    ref = np.concatenate([np.argmax(np.asarray(r), axis=-1).ravel() for r in reference])
    got = np.concatenate([np.argmax(np.asarray(a), axis=-1).ravel() for a in actual])
    return float(np.mean(ref == got)) if ref.size else 1.0
