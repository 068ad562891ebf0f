"""Writing a model's protobuf file one initializer at a time: the bytes ``ir.save`` writes, a fraction of its memory.

``ir.save`` builds the whole ``ModelProto`` (a copy of every weight), then its serialized bytes (another copy),
while the model holds its own: three copies of the weights at once (a 71 MB quantized MiniLM: +230 MiB).
Protobuf's encoding of a message is the concatenation of its fields' encodings, in field-number order, and a
nested message field is ``tag · varint(length) · bytes``. So the same file is

    model fields before ``graph`` (7) · tag 7 · varint(len(graph)) · graph fields before ``initializer`` (5)
    · for each initializer: tag 5 · varint(len) · TensorProto bytes · graph fields after 5 · model fields after 7

written from a *skeleton* (the model serialized without its main graph's initializers) and each initializer
serialized in turn; a first pass over the initializers computes the lengths. A large tensor's ``raw_data``
(field 9 of ``TensorProto``) is spliced between its other fields the same way, so it is copied once, not
three times. A skeleton whose fields are not in field-number order (not what protobuf writes) is refused
with ``ValueError``: the caller then saves the usual way.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import onnx
import onnx_ir as ir

from onnxq.session_files import unmap

logger = logging.getLogger(__name__)

#: Tensors from this size up have their raw data spliced in (smaller ones go through ``serialize_tensor``).
SPLICE_BYTES = 1 << 20
_GRAPH_FIELD, _INITIALIZER_FIELD, _RAW_DATA_FIELD = 7, 5, 9
_LENGTH_DELIMITED = 2
_FLOAT6 = frozenset(t for t in ir.DataType if "FLOAT6" in t.name)


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def field_header(number: int, length: int) -> bytes:
    return varint(number << 3 | _LENGTH_DELIMITED) + varint(length)


def split_fields(data: bytes, number: int) -> tuple[bytes, bytes]:
    """``data`` (a serialized message without field ``number``) cut where field ``number`` belongs: before
    the first field with a larger number. ``ValueError`` if its fields are not in field-number order."""
    pos, last, cut = 0, 0, len(data)
    while pos < len(data):
        start = pos
        tag, pos = _read_varint(data, pos)
        field, wire = tag >> 3, tag & 7
        if field < last or field == number:
            raise ValueError(f"serialized fields out of order (field {field} after {last})")
        last = field
        if field > number and cut == len(data):
            cut = start
        if wire == 0:
            _, pos = _read_varint(data, pos)
        elif wire == 1:
            pos += 8
        elif wire == _LENGTH_DELIMITED:
            length, pos = _read_varint(data, pos)
            pos += length
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"unexpected wire type {wire}")
    return data[:cut], data[cut:]


class _Encoded:
    """One initializer's TensorProto encoding, as pieces written in order (``length`` known before)."""

    def __init__(self, tensor: ir.TensorProtocol):
        self.tensor = tensor
        self._spliced = _spliceable(tensor)
        if self._spliced:
            self._head, self._tail = split_fields(_proto_without_data(tensor).SerializeToString(),
                                                  _RAW_DATA_FIELD)
            size = tensor.nbytes
            self.length = len(self._head) + len(field_header(_RAW_DATA_FIELD, size)) + size + len(self._tail)
        else:
            self.length = self._proto().ByteSize()  # no bytes made: a loaded tensor's proto is only measured

    def _proto(self) -> onnx.TensorProto:
        tensor = self.tensor
        if isinstance(tensor, ir.serde.TensorProtoTensor) and not tensor.metadata_props \
                and tensor.dtype not in _FLOAT6:
            return tensor.raw  # serialize_tensor copies the proto verbatim
        return ir.serde.serialize_tensor(tensor)

    def pieces(self) -> Iterator[bytes]:
        if not self._spliced:
            yield self._proto().SerializeToString()
            return
        raw = self.tensor.tobytes()
        unmap(self.tensor)  # ``raw`` is a copy; a mapping would hold the file's pages in memory
        if len(raw) != self.tensor.nbytes:
            raise ValueError(f"tensor '{self.tensor.name}': {len(raw)} bytes of data, nbytes says "
                             f"{self.tensor.nbytes}")
        yield self._head
        yield field_header(_RAW_DATA_FIELD, len(raw))
        yield raw
        yield self._tail


def _spliceable(tensor: ir.TensorProtocol) -> bool:
    """A tensor ``serialize_tensor`` writes as raw data after plain fields (see ``_tensor_proto``). An
    external tensor always is (serialized, it would stay a reference to its file): its bytes come inline."""
    if tensor.dtype == ir.DataType.STRING or tensor.metadata_props:
        return False
    if isinstance(tensor, ir.ExternalTensor):
        return True
    return (isinstance(tensor, ir.Tensor) and not isinstance(tensor, ir.StringTensor)
            and tensor.nbytes >= SPLICE_BYTES)


def _proto_without_data(tensor: ir.TensorProtocol) -> onnx.TensorProto:
    """What ``ir.serde.serialize_tensor`` makes of a plain tensor without metadata, less its raw data."""
    proto = onnx.TensorProto()
    if tensor.name:
        proto.name = tensor.name
    if tensor.doc_string:
        proto.doc_string = tensor.doc_string
    proto.data_type = tensor.dtype.value
    proto.dims.extend(tensor.shape.numpy())
    return proto


@contextlib.contextmanager
def _without_initializer_values(values: list[ir.Value]) -> Iterator[None]:
    """The values' tensors detached (the serializer skips them, and would warn once each), then restored."""
    tensors = [v.const_value for v in values]
    serde_logger = logging.getLogger("onnx_ir.serde")
    level = serde_logger.level
    serde_logger.setLevel(logging.ERROR)
    try:
        for value in values:
            value.const_value = None
        yield
    finally:
        for value, tensor in zip(values, tensors, strict=True):
            value.const_value = tensor
        serde_logger.setLevel(level)


def save_streamed(model: ir.Model, path: Path) -> None:
    """Write ``model`` to ``path`` as ``ir.save(model, path)`` would (protobuf format, tensors inline), with
    one initializer serialized at a time; the main graph's external tensors are read one at a time and
    written inline too. ``ValueError`` (nothing useful written) if the skeleton is not laid out as protobuf
    writes it."""
    values = [v for v in model.graph.initializers.values() if v.const_value is not None]
    if any(isinstance(v.const_value, ir.ExternalTensor) and v.const_value.metadata_props for v in values):
        raise ValueError("an external tensor with metadata (written as a reference)")
    for value in values:
        value.const_value.name = value.name  # what the serializer does before writing each one
    with _without_initializer_values(values):
        skeleton = ir.to_proto(model)
    graph_pre, graph_post = split_fields(skeleton.graph.SerializeToString(), _INITIALIZER_FIELD)
    skeleton.ClearField("graph")
    model_pre, model_post = split_fields(skeleton.SerializeToString(), _GRAPH_FIELD)
    del skeleton
    encoded = [_Encoded(v.const_value) for v in values]
    graph_length = len(graph_pre) + len(graph_post) + sum(
        len(field_header(_INITIALIZER_FIELD, e.length)) + e.length for e in encoded)
    total = len(model_pre) + len(field_header(_GRAPH_FIELD, graph_length)) + graph_length + len(model_post)
    if total > onnx.checker.MAXIMUM_PROTOBUF:
        raise ValueError(f"the model would be {total} bytes, over protobuf's 2 GB limit")
    with open(path, "wb") as stream:
        stream.write(model_pre)
        stream.write(field_header(_GRAPH_FIELD, graph_length))
        stream.write(graph_pre)
        for item in encoded:
            stream.write(field_header(_INITIALIZER_FIELD, item.length))
            for piece in item.pieces():
                stream.write(piece)
        stream.write(graph_post)
        stream.write(model_post)
    logger.debug("wrote %s: %d initializers streamed", path, len(encoded))
