"""Run the calibration model in consecutive segments, so that only one segment's tensors are alive at once.

Tensors to calibrate are exposed as graph outputs, and ONNX Runtime hands every output of a run back at its
end: one session over the whole model holds all of a sample's exposed activations at once (ppocr_det:
calibration was its peak at 694 MiB, the fall-back search's 555). So the node list, already in topological
order, is cut into segments of about ``SEGMENT_TENSORS`` exposed tensors each. Each segment is a model of
its own: its inputs are the values it reads from the sample or from earlier segments, its outputs its
exposed tensors plus the values later segments read. A sample flows through the segments in order, and a
value handed on is dropped once no later segment reads it. Nodes that no exposed tensor depends on (a
detection head past the last quantized layer) are left out.

The same nodes run with the same kernels on the same inputs: the tensors are bit for bit those of one
session over the whole model, and the compute is the same. A graph with control flow (an If/Loop/Scan body
reads outer values without naming them) or a boundary value of unknown type runs as one segment.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

#: Exposed tensors per segment: a segment's outputs are about this many of a sample's activations
SEGMENT_TENSORS = 8

_CONSTANT_TYPES = {"value_float": onnx.TensorProto.FLOAT, "value_floats": onnx.TensorProto.FLOAT,
                   "value_int": onnx.TensorProto.INT64, "value_ints": onnx.TensorProto.INT64,
                   "value_string": onnx.TensorProto.STRING, "value_strings": onnx.TensorProto.STRING}


@dataclass
class Segment:
    """A model over consecutive nodes. ``inputs``: the values it reads (from the sample or earlier
    segments); ``exposed``: its outputs to observe; ``handed_on``: its outputs that later segments read (some
    may be exposed too); ``last_reader_of``: the values no segment after this one reads."""

    model: onnx.ModelProto | None
    inputs: list[str]
    exposed: list[str]
    handed_on: list[str]
    last_reader_of: list[str]

    @property
    def outputs(self) -> list[str]:
        return [*self.exposed, *(name for name in self.handed_on if name not in self.exposed)]


def split(model: onnx.ModelProto, exposed: Sequence[str],
          per_segment: int | None = SEGMENT_TENSORS) -> list[Segment]:
    """``model``'s nodes cut into segments observing ``exposed`` (its own graph outputs are not kept); one
    segment of all its nodes where the graph cannot be cut, or ``per_segment`` is None."""
    graph = model.graph
    nodes = list(graph.node)
    wanted = set(exposed)
    initializers = {t.name: t for t in graph.initializer}
    types = _elem_types(graph)
    groups = [nodes]
    if per_segment is not None and not _has_subgraphs(nodes):
        groups = _groups(_contributing(nodes, wanted), wanted, per_segment)
        if any(not types.get(name) for name in _readers(groups, initializers)):
            groups = [nodes]
    readers = _readers(groups, initializers)
    last_read = {name: max(indices) for name, indices in readers.items()}
    segments = []
    for index, group in enumerate(groups):
        if len(groups) > 1:  # what it reads, typed by element only (shapes may vary from sample to sample)
            declared = [onnx.helper.make_value_info(name, onnx.helper.make_tensor_type_proto(types[name], None))
                        for name in sorted(name for name, indices in readers.items() if index in indices)]
        else:  # the model's own inputs, as it declares them (ORT wants every one fed)
            declared = [info for info in graph.input if info.name not in initializers]
        produced = [out for node in group for out in node.output if out]
        used = sorted({name for node in group for name in node.input if name in initializers})
        segment = Segment(None, [info.name for info in declared], [name for name in produced if name in wanted],
                          [name for name in produced if last_read.get(name, -1) > index],
                          [name for name, last in last_read.items() if last == index])
        segment_graph = onnx.helper.make_graph(
            group, f"{graph.name}_segment{index}", declared,
            [onnx.ValueInfoProto(name=name) for name in segment.outputs],  # ORT infers their types
            initializer=[initializers[name] for name in used],
        )
        segment.model = onnx.helper.make_model(segment_graph, opset_imports=model.opset_import,
                                               ir_version=model.ir_version)
        segment.model.functions.extend(model.functions)
        segments.append(segment)
    return segments


class SegmentedRun:
    """One session per segment (``make_session(model_bytes)``); ``run`` feeds a sample through them."""

    def __init__(self, segments: list[Segment], make_session: Callable[[bytes], object]):
        self.segments = segments
        self.sessions = []
        for segment in segments:
            self.sessions.append(make_session(segment.model.SerializeToString()))
            segment.model = None  # the session has it; the proto would only hold memory

    def run(self, sample: Mapping[str, np.ndarray],
            observe: Callable[[list[np.ndarray], list[str]], None]) -> None:
        """Feed ``sample`` through every segment; ``observe(outputs, names)`` gets each segment's exposed
        tensors as they come (it may drop them from the list)."""
        carried: dict[str, np.ndarray] = {}
        for segment, session in zip(self.segments, self.sessions, strict=True):
            feeds = {name: carried[name] if name in carried else sample[name] for name in segment.inputs}
            names = segment.outputs
            outputs = session.run(names, feeds)
            del feeds
            by_name = dict(zip(names, outputs))
            carried.update((name, by_name[name]) for name in segment.handed_on)
            del by_name, outputs[len(segment.exposed):]
            for name in segment.last_reader_of:
                carried.pop(name, None)
            observe(outputs, segment.exposed)


def _contributing(nodes: list[onnx.NodeProto], wanted: set[str]) -> list[onnx.NodeProto]:
    """The nodes that some wanted tensor depends on, in their order (a head past the last one is not run)."""
    needed, kept = set(wanted), []
    for node in reversed(nodes):
        if any(out in needed for out in node.output):
            kept.append(node)
            needed.update(name for name in node.input if name)
    return kept[::-1]


def _groups(nodes: list[onnx.NodeProto], wanted: set[str], per_segment: int) -> list[list[onnx.NodeProto]]:
    """Consecutive runs of nodes producing about ``per_segment`` wanted outputs each (never an empty one)."""
    groups: list[list[onnx.NodeProto]] = [[]]
    count = 0
    for node in nodes:
        if count >= per_segment:
            groups.append([])
            count = 0
        groups[-1].append(node)
        count += sum(1 for out in node.output if out in wanted)
    return [group for group in groups if group]


def _readers(groups: list[list[onnx.NodeProto]], initializers: Mapping) -> dict[str, list[int]]:
    """Value name → the segments that read it without producing it (graph inputs included)."""
    produced_in = {out: index for index, group in enumerate(groups) for node in group for out in node.output if out}
    readers: dict[str, list[int]] = {}
    for index, group in enumerate(groups):
        for node in group:
            for name in node.input:
                if name and name not in initializers and produced_in.get(name) != index:
                    indices = readers.setdefault(name, [])
                    if not indices or indices[-1] != index:
                        indices.append(index)
    return readers


def _elem_types(graph: onnx.GraphProto) -> dict[str, int]:
    """Element type of every value whose type the graph states (inputs, outputs, value_info, Constants)."""
    types = {}
    for info in [*graph.input, *graph.value_info, *graph.output]:
        if info.type.HasField("tensor_type") and info.type.tensor_type.elem_type:
            types[info.name] = info.type.tensor_type.elem_type
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and node.output:
            for attribute in node.attribute:
                if attribute.name == "value":
                    types[node.output[0]] = attribute.t.data_type
                elif attribute.name in _CONSTANT_TYPES:
                    types[node.output[0]] = _CONSTANT_TYPES[attribute.name]
    return types


def _has_subgraphs(nodes: list[onnx.NodeProto]) -> bool:
    return any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in nodes for a in n.attribute)
