"""Models handed to ONNX Runtime through files whose weights it memory-maps, instead of serialized bytes.

An ORT session made from bytes holds, while it loads, the bytes (which the Python wrapper keeps for the
session's life), ORT's parsed copy and its own tensors: up to three copies of the weights (MiniLM, 90 MB:
+280 MiB at peak, +130 MiB after). Made from a file whose weights live in an external data file, ORT maps
them and copies nothing but what it prepacks (MiniLM: +45 MiB at peak). So sessions of the quantizer
(calibration, FP32 reference, every verification round) read their models from a private temporary folder,
which also holds the FP32 weights *for the quantizer itself*:

1. ``load`` reads a model file with its large weights copied straight into the folder (``proto_spill``),
   and ``externalize`` writes a model's large in-memory tensors there once and puts references in their
   place: the model then holds no weight bytes. A reference maps the file when a pass reads it, and
   ``release`` unmaps it again, so the weights are in memory only while something works on them.
2. Clones (``ir.Model.clone``) share tensors: a quantized candidate of an externalized model writes only
   its new tensors; references into the folder are used as they are.
3. Tensors under ``MIN_EXTERNAL_BYTES`` and 32/64-bit integers stay inline: ONNX shape inference, which
   ORT runs while loading, reads shape-like constants (Reshape shapes, Slice bounds, axes) and cannot read
   external data. Tensors of subgraphs and node attributes stay inline too.
4. ``external_view`` writes a file from a clone: the viewed model's own tensors are not changed.
5. A model written by ``model_file`` is deleted when its block ends (ORT has mapped what it needs; on
   Linux a mapped file outlives its name); the folder goes at ``close``, so a model whose tensors refer to
   it must be ``materialize``d first if it is to outlive it.

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

import onnx
import onnx_ir as ir

from onnxq import runtime_compat, safety

logger = logging.getLogger(__name__)

#: Smaller tensors stay inline (shape inference may read them; mapping them saves nothing).
MIN_EXTERNAL_BYTES = 1024
#: Offsets of external tensors are multiples of this (page size: ORT maps them in place).
ALIGNMENT = 4096
SHAPE_LIKE = frozenset({ir.DataType.INT32, ir.DataType.INT64, ir.DataType.UINT32, ir.DataType.UINT64,
                         ir.DataType.BOOL, ir.DataType.STRING})


def _externalizable(tensor: ir.TensorProtocol | None) -> bool:
    return tensor is not None and tensor.dtype not in SHAPE_LIKE and tensor.nbytes >= MIN_EXTERNAL_BYTES


_DATA_TYPE_VALUES = frozenset(t.value for t in ir.DataType if t != ir.DataType.UNDEFINED)


def spillable(header: onnx.TensorProto, raw_length: int) -> bool:
    """``_externalizable`` for a tensor still in protobuf form (``proto_spill``: its fields, ``raw_length``
    bytes of raw data), which must hold as many bytes as its dims and type need (one that does not stays
    where it is, for the safety check to refuse)."""
    if not header.name or header.data_location == onnx.TensorProto.EXTERNAL \
            or header.data_type not in _DATA_TYPE_VALUES or raw_length < MIN_EXTERNAL_BYTES:
        return False
    if ir.DataType(header.data_type) in SHAPE_LIKE:
        return False
    try:
        return safety.tensor_nbytes(header) == raw_length
    except (ValueError, OverflowError):
        return False


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
    """A private folder of models for ONNX Runtime sessions, and of the weights they share; see the module
    docstring."""

    def __init__(self) -> None:
        remove_stale_folders()
        self.folder = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-"))
        self._names = itertools.count()

    def __enter__(self) -> SessionFiles:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def load(self, path: str | os.PathLike):
        """``model_io.load_model`` with the file's large embedded weights copied into this folder instead
        of into memory (``proto_spill``); the model's tensors refer to them until ``close``."""
        from onnxq import model_io

        return model_io.load_model(path, spill=self)

    def new_path(self, stem: str, suffix: str) -> Path:
        """A fresh file name in the folder."""
        return self.folder / f"{stem}-{next(self._names)}{suffix}"

    def owns(self, tensor: ir.TensorProtocol | None) -> bool:
        """Whether ``tensor`` is a reference into this folder."""
        return isinstance(tensor, ir.ExternalTensor) and Path(tensor.base_dir) == self.folder

    def externalize(self, model: ir.Model) -> None:
        """Write ``model``'s large tensors that are not in the folder yet, once, and put references to them in
        their place (in ``model`` itself: pass a clone to keep the original as it is). The model then holds no
        weight bytes; its clones share the references. Small tensors of other folders' files come inline:
        shape inference cannot read external ones."""
        self._move_into_folder(model, self.new_path("base", ".data"))

    def _move_into_folder(self, model: ir.Model, data: Path) -> None:
        """``model``'s large tensors not in the folder written to ``data`` and replaced by references; small
        tensors of other folders' files (their relative paths would break here) read into memory."""
        fresh = []
        for value in model.graph.initializers.values():
            tensor = value.const_value
            if self.owns(tensor):
                continue
            if _externalizable(tensor):
                fresh.append(value)
            elif isinstance(tensor, ir.ExternalTensor):
                value.const_value = _in_memory(tensor)
        references = self._write_tensors([v.const_value for v in fresh], data)
        for value, reference in zip(fresh, references, strict=True):
            value.const_value = reference

    def release(self, model: ir.Model) -> None:
        """Unmap the folder's tensors that ``model`` read (the pages of a mapped tensor count as the process's
        memory until then). A tensor that something still views stays mapped."""
        for value in model.graph.initializers.values():
            if self.owns(value.const_value):
                unmap(value.const_value)

    def materialize(self, model: ir.Model) -> None:
        """Copy the folder's tensors that ``model`` refers to into memory, so it outlives the folder."""
        for value in model.graph.initializers.values():
            tensor = value.const_value
            if self.owns(tensor):
                value.const_value = _in_memory(tensor)

    def external_view(self, model: ir.Model, *, data_name: str | None = None) -> ir.Model:
        """A clone of ``model`` whose large tensors are references into this folder (new ones written to
        ``data_name``), at an IR version the installed ONNX Runtime loads."""
        view = model.clone()
        view.ir_version = min(view.ir_version, runtime_compat.target_ir_version())
        data = self.folder / data_name if data_name else self.new_path("model", ".data")
        self._move_into_folder(view, data)
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
        path = self.new_path("model", ".onnx")
        view = self.external_view(model, data_name=path.with_suffix(".data").name)
        path.write_bytes(ir.to_proto(view).SerializeToString())
        return str(path)

    def _write_tensors(self, tensors: list[ir.TensorProtocol], data: Path) -> list[ir.ExternalTensor]:
        references = []
        if not tensors:
            return references
        with open(data, "wb") as stream:
            for tensor in tensors:
                offset = (stream.tell() + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT
                stream.seek(offset)
                if isinstance(tensor, ir.ExternalTensor):
                    tensor.tofile(stream)  # copied file to file, not through memory
                    length = stream.tell() - offset
                else:
                    raw = tensor.tobytes()
                    stream.write(raw)
                    length = len(raw)
                references.append(ir.ExternalTensor(
                    data.name, offset, length, tensor.dtype, shape=tensor.shape, name=tensor.name,
                    doc_string=tensor.doc_string, metadata_props=dict(tensor.metadata_props),
                    base_dir=self.folder))
        return references


def _in_memory(tensor: ir.ExternalTensor) -> ir.Tensor:
    """A copy of an external tensor in memory, its mapping released."""
    copy = ir.Tensor(tensor.numpy().copy(), name=tensor.name, doc_string=tensor.doc_string,
                     metadata_props=dict(tensor.metadata_props))
    unmap(tensor)
    return copy


def unmap(tensor: ir.TensorProtocol | None) -> None:
    """Close an external tensor's memory map (its pages count as the process's memory while mapped); the
    next read maps it again. One that an array still views stays mapped. Other tensors: nothing to do."""
    if not isinstance(tensor, ir.ExternalTensor):
        return
    try:
        tensor.release()
    except BufferError:
        pass
