"""Helpers for quantization tests: exact min/max statistics computed naively (no streaming)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir

from onnxq import numerics


class NaiveStats:
    """Min/max of every value seen, computed all at once: the reference the streaming engine must match."""

    channel_mean = None  # no bias correction: placement tests compare against plain rounding

    def __init__(self, array: np.ndarray):
        self.min, self.max = float(np.min(array)), float(np.max(array))

    def range(self, method, qdtype=None, symmetric=False, percentile=99.99):
        return self.min, self.max


def naive_stats(model: ir.Model, names, samples) -> dict[str, NaiveStats]:
    proto = ir.to_proto(model)
    exposed = ir.serde.deserialize_model(proto)
    values = {v.name: v for node in exposed.graph for v in node.outputs}
    for name in names:
        if name in values and not values[name].is_graph_output():
            if values[name].dtype is None:
                values[name].dtype = ir.DataType.FLOAT
            exposed.graph.outputs.append(values[name])
    outs = [numerics.run_model(exposed, s) for s in samples]
    stats = {}
    for name in names:
        source = outs if name in outs[0] else samples
        stats[name] = NaiveStats(np.concatenate([np.ravel(o[name]) for o in source]))
    return stats


def parse(text: str) -> ir.Model:
    return ir.serde.deserialize_model(onnx.parser.parse_model(text))
