"""Reading calibration ``.npz`` archives safely (``allow_pickle=False``) one sample at a time (from the file
where uncompressed, through a decompressing stream where compressed), so a calibration pass holds one
sample whatever the number of samples."""

from __future__ import annotations

import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from onnxq.errors import CalibrationDataError


def open_npz(path: Path):
    if not zipfile.is_zipfile(path):
        raise CalibrationDataError(f"'{path}' is not an .npz archive (not a zip file)")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise CalibrationDataError(f"cannot read '{path}' as .npz: {exc}") from None


def load_members(npz: Mapping[str, np.ndarray], path: Path) -> dict[str, np.ndarray]:
    try:
        return {name: npz[name] for name in npz}
    except ValueError as exc:  # object arrays with allow_pickle=False
        raise CalibrationDataError(f"'{path}' holds pickled Python objects, refused ({exc})") from None
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise CalibrationDataError(f"'{path}' is corrupted: {exc}") from None


class SampleReader:
    """An archive member indexed like the array along its sample axis (``a[i]``, ``a[i:i+1]``), each index
    read when asked (``_read(start, count)``)."""

    def __init__(self, path: Path, shape: tuple[int, ...], dtype: np.dtype):
        self.path, self.shape, self.dtype = path, shape, dtype
        self.sample_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def _read(self, start: int, count: int) -> np.ndarray:
        raise NotImplementedError

    def __getitem__(self, index):
        if isinstance(index, slice):
            start, stop, step = index.indices(self.shape[0])
            if step != 1:
                raise IndexError("only contiguous sample slices")
            return self._read(start, max(stop - start, 0))
        return self._read(int(index), 1)[0]

    def close(self) -> None:
        """End what a pass holds open (nothing, unless overridden)."""


class NpyMember(SampleReader):
    """One array of an uncompressed .npz, read sample by sample with plain file reads: neither the array nor
    a memory map of it stays resident, so a calibration pass holds one sample at a time whatever the number
    of samples."""

    def __init__(self, path: Path, offset: int, shape: tuple[int, ...], dtype: np.dtype):
        super().__init__(path, shape, dtype)
        self.offset = offset

    def _read(self, start: int, count: int) -> np.ndarray:
        with open(self.path, "rb") as handle:
            handle.seek(self.offset + start * self.sample_bytes)
            data = handle.read(count * self.sample_bytes)
        if len(data) != count * self.sample_bytes:
            raise CalibrationDataError(f"'{self.path}' is truncated")
        return np.frombuffer(data, dtype=self.dtype).reshape((count, *self.shape[1:])).copy()


class ZipStreamMember(SampleReader):
    """One array of a compressed .npz (``np.savez_compressed``), decompressed as it is read: samples come in
    order (a calibration pass reads ``a[0]``, ``a[1]``, ...), so one open stream serves a whole pass and only
    the sample asked for is in memory. Reading backwards starts the stream again. ``close`` ends it."""

    def __init__(self, path: Path, member: str, shape: tuple[int, ...], dtype: np.dtype):
        super().__init__(path, shape, dtype)
        self.member = member
        self._archive = self._stream = None
        self._next = 0  # index of the sample the stream is at

    def _rewind(self) -> None:
        self.close()
        self._archive = zipfile.ZipFile(self.path)
        self._stream = self._archive.open(self.member)
        _header(self._stream)  # to the data
        self._next = 0

    def _read(self, start: int, count: int) -> np.ndarray:
        if self._stream is None or start < self._next:
            self._rewind()
        try:
            while self._next < start:  # skip forward, a sample at a time
                self._exact(self.sample_bytes)
                self._next += 1
            data = self._exact(count * self.sample_bytes)
        except (OSError, EOFError, zipfile.BadZipFile) as exc:
            self.close()
            raise CalibrationDataError(f"'{self.path}' is corrupted: {exc}") from None
        self._next = start + count
        return np.frombuffer(data, dtype=self.dtype).reshape((count, *self.shape[1:]))  # writable: no copy

    def _exact(self, size: int) -> bytearray:
        data, filled = bytearray(size), 0
        view = memoryview(data)
        while filled < size:
            got = self._stream.readinto(view[filled:])
            if not got:
                raise EOFError(f"member '{self.member}' ends early")
            filled += got
        view.release()
        return data

    def close(self) -> None:
        for handle in (self._stream, self._archive):
            if handle is not None:
                handle.close()
        self._archive = self._stream = None


def lazy_members(path: Path) -> dict[str, NpyMember | ZipStreamMember] | None:
    """Members of an .npz read a sample at a time: straight from the file where stored uncompressed
    (``np.savez``), through a decompressing stream where compressed (``np.savez_compressed``). None where a
    member is neither plain nor C-ordered (the whole-file loader handles, or refuses, those)."""
    arrays = {}
    try:
        with zipfile.ZipFile(path) as archive, open(path, "rb") as raw:
            for info in archive.infolist():
                name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
                if info.compress_type != zipfile.ZIP_STORED:
                    with archive.open(info) as stream:
                        shape, fortran, dtype = _header(stream)
                    if dtype.hasobject or fortran or len(shape) == 0:
                        return None
                    arrays[name] = ZipStreamMember(path, info.filename, tuple(shape), dtype)
                    continue
                raw.seek(info.header_offset)
                local = raw.read(30)
                if local[:4] != b"PK\x03\x04":
                    return None
                name_length = int.from_bytes(local[26:28], "little")
                extra_length = int.from_bytes(local[28:30], "little")
                raw.seek(info.header_offset + 30 + name_length + extra_length)
                shape, fortran, dtype = _header(raw)
                if dtype.hasobject or fortran or len(shape) == 0:
                    return None
                arrays[name] = NpyMember(path, raw.tell(), tuple(shape), dtype)
    except (OSError, ValueError, zipfile.BadZipFile):
        return None
    return arrays


def _header(stream) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran order, dtype) from the .npy header at ``stream``'s position, leaving it at the data."""
    version = np.lib.format.read_magic(stream)
    reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    return reader(stream)


def header_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Shapes of the members of an .npz, read from the .npy headers without loading data."""
    shapes = {}
    with zipfile.ZipFile(path) as archive:
        for member in archive.namelist():
            name = member[:-4] if member.endswith(".npy") else member
            with archive.open(member) as fp:
                try:
                    shape, _, dtype = _header(fp)
                except ValueError as exc:
                    raise CalibrationDataError(
                        f"'{path}': member '{member}' is not a .npy array ({exc})") from None
            if dtype.hasobject:
                raise CalibrationDataError(
                    f"'{path}': array '{name}' holds pickled Python objects; "
                    "onnxq reads .npz with allow_pickle=False"
                )
            shapes[name] = tuple(shape)
    return shapes
