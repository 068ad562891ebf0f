"""Reading calibration ``.npz`` archives safely (``allow_pickle=False``) and, where they are uncompressed,
one sample at a time, so a calibration pass holds one sample whatever the number of samples."""

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


class NpyMember:
    """One array of an uncompressed .npz, read sample by sample (``a[i]``, ``a[i:i+1]``) with plain file
    reads: neither the array nor a memory map of it stays resident, so a calibration pass holds one sample
    at a time whatever the number of samples."""

    def __init__(self, path: Path, offset: int, shape: tuple[int, ...], dtype: np.dtype):
        self.path, self.offset, self.shape, self.dtype = path, offset, shape, dtype
        self.sample_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def _read(self, start: int, count: int) -> np.ndarray:
        with open(self.path, "rb") as handle:
            handle.seek(self.offset + start * self.sample_bytes)
            data = handle.read(count * self.sample_bytes)
        if len(data) != count * self.sample_bytes:
            raise CalibrationDataError(f"'{self.path}' is truncated")
        return np.frombuffer(data, dtype=self.dtype).reshape((count, *self.shape[1:])).copy()

    def __getitem__(self, index):
        if isinstance(index, slice):
            start, stop, step = index.indices(self.shape[0])
            if step != 1:
                raise IndexError("only contiguous sample slices")
            return self._read(start, max(stop - start, 0))
        return self._read(int(index), 1)[0]


def lazy_members(path: Path) -> dict[str, NpyMember] | None:
    """Lazy members of an uncompressed .npz (``np.savez``), or None for a compressed one
    (``np.savez_compressed``), which is decompressed whole."""
    arrays = {}
    try:
        with zipfile.ZipFile(path) as archive, open(path, "rb") as raw:
            for info in archive.infolist():
                if info.compress_type != zipfile.ZIP_STORED:
                    return None
                raw.seek(info.header_offset)
                local = raw.read(30)
                if local[:4] != b"PK\x03\x04":
                    return None
                name_length = int.from_bytes(local[26:28], "little")
                extra_length = int.from_bytes(local[28:30], "little")
                raw.seek(info.header_offset + 30 + name_length + extra_length)
                version = np.lib.format.read_magic(raw)
                reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                    np.lib.format.read_array_header_2_0
                shape, fortran, dtype = reader(raw)
                if dtype.hasobject or fortran or len(shape) == 0:
                    return None  # the whole-file loader handles (or refuses) these
                name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
                arrays[name] = NpyMember(path, raw.tell(), tuple(shape), dtype)
    except (OSError, ValueError, zipfile.BadZipFile):
        return None
    return arrays


def header_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Shapes of the members of an .npz, read from the .npy headers without loading data."""
    shapes = {}
    with zipfile.ZipFile(path) as archive:
        for member in archive.namelist():
            name = member[:-4] if member.endswith(".npy") else member
            with archive.open(member) as fp:
                try:
                    version = np.lib.format.read_magic(fp)
                    reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                        np.lib.format.read_array_header_2_0
                    shape, _, dtype = reader(fp)
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
