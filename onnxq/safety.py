"""Checks that run on an untrusted model before any of its data is touched.

* External-data ``location`` entries must stay inside the model's folder: absolute paths, ``..`` parts and
  symlinks that resolve outside are refused (cf. CVE-2022-25882 and CVE-2024-27318 in onnx).
* The referenced files must exist and hold the bytes the model says they do.
* Tensor dims and counts that would allocate absurd memory are refused before anything is allocated.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path

import onnx
import onnx_ir as ir
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from onnxq.errors import InvalidModelError, UnsafeModelError

#: One tensor may not claim more elements than this (2**36 elements = 256 GiB of float32).
MAX_TENSOR_ELEMENTS = 2**36
#: A model may not have more initializers / nodes than this.
MAX_GRAPH_ITEMS = 5_000_000
_DATA_TYPES = frozenset(onnx.TensorProto.DataType.values())


def iter_graph_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every TensorProto of a graph: initializers and tensor attributes, recursing into subgraphs."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
    yield from _iter_node_tensors(graph.node)


def _iter_node_tensors(nodes) -> Iterator[onnx.TensorProto]:
    for node in nodes:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from iter_graph_tensors(attr.g)
            for sub in attr.graphs:
                yield from iter_graph_tensors(sub)


def iter_model_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    yield from iter_graph_tensors(model.graph)
    for function in model.functions:
        yield from _iter_node_tensors(function.node)


def _external_entries(tensor: onnx.TensorProto) -> dict[str, str]:
    return {entry.key: entry.value for entry in tensor.external_data}


def resolve_external_location(location: str, base_dir: Path, tensor_name: str) -> Path:
    """The real path of an external-data file, refusing anything that leaves ``base_dir``."""
    if not location:
        raise InvalidModelError(f"tensor '{tensor_name}' is stored externally but names no location")
    if "\0" in location:
        raise UnsafeModelError(f"tensor '{tensor_name}' has an external-data location with a NUL byte")
    pure = Path(location)
    if pure.is_absolute() or location.startswith(("/", "\\")) or (len(location) > 1 and location[1] == ":"):
        raise UnsafeModelError(
            f"tensor '{tensor_name}' points to external data at absolute path '{location}'; "
            "only paths inside the model's folder are allowed"
        )
    if ".." in pure.parts or ".." in location.replace("\\", "/").split("/"):
        raise UnsafeModelError(
            f"tensor '{tensor_name}' points to external data '{location}' outside the model's folder ('..')"
        )
    try:
        base_real = base_dir.resolve()
        target = (base_dir / pure).resolve()
    except (OSError, RuntimeError) as exc:  # name too long, symlink loop, ...
        raise InvalidModelError(
            f"tensor '{tensor_name}' has an unusable external-data location '{location[:80]}': "
            f"{getattr(exc, 'strerror', None) or exc}"
        ) from None
    if base_real != target and base_real not in target.parents:
        raise UnsafeModelError(
            f"tensor '{tensor_name}' points to external data '{location}', which resolves outside the "
            f"model's folder (to '{target}')"
        )
    return target


def check_tensor_size(tensor: onnx.TensorProto) -> None:
    if tensor.data_type == onnx.TensorProto.UNDEFINED or tensor.data_type not in _DATA_TYPES:
        raise InvalidModelError(f"tensor '{tensor.name}' has an unknown data type {tensor.data_type}")
    if any(d < 0 for d in tensor.dims):
        raise InvalidModelError(f"tensor '{tensor.name}' has a negative dimension {list(tensor.dims)}")
    count = math.prod(tensor.dims) if tensor.dims else 1
    if count > MAX_TENSOR_ELEMENTS:
        raise UnsafeModelError(
            f"tensor '{tensor.name}' claims {count} elements (dims {list(tensor.dims)}); "
            f"refusing to allocate more than {MAX_TENSOR_ELEMENTS}"
        )


def tensor_nbytes(tensor: onnx.TensorProto) -> int | None:
    """Bytes the tensor's data takes by its dims and type (None for strings and unknown types)."""
    try:
        bits = ir.DataType(tensor.data_type).bitwidth
    except (ValueError, TypeError):
        return None
    if bits % 8 and bits not in (2, 4):  # packing of other sub-byte types is not pinned down
        return None
    return math.ceil(math.prod(tensor.dims) * bits / 8)


def find_non_utf8_field(message: Message) -> str | None:
    """The first string field holding bytes that are not UTF-8 (protobuf hands those back as ``bytes``)."""
    for field, value in message.ListFields():
        if field.type == FieldDescriptor.TYPE_STRING:
            values = [value] if isinstance(value, (str, bytes)) else value
            if any(isinstance(v, bytes) for v in values):
                return field.full_name
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            for item in [value] if isinstance(value, Message) else value:
                if found := find_non_utf8_field(item):
                    return found
    return None


def check_model_proto(model: onnx.ModelProto, base_dir: Path) -> list[Path]:
    """Run every safety check on a model proto loaded without its external data.

    Returns the external-data files the model references (resolved), so callers can protect them.
    """
    if field := find_non_utf8_field(model):
        raise InvalidModelError(f"field {field} holds bytes that are not valid UTF-8 text (corrupted file?)")
    if len(model.graph.node) > MAX_GRAPH_ITEMS or len(model.graph.initializer) > MAX_GRAPH_ITEMS:
        raise UnsafeModelError(f"model has more than {MAX_GRAPH_ITEMS} nodes or initializers; refusing it")
    files: dict[Path, int] = {}
    for tensor in iter_model_tensors(model):
        check_tensor_size(tensor)
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            needed = tensor_nbytes(tensor) if tensor.HasField("raw_data") else None
            if needed is not None and len(tensor.raw_data) != needed:
                raise InvalidModelError(
                    f"tensor '{tensor.name}' holds {len(tensor.raw_data)} bytes of raw data, but its dims "
                    f"{list(tensor.dims)} and type need {needed}"
                )
            continue
        entries = _external_entries(tensor)
        path = resolve_external_location(entries.get("location", ""), base_dir, tensor.name)
        try:
            is_file = path.is_file()
        except OSError as exc:  # name too long, permission denied, ...
            raise InvalidModelError(
                f"tensor '{tensor.name}' has an unusable external-data location: {exc.strerror or exc}"
            ) from None
        if not is_file:
            problem = "is not a regular file" if path.exists() else "is missing"
            raise InvalidModelError(
                f"external data file '{entries.get('location')}' of tensor '{tensor.name}' {problem} "
                f"(looked in '{base_dir}')"
            )
        try:
            offset = int(entries.get("offset", 0))
            length = int(entries["length"]) if "length" in entries else None
        except ValueError as exc:
            raise InvalidModelError(f"tensor '{tensor.name}' has a malformed external-data entry: {exc}") from None
        if offset < 0 or (length is not None and length < 0):
            raise InvalidModelError(
                f"tensor '{tensor.name}' has a negative external-data offset or length ({offset}, {length})"
            )
        needed = tensor_nbytes(tensor)
        if length is not None and needed is not None and length < needed:
            raise InvalidModelError(
                f"tensor '{tensor.name}' needs {needed} bytes (dims {list(tensor.dims)}) but its "
                f"external-data length is {length}"
            )
        end = offset + (length if length is not None else needed or 0)
        size = files.setdefault(path, os.path.getsize(path))
        if end > size:
            raise InvalidModelError(
                f"tensor '{tensor.name}' reads bytes {offset}..{end} of "
                f"'{entries.get('location')}', which has only {size} bytes (truncated external data?)"
            )
    return sorted(files)
