"""Models handed to ONNX Runtime through files whose weights it memory-maps, instead of serialized bytes.

An ORT session made from bytes holds, while it loads, the bytes (which the Python wrapper keeps for the
session's life), ORT's parsed copy and its own tensors: up to three copies of the weights (MiniLM, 90 MB:
+280 MiB at peak, +130 MiB after). Made from a file whose weights live in an external data file, ORT maps
them and copies nothing but what it prepacks (MiniLM: +45 MiB at peak). So sessions of the quantizer
(calibration, FP32 reference, every verification round) read their models from a private temporary folder:

1. A tensor is written once per tensor object: clones (``ir.Model.clone``) share tensors, so after the FP32
   model (``add_base``), a quantized candidate writes only its new tensors.
2. Tensors under ``MIN_EXTERNAL_BYTES`` and 32/64-bit integers stay inline: ONNX shape inference, which
   ORT runs while loading, reads shape-like constants (Reshape shapes, Slice bounds, axes) and cannot read
   external data. Tensors of subgraphs and node attributes stay inline too.
3. The model's own tensors are never modified: the file is written from a clone (``external_view``).
4. A model written by ``model_file`` is deleted when its block ends (ORT has mapped what it needs; on
   Linux a mapped file outlives its name); the folder goes at ``close``.

The folder is on the system's temporary directory (``TMPDIR``); it holds the FP32 weights once, plus the
new weights of the model being verified. Its name carries the owning process id: a process killed before
``close`` (SIGKILL, OOM killer) leaves its folder behind, a full copy of the weights, so each new folder
first removes those of processes that no longer exist (``remove_stale_folders``).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import onnx_ir as ir

from onnxq import runtime_compat

logger = logging.getLogger(__name__)

#: Smaller tensors stay inline (shape inference may read them; mapping them saves nothing).
MIN_EXTERNAL_BYTES = 1024
#: Offsets of external tensors are multiples of this (page size: ORT maps them in place).
ALIGNMENT = 4096
_SHAPE_LIKE = frozenset({ir.DataType.INT32, ir.DataType.INT64, ir.DataType.UINT32, ir.DataType.UINT64,
                         ir.DataType.BOOL, ir.DataType.STRING})


def _externalizable(tensor: ir.TensorProtocol | None) -> bool:
    return tensor is not None and tensor.dtype not in _SHAPE_LIKE and tensor.nbytes >= MIN_EXTERNAL_BYTES


PREFIX = "onnxq-sessions-"


def remove_stale_folders(parent: Path | None = None) -> list[Path]:
    """Delete this user's session folders whose owning process (the id in the name) is gone; returns them."""
    parent = Path(parent or tempfile.gettempdir())
    removed = []
    for folder in parent.glob(f"{PREFIX}*-*"):
        pid = folder.name[len(PREFIX):].split("-", 1)[0]
        try:
            if not pid.isdigit() or folder.stat().st_uid != os.getuid() or _alive(int(pid)):
                continue
        except OSError:  # vanished meanwhile
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    if removed:
        logger.info("removed %d session folder(s) left by killed onnxq processes", len(removed))
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, someone else's
        return True
    return True


class SessionFiles:
    """A private folder of models for ONNX Runtime sessions; see the module docstring."""

    def __init__(self) -> None:
        remove_stale_folders()
        self.folder = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-"))
        self._written: dict[int, tuple[ir.TensorProtocol, ir.ExternalTensor]] = {}  # id -> (kept alive, ref)
        self._names = itertools.count()

    def __enter__(self) -> SessionFiles:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._written.clear()
        shutil.rmtree(self.folder, ignore_errors=True)

    def add_base(self, model: ir.Model) -> None:
        """Write ``model``'s weights now, once for every later model that shares them (its clones)."""
        tensors = [v.const_value for v in model.graph.initializers.values() if _externalizable(v.const_value)]
        data = self.folder / f"base-{next(self._names)}.data"
        for tensor, reference in zip(tensors, self._write_tensors(tensors, data), strict=True):
            self._written[id(tensor)] = (tensor, reference)

    def external_view(self, model: ir.Model, *, data_name: str | None = None) -> ir.Model:
        """A clone of ``model`` whose large tensors are references into this folder (new ones written to
        ``data_name``), at an IR version the installed ONNX Runtime loads."""
        view = model.clone()
        view.ir_version = min(view.ir_version, runtime_compat.target_ir_version())
        values = list(view.graph.initializers.values())
        fresh = [v for v in values
                 if _externalizable(v.const_value) and id(v.const_value) not in self._written]
        data = self.folder / (data_name or f"model-{next(self._names)}.data")
        references = dict(zip((id(v) for v in fresh),
                              self._write_tensors([v.const_value for v in fresh], data), strict=True))
        for value in values:
            known = self._written.get(id(value.const_value))
            reference = known[1] if known is not None else references.get(id(value))
            if reference is not None:
                value.const_value = reference
        return view

    @contextlib.contextmanager
    def model_file(self, model: ir.Model) -> Iterator[str]:
        """``model`` written in the folder (large tensors external); the path, for ``InferenceSession``.
        The files are deleted when the block ends."""
        path = self.write_model(model)
        try:
            yield path
        finally:
            for leftover in (Path(path), Path(path).with_suffix(".data")):
                with contextlib.suppress(OSError):  # Windows: still mapped; goes with the folder
                    leftover.unlink(missing_ok=True)

    def write_model(self, model: ir.Model) -> str:
        """``model`` written in the folder (large tensors external), kept until ``close``; the path. The
        caller may drop ``model`` before making sessions of it (the speed check holds no model then)."""
        stem = f"model-{next(self._names)}"
        path = self.folder / f"{stem}.onnx"
        path.write_bytes(ir.to_proto(self.external_view(model, data_name=f"{stem}.data")).SerializeToString())
        return str(path)

    def _write_tensors(self, tensors: list[ir.TensorProtocol], data: Path) -> list[ir.ExternalTensor]:
        references = []
        if not tensors:
            return references
        with open(data, "wb") as stream:
            for tensor in tensors:
                offset = (stream.tell() + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT
                stream.seek(offset)
                raw = tensor.tobytes()
                stream.write(raw)
                references.append(ir.ExternalTensor(
                    data.name, offset, len(raw), tensor.dtype, shape=tensor.shape, name=tensor.name,
                    doc_string=tensor.doc_string, metadata_props=dict(tensor.metadata_props),
                    base_dir=self.folder))
        return references
