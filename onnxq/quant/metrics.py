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


def output_errors(
    reference: Sequence[Mapping[str, np.ndarray]], actual: Sequence[Mapping[str, np.ndarray]]
) -> dict[str, float]:
    """Relative L2 error per output over all samples (float outputs only)."""
    errors = {}
    for name in reference[0]:
        if not np.issubdtype(np.asarray(reference[0][name]).dtype, np.floating):
            continue
        errors[name] = relative_l2(stacked(reference, name), stacked(actual, name))
    return errors


def top1_agreement(reference: Sequence[np.ndarray], actual: Sequence[np.ndarray]) -> float:
    """Argmax agreement over the last axis, over every leading index of every sample."""
    ref = np.concatenate([np.argmax(np.asarray(r), axis=-1).ravel() for r in reference])
    got = np.concatenate([np.argmax(np.asarray(a), axis=-1).ravel() for a in actual])
    return float(np.mean(ref == got)) if ref.size else 1.0
