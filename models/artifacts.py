"""Sample files of the zoo: how calibration and evaluation inputs are stored, read back and batched.

Layout, the same for every model:

* ``NAME.calib.npz``: one array per model input, named exactly like the input; axis 0 enumerates samples.
* ``NAME.eval.npz``: ``input:<name>`` arrays laid out the same way, plus ``label`` where the task has labels.

A stored array is ``[samples, *input shape without its batch axis]``. Most inputs have their batch axis
first, so the array *is* a batch. Some do not (silero-vad's recurrent state is ``[2, batch, 128]``) and some
have none (its sample rate, a scalar): the JSON record's ``batch_axis`` per input says which, and
``batches`` builds correct feeds from it, so no consumer has to know model quirks.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

Feeds = dict[str, np.ndarray]


def write_samples(path: str | os.PathLike, arrays: Mapping[str, np.ndarray]) -> None:
    """Write arrays compressed (document images are mostly background and shrink 10x or more).

    ``np.savez_compressed`` stamps every zip member with a fixed date, so equal arrays give equal files.
    """
    np.savez_compressed(path, **{key: np.ascontiguousarray(value) for key, value in arrays.items()})


def read_samples(path: str | os.PathLike) -> dict[str, np.ndarray]:
    with np.load(Path(path), allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def split_eval(arrays: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Split an eval file's arrays into model inputs (prefix removed) and labels (None when unlabelled)."""
    inputs = {key.split(":", 1)[1]: value for key, value in arrays.items() if key.startswith("input:")}
    return inputs, arrays.get("label")


def sample_count(arrays: Mapping[str, np.ndarray]) -> int:
    counts = {len(value) for value in arrays.values()}
    if len(counts) != 1:
        raise ValueError(f"sample arrays disagree on the number of samples: {sorted(counts)}")
    return counts.pop()


def batches(
    arrays: Mapping[str, np.ndarray],
    batch_axes: Mapping[str, int | None] | None = None,
    batch_size: int = 1,
) -> Iterator[Feeds]:
    """Yield model feeds of up to ``batch_size`` samples each, in order.

    ``batch_axes`` maps input name to its batch axis (default 0). An input without one (None) must hold the
    same value for every sample of a batch; that value is fed as is.
    """
    batch_axes = dict(batch_axes or {})
    total = sample_count(arrays)
    for start in range(0, total, batch_size):
        stop = min(start + batch_size, total)
        feeds: Feeds = {}
        for name, array in arrays.items():
            axis = batch_axes.get(name, 0)
            chunk = array[start:stop]
            if axis is None:
                if not all(np.array_equal(chunk[0], other) for other in chunk[1:]):
                    raise ValueError(f"input '{name}' has no batch axis but differs within a batch")
                feeds[name] = np.asarray(chunk[0])
            else:
                feeds[name] = np.moveaxis(chunk, 0, axis) if axis else chunk
        yield feeds


def stack_samples(samples: list[np.ndarray], batch_axis: int | None) -> np.ndarray:
    """Inverse of ``batches`` for one input: per-sample model inputs (batch of 1) to a stored array."""
    if batch_axis is None:
        return np.stack(samples)
    return np.concatenate([np.moveaxis(sample, batch_axis, 0) for sample in samples], axis=0)


def _sample_digests(arrays: Mapping[str, np.ndarray], batch_axes: Mapping[str, int | None]) -> list[str]:
    names = sorted(name for name in arrays if batch_axes.get(name, 0) is not None)
    digests = []
    for index in range(sample_count(arrays)):
        digest = hashlib.sha256()
        for name in names:
            digest.update(name.encode())
            digest.update(np.ascontiguousarray(arrays[name][index]).tobytes())
        digests.append(digest.hexdigest())
    return digests


def overlap(
    calib: Mapping[str, np.ndarray],
    evaluation: Mapping[str, np.ndarray],
    batch_axes: Mapping[str, int | None],
) -> int:
    """How many evaluation samples also occur, bit for bit, in the calibration set."""
    seen = set(_sample_digests(calib, batch_axes))
    return sum(digest in seen for digest in _sample_digests(evaluation, batch_axes))


def check_disjoint(
    calib: Mapping[str, np.ndarray],
    evaluation: Mapping[str, np.ndarray],
    batch_axes: Mapping[str, int | None],
) -> None:
    """Refuse to write sample sets that share a sample: calibrating on test data inflates every metric."""
    if set(calib) != set(evaluation):
        raise ValueError(
            f"calibration inputs {sorted(calib)} differ from evaluation inputs {sorted(evaluation)}"
        )
    shared = overlap(calib, evaluation, batch_axes)
    if shared:
        raise ValueError(f"{shared} evaluation samples also occur in the calibration set")
