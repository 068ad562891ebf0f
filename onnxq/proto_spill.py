"""Reading a model's protobuf file with its large weights copied to a data file instead of into memory.

``onnx.load`` reads the file's bytes and parses them: twice the weights at the peak, and the parsed copy
stays for as long as the model lives (onnx-ir's tensors view the proto's ``raw_data``). The quantizer's
ONNX Runtime sessions want the weights in a file anyway (``onnxq.session_files``), so this reader walks the
file's protobuf encoding (``proto_stream`` describes it) and, for each initializer of the main graph whose
``raw_data`` qualifies (``spill``), copies those bytes from the file to a data file in chunks (aligned as
``session_files`` aligns its own) and parses only the tensor's other fields: the proto it returns holds the
graph, not the weights. Each spilled tensor is left with no data field at all; ``SpilledTensor`` says where
its bytes went, and the caller points it there.

A file whose encoding this reader does not expect (truncated, the graph field repeated, an unknown wire
type, text that protobuf refuses) raises ``ValueError``, and nothing of it stays in the data file: the
caller then loads the file the usual way, which reports what is wrong with it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import onnx
from google.protobuf.message import DecodeError

from onnxq.proto_stream import field_header, varint
from onnxq.session_files import ALIGNMENT

_GRAPH_FIELD, _INITIALIZER_FIELD, _RAW_DATA_FIELD = 7, 5, 9
_VARINT, _FIXED64, _LENGTH_DELIMITED, _FIXED32 = 0, 1, 2, 5
_COPY_CHUNK = 1 << 22


@dataclass(frozen=True)
class SpilledTensor:
    """Where an initializer's raw data went: ``length`` bytes at ``offset`` of the data file."""

    offset: int
    length: int


#: Decides from a tensor's other fields (``raw_data`` cleared) and its raw size whether it is spilled.
SpillRule = Callable[[onnx.TensorProto, int], bool]


class _Reader:
    """Sequential reads of a file's protobuf encoding; ``pos`` is the offset in the file."""

    def __init__(self, stream: BinaryIO, size: int):
        self.stream, self.size, self.pos = stream, size, 0

    def read(self, count: int) -> bytes:
        if self.pos + count > self.size:
            raise ValueError(f"a field runs past the end of the file (byte {self.pos} + {count} of "
                             f"{self.size})")
        data = self.stream.read(count)
        if len(data) != count:
            raise ValueError(f"short read at byte {self.pos}")
        self.pos += count
        return data

    def varint(self) -> int:
        value = shift = 0
        while shift < 64:
            byte = self.read(1)[0]
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7
        raise ValueError(f"malformed varint before byte {self.pos}")

    def fields(self, end: int) -> Iterator[tuple[int, bytes, int]]:
        """The fields up to ``end``: (number, encoding before the payload, payload length). A scalar
        field comes whole in the encoding, with payload length 0."""
        while self.pos < end:
            tag = self.varint()
            number, wire = tag >> 3, tag & 7
            if wire == _LENGTH_DELIMITED:
                length = self.varint()
                yield number, varint(tag) + varint(length), length
            elif wire == _VARINT:
                yield number, varint(tag) + varint(self.varint()), 0
            elif wire in (_FIXED64, _FIXED32):
                yield number, varint(tag) + self.read(8 if wire == _FIXED64 else 4), 0
            else:
                raise ValueError(f"unexpected wire type {wire} before byte {self.pos}")
        if self.pos != end:
            raise ValueError(f"a field crosses the end of its message (byte {self.pos}, end {end})")

    def copy_to(self, out: BinaryIO, count: int) -> None:
        if self.pos + count > self.size:
            raise ValueError(f"raw data runs past the end of the file (byte {self.pos} + {count} of "
                             f"{self.size})")
        left = count
        while left:
            chunk = self.stream.read(min(_COPY_CHUNK, left))
            if not chunk:
                raise ValueError(f"short read at byte {self.pos}")
            out.write(chunk)
            left -= len(chunk)
        self.pos += count


def load_spilling(path: Path, data_path: Path,
                  spill: SpillRule) -> tuple[onnx.ModelProto, dict[str, SpilledTensor]]:
    """The model at ``path`` with the raw data of the main graph's initializers that ``spill`` picks
    written to ``data_path`` (created) instead of kept; see the module docstring."""
    size = os.path.getsize(path)
    spilled: dict[str, SpilledTensor] = {}
    try:
        with open(path, "rb") as stream, open(data_path, "wb") as data:
            reader = _Reader(stream, size)
            model_bytes = bytearray()
            graph_seen = False
            for number, head, length in reader.fields(size):
                if number != _GRAPH_FIELD or not length:
                    model_bytes += head + reader.read(length)
                    continue
                if graph_seen:
                    raise ValueError("the graph field appears twice")
                graph_seen = True
                graph = _read_graph(reader, reader.pos + length, data, spill, spilled)
                model_bytes += field_header(_GRAPH_FIELD, len(graph)) + graph
        proto = onnx.ModelProto.FromString(bytes(model_bytes))
    except BaseException as exc:
        data_path.unlink(missing_ok=True)
        if isinstance(exc, (DecodeError, UnicodeDecodeError, RuntimeError)):  # protobuf's: a bad file
            raise ValueError(str(exc) or type(exc).__name__) from None
        raise
    return proto, spilled


def _read_graph(reader: _Reader, end: int, data: BinaryIO, spill: SpillRule,
                spilled: dict[str, SpilledTensor]) -> bytearray:
    graph = bytearray()
    for number, head, length in reader.fields(end):
        if number == _INITIALIZER_FIELD and length:
            tensor = _read_tensor(reader, reader.pos + length, data, spill, spilled)
            graph += field_header(_INITIALIZER_FIELD, len(tensor)) + tensor
        else:
            graph += head + reader.read(length)
    return graph


def _read_tensor(reader: _Reader, end: int, data: BinaryIO, spill: SpillRule,
                 spilled: dict[str, SpilledTensor]) -> bytes:
    """One TensorProto's encoding, without its raw data if that was spilled."""
    start = reader.pos
    fields = bytearray()
    raw_at = raw_length = None
    for number, head, length in reader.fields(end):
        if number == _RAW_DATA_FIELD:
            if raw_at is not None:  # protobuf keeps the last; not worth a special case
                raise ValueError("a tensor's raw data appears twice")
            raw_at, raw_length = reader.pos, length
            reader.stream.seek(reader.pos + length)
            reader.pos += length
        else:
            fields += head + reader.read(length)
    if raw_at is None:
        return bytes(fields)
    header = onnx.TensorProto.FromString(bytes(fields))
    if not spill(header, raw_length) or header.name in spilled:
        reader.stream.seek(start)
        reader.pos = start
        return reader.read(end - start)  # the tensor as it is
    offset = (data.tell() + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT
    data.seek(offset)
    reader.stream.seek(raw_at)
    reader.pos = raw_at
    reader.copy_to(data, raw_length)
    reader.stream.seek(end)
    reader.pos = end
    spilled[header.name] = SpilledTensor(offset, raw_length)
    return bytes(fields)
