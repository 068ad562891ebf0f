"""Calibration samples: read from files or Python objects, validated against the model, streamed.

Sources (``CalibrationData.from_source``):

* a ``.npz`` path (read with ``allow_pickle=False``, like every file): one array per model input, axis
  0 indexing samples. An array whose rank equals the input's rank gives sample ``i = arr[i:i+1]``; one
  with an extra leading axis gives ``arr[i]``. The archive is read one sample at a time, uncompressed
  (``np.savez``) or compressed (``np.savez_compressed``, decompressed as it streams, once per pass), so
  memory does not grow with the number of samples. A mapping ``{input: array}`` is an in-memory ``.npz``.
* a folder: its ``*.npz`` files, sorted by name, one sample each (arrays fed as stored), read lazily.
* a list or tuple of ``{input: array}`` dicts.
* any other iterable of dicts (generator, iterator, re-iterable object), or an ONNX Runtime
  ``CalibrationDataReader`` (``get_next()`` returns a dict, then None; ``rewind()``, if it has one, is
  called before every pass). Generators, iterators and readers without ``rewind()`` are *one-shot*: a
  second pass raises ``CalibrationDataError``. Only the held-out samples are kept in memory.

``limit`` caps the number of calibration samples; ``holdout`` samples are taken *in addition* and kept in
memory, never calibrated on. Sources of known length (files, mappings, lists) hold out ``holdout`` samples
**spread evenly** over their first ``limit + holdout`` (every k-th, the last included) and read and validate
them in ``from_source``: data files are often ordered by source, and the last quarter of a file may hold one
kind of input only (a detector's calibration photos without people last: verification would judge class
scores that are all near zero). Streams hold out their **last** ``holdout`` samples, known once a pass has
ended (``holdout_samples`` before that reads a re-iterable stream once, and raises for a one-shot stream).

Validation, each failure a one-line ``CalibrationDataError`` naming the input and the sample index:
unknown or missing inputs (with the expected names), rank, dtype (float64 → float32 and other float →
float casts are made, with a debug log; integer data for float inputs is refused, as are lossy integer
casts), static dimensions (symbolic dimensions may vary from sample to sample), NaN/Inf, an empty set.
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx_ir as ir

from onnxq.calibration import npz
from onnxq.errors import CalibrationDataError

logger = logging.getLogger(__name__)

Sample = dict[str, np.ndarray]


@dataclass(frozen=True)
class _Input:
    name: str
    dtype: np.dtype | None
    dims: tuple[int | None, ...] | None  # None: unknown rank; None dim: symbolic or unknown


class _Validator:
    """Checks one raw sample against the model's inputs and returns it as contiguous numpy arrays."""

    def __init__(self, model: ir.Model):
        initializers = set(model.graph.initializers)
        self.required: dict[str, _Input] = {}
        self.optional: dict[str, _Input] = {}
        for value in model.graph.inputs:
            dims = None
            if value.shape is not None:
                dims = tuple(d if isinstance(d, int) else None for d in value.shape)
            dtype = value.dtype.numpy() if value.dtype is not None else None
            target = self.optional if value.name in initializers else self.required
            target[value.name] = _Input(value.name, dtype, dims)
        self.known = {**self.required, **self.optional}

    def expected(self) -> str:
        return ", ".join(self.required) or "(none)"

    def check_names(self, names: Iterable[str], where: str) -> None:
        names = list(names)
        for name in names:
            if name not in self.known:
                raise CalibrationDataError(
                    f"{where}: unknown input '{name}'; the model's inputs: {self.expected()}")
        for name in self.required:
            if name not in names:
                raise CalibrationDataError(
                    f"{where}: missing input '{name}'; the model's inputs: {self.expected()}")

    def __call__(self, raw: object, where: str) -> Sample:
        if not isinstance(raw, Mapping):
            raise CalibrationDataError(
                f"{where} is a {type(raw).__name__}, expected a dict {{input name: array}}")
        self.check_names(raw, where)
        return {name: self._array(self.known[name], value, where) for name, value in raw.items()}

    def _array(self, spec: _Input, value: object, where: str) -> np.ndarray:
        try:
            array = np.asarray(value)
        except Exception as exc:  # noqa: BLE001 - arbitrary user objects
            raise CalibrationDataError(f"{where}: input '{spec.name}' is not an array ({exc})") from None
        if array.dtype.hasobject:
            raise CalibrationDataError(f"{where}: input '{spec.name}' holds Python objects, not numbers")
        if spec.dims is not None:
            if array.ndim != len(spec.dims):
                raise CalibrationDataError(
                    f"{where}: input '{spec.name}' has rank {array.ndim} (shape {list(array.shape)}), "
                    f"the model expects rank {len(spec.dims)} ({_describe(spec.dims)})"
                )
            for axis, (got, want) in enumerate(zip(array.shape, spec.dims, strict=True)):
                if want is not None and got != want:
                    raise CalibrationDataError(
                        f"{where}: input '{spec.name}' has shape {list(array.shape)}, the model expects "
                        f"{_describe(spec.dims)} (axis {axis} must be {want})"
                    )
        array = self._cast(spec, array, where)
        if array.dtype.kind in "fc" and not np.all(np.isfinite(array)):
            bad = int(array.size - np.count_nonzero(np.isfinite(array)))
            raise CalibrationDataError(f"{where}: input '{spec.name}' contains {bad} NaN/Inf values")
        return np.ascontiguousarray(array)

    @staticmethod
    def _cast(spec: _Input, array: np.ndarray, where: str) -> np.ndarray:
        want = spec.dtype
        if want is None or array.dtype == want:
            return array
        if want.kind == "f" and array.dtype.kind == "f":
            logger.debug("%s: input '%s': casting %s to %s", where, spec.name, array.dtype, want)
            return array.astype(want)
        if want.kind in "iu" and array.dtype.kind in "iub":
            cast = array.astype(want)
            if np.array_equal(cast, array):
                logger.debug("%s: input '%s': casting %s to %s", where, spec.name, array.dtype, want)
                return cast
        hint = " (convert and normalise it the way the model expects)" if want.kind == "f" else ""
        raise CalibrationDataError(
            f"{where}: input '{spec.name}' holds {array.dtype} data, the model expects {want}{hint}"
        )


def _describe(dims: tuple[int | None, ...]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


class _Source:
    """Raw samples in order, as ``(sample, where)``. ``length`` is None for streams."""

    length: int | None = None
    reiterable = True

    def read(self, start: int, stop: int | None) -> Iterator[tuple[object, str]]:
        raise NotImplementedError


class _ArraysSource(_Source):
    """An .npz file or an in-memory mapping: one stacked array per input."""

    def __init__(self, opener: Callable[[], Mapping[str, np.ndarray]], shapes: Mapping[str, tuple[int, ...]],
                 validator: _Validator, label: str):
        self.opener, self.label = opener, label
        validator.check_names(shapes, label)
        self.stacked: dict[str, bool] = {}
        counts = {}
        for name, shape in shapes.items():
            dims = validator.known[name].dims
            rank = len(shape)
            if dims is None or rank == len(dims):
                self.stacked[name] = False
            elif rank == len(dims) + 1:
                self.stacked[name] = True
            else:
                raise CalibrationDataError(
                    f"{label}: input '{name}' has rank {rank} (shape {list(shape)}); the model expects rank "
                    f"{len(dims)} ({_describe(dims)}): give rank {len(dims)} (samples of batch 1 along "
                    f"axis 0) or rank {len(dims) + 1} (an extra leading sample axis)"
                )
            counts[name] = shape[0] if rank else 1
        if len(set(counts.values())) > 1:
            detail = ", ".join(f"'{n}' has {c}" for n, c in counts.items())
            raise CalibrationDataError(f"{label}: inputs hold different numbers of samples ({detail})")
        self.length = next(iter(counts.values()), 0)

    def read(self, start: int, stop: int | None) -> Iterator[tuple[object, str]]:
        stop = self.length if stop is None else min(stop, self.length)
        if start >= stop:
            return
        arrays = {name: array if isinstance(array, npz.SampleReader) else np.asarray(array)
                  for name, array in self.opener().items() if name in self.stacked}
        try:
            for i in range(start, stop):
                sample = {n: (a[i] if self.stacked[n] else a[i:i + 1]) for n, a in arrays.items()}
                yield sample, f"{self.label}, sample {i}"
        finally:  # a compressed member's stream ends with the pass
            for array in arrays.values():
                if isinstance(array, npz.SampleReader):
                    array.close()


class _FolderSource(_Source):
    def __init__(self, folder: Path):
        self.files = sorted(p for p in folder.iterdir() if p.suffix == ".npz" and p.is_file())
        self.length = len(self.files)

    def read(self, start: int, stop: int | None) -> Iterator[tuple[object, str]]:
        for i, path in enumerate(self.files[start:stop], start):
            with npz.open_npz(path) as archive:
                yield npz.load_members(archive, path), f"calibration sample {i} ('{path.name}')"


class _SequenceSource(_Source):
    def __init__(self, items: Sequence):
        self.items = items
        self.length = len(items)

    def read(self, start: int, stop: int | None) -> Iterator[tuple[object, str]]:
        for i in range(start, self.length if stop is None else min(stop, self.length)):
            yield self.items[i], f"calibration sample {i}"


class _StreamSource(_Source):
    """Generators, iterators, re-iterable objects and ORT ``CalibrationDataReader``s."""

    def __init__(self, source: object):
        self.source = source
        self.reader = callable(getattr(source, "get_next", None))
        if self.reader:
            self.reiterable = callable(getattr(source, "rewind", None))
        else:
            self.reiterable = iter(source) is not source  # type: ignore[call-overload]
        self.passes = 0

    def read(self, start: int, stop: int | None) -> Iterator[tuple[object, str]]:
        if self.passes and not self.reiterable:
            kind = "CalibrationDataReader without rewind()" if self.reader else type(self.source).__name__
            raise CalibrationDataError(
                f"the calibration source (a one-shot {kind}) was already read once; pass a list, a file, "
                "a re-iterable object or a reader with rewind() to iterate it again"
            )
        self.passes += 1
        for i, item in enumerate(itertools.islice(self._items(), start, stop), start):
            yield item, f"calibration sample {i}"

    def _items(self) -> Iterator[object]:
        if not self.reader:
            yield from self.source  # type: ignore[misc]
            return
        if self.reiterable:
            try:
                self.source.rewind()  # type: ignore[attr-defined]
            except NotImplementedError:
                if self.passes > 1:
                    raise CalibrationDataError(
                        "the CalibrationDataReader's rewind() is not implemented") from None
        while (item := self.source.get_next()) is not None:  # type: ignore[attr-defined]
            yield item


def _make_source(source: object, validator: _Validator) -> _Source:
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            return _FolderSource(path)
        if not path.exists():
            raise CalibrationDataError(f"calibration data '{path}' does not exist")
        if not zipfile.is_zipfile(path):
            raise CalibrationDataError(
                f"calibration data '{path}' is not an .npz archive or a folder of them")
        shapes = npz.header_shapes(path)

        def opener() -> Mapping[str, np.ndarray]:
            mapped = npz.lazy_members(path)
            if mapped is not None:
                return mapped
            with npz.open_npz(path) as archive:
                return npz.load_members(archive, path)

        return _ArraysSource(opener, shapes, validator, f"'{path}'")
    if callable(getattr(source, "get_next", None)):
        return _StreamSource(source)
    if isinstance(source, Mapping):
        arrays = {k: np.asarray(v) for k, v in source.items()}
        shapes = {k: v.shape for k, v in arrays.items()}
        return _ArraysSource(lambda: arrays, shapes, validator, "calibration arrays")
    if isinstance(source, (list, tuple)):
        return _SequenceSource(source)
    if isinstance(source, Iterable):
        return _StreamSource(source)
    raise CalibrationDataError(
        f"unsupported calibration source {type(source).__name__}; give an .npz path, a folder of .npz, an "
        "iterable of {input: array} dicts or an ONNX Runtime CalibrationDataReader"
    )


class CalibrationData:
    """Validated calibration samples; see the module docstring for sources, ``limit`` and ``holdout``."""

    def __init__(self, source: _Source, validator: _Validator, *, limit: int | None, holdout: int | None):
        if limit is not None and limit < 1:
            raise CalibrationDataError(f"limit must be >= 1, got {limit}")
        if holdout is None:
            holdout = auto_holdout(source.length, limit)
        if holdout < 0:
            raise CalibrationDataError(f"holdout must be >= 0, got {holdout}")
        self._source, self._validate = source, validator
        self._take = None if limit is None else limit + holdout
        self._holdout_count = holdout
        self._holdout: list[Sample] | None = None
        self.num_samples: int | None = None
        if source.length is not None:
            used = source.length if self._take is None else min(source.length, self._take)
            self.num_samples = used - holdout
            if source.length == 0:
                raise CalibrationDataError("the calibration set is empty: the source holds no samples")
            if self.num_samples < 1:
                raise CalibrationDataError(
                    f"the calibration set is empty: the source holds {source.length} samples and "
                    f"holdout={holdout} keeps {used} of them back"
                )
            self._held = frozenset(spread_indices(used, holdout))
            self._used = used
            # one pass, each kept sample copied (``_owned``) before the next is read: a sample of an array
            # in memory (a mapping, an archive loaded whole) is a view of all of it (PP-OCR det's 8 held-out
            # views once held its whole decompressed array: 1.7 GiB)
            held = (pair for index, pair in enumerate(source.read(0, used)) if index in self._held)
            self._holdout = [_owned(self._validate(raw, where)) for raw, where in held]
        elif holdout == 0:
            self._holdout = []

    @classmethod
    def from_source(
        cls, source: object, model: ir.Model, *, limit: int | None = None, holdout: int | None = 0
    ) -> CalibrationData:
        """Wrap ``source`` (see the module docstring) checked against ``model``'s inputs."""
        validator = _Validator(model)
        return cls(_make_source(source, validator), validator, limit=limit, holdout=holdout)

    @property
    def reiterable(self) -> bool:
        return self._source.reiterable

    @property
    def holdout_samples(self) -> list[Sample]:
        """The held-out samples (never yielded by ``__iter__``)."""
        if self._holdout is None:
            if not self._source.reiterable:
                raise CalibrationDataError(
                    "the held-out samples of a one-shot source (generator, iterator, reader without "
                    "rewind()) are its last samples, known only once the calibration samples were iterated "
                    "to the end"
                )
            logger.info("reading the calibration stream once to find its last %d samples",
                        self._holdout_count)
            for _ in self:
                pass
        return self._holdout or []

    def __iter__(self) -> Iterator[Sample]:
        if self._source.length is not None:
            for index, (raw, where) in enumerate(self._source.read(0, self._used)):
                if index not in self._held:
                    yield self._validate(raw, where)
            return
        yield from self._iter_stream()

    def _iter_stream(self) -> Iterator[Sample]:
        """Stream with a delay line of ``holdout`` samples: what is left in it at the end is held out."""
        delay: collections.deque[Sample] = collections.deque()
        yielded = 0
        for raw, where in self._source.read(0, self._take):
            sample = self._validate(raw, where)
            delay.append(_owned(sample) if self._holdout_count else sample)
            if len(delay) > self._holdout_count:
                yielded += 1
                yield delay.popleft()
        if yielded == 0:
            raise CalibrationDataError(
                f"the calibration set is empty: the source gave {len(delay)} samples and "
                f"holdout={self._holdout_count} keeps them all back"
            )
        self._holdout, self.num_samples = list(delay), yielded


def spread_indices(total: int, count: int) -> list[int]:
    """``count`` indices spread evenly over ``range(total)``, the last one included."""
    return [((k + 1) * total) // count - 1 for k in range(count)] if count else []


def auto_holdout(length: int | None, limit: int | None) -> int:
    """Held-back samples when the caller does not say: a quarter of the set, at most 16, at least 1 when
    there are two or more samples; 8 for streams of unknown length."""
    if length is None:
        return 8
    if limit is not None:
        length = min(length, limit + min(16, limit // 3))
    return min(16, length // 4) if length >= 4 else (1 if length >= 2 else 0)


def _owned(sample: Sample) -> Sample:
    """Copies that do not keep a whole stacked array alive through a view."""
    return {name: np.array(array, copy=True) for name, array in sample.items()}
