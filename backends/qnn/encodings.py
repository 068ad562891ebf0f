"""AIMET-style encodings (format version 1.0.0) read off a QDQ model, for users of Qualcomm's converter.

``qnn-onnx-converter --quantization_overrides FILE`` takes per-tensor encodings so the converter keeps the
ranges onnxq calibrated and verified instead of recomputing its own. We write the 1.0.0 layout:

    {"version": "1.0.0",
     "activation_encodings": [{"name", "dtype": "INT", "enc_type": "PER_TENSOR", "bw", "is_sym",
                               "scale": [s], "offset": [o]}, ...],
     "param_encodings":      [{... "enc_type": "PER_TENSOR" | "PER_CHANNEL" | "PER_BLOCK", "block_size"?}],
     "quantizer_args": {...}}

Offsets follow AIMET's convention ``x = (q + offset) * scale`` with ``q`` in the unsigned range of ``bw``
bits: ``offset = -zero_point`` for unsigned tensors and ``offset = -2^(bw-1)`` for signed symmetric ones
(int8 weights with zero point 0 are the same grid shifted by 128). Names are the tensors of the float graph:
an activation is named by the tensor its QuantizeLinear reads (a graph output by the output's name), a
parameter by its initializer name before quantization.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import numpy_helper

FORMAT_VERSION = "1.0.0"

_BITS = {
    onnx.TensorProto.UINT8: (8, False), onnx.TensorProto.INT8: (8, True),
    onnx.TensorProto.UINT16: (16, False), onnx.TensorProto.INT16: (16, True),
    onnx.TensorProto.UINT4: (4, False), onnx.TensorProto.INT4: (4, True),
    onnx.TensorProto.INT32: (32, True),
}


def _array(initializers: dict, name: str) -> np.ndarray:
    return numpy_helper.to_array(initializers[name]).astype(np.float64).reshape(-1)


def _encoding(name: str, scale_name: str, zero_name: str, initializers: dict, node: onnx.NodeProto) -> dict | None:
    zero_proto = initializers.get(zero_name)
    if zero_proto is None or scale_name not in initializers:
        return None
    bits, signed = _BITS.get(zero_proto.data_type, (None, None))
    if bits is None:
        return None
    scale = _array(initializers, scale_name)
    zero = _array(initializers, zero_name)
    symmetric = bool(np.all(zero == 0)) if signed else bool(np.all(zero == 1 << (bits - 1)))
    offset = -(zero + (1 << (bits - 1))) if signed else -zero
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    enc_type = "PER_TENSOR" if scale.size == 1 else "PER_BLOCK" if attrs.get("block_size") else "PER_CHANNEL"
    entry = {
        "name": name, "dtype": "INT", "enc_type": enc_type, "bw": bits, "is_sym": symmetric,
        "scale": [float(s) for s in scale], "offset": [int(o) for o in offset],
    }
    if attrs.get("block_size"):
        entry["block_size"] = int(attrs["block_size"])
    return entry


def encodings_from_qdq(model: onnx.ModelProto) -> dict:
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    graph_outputs = {o.name for o in graph.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    activations, params = {}, {}
    for node in graph.node:
        if node.op_type == "QuantizeLinear" and len(node.input) >= 3:
            name = node.input[0]
            for dq in consumers.get(node.output[0], []):
                if dq.op_type == "DequantizeLinear" and dq.output[0] in graph_outputs:
                    name = dq.output[0]  # the graph output keeps the float tensor's name
            entry = _encoding(name, node.input[1], node.input[2], initializers, node)
            if entry:
                activations.setdefault(name, entry)
        elif node.op_type == "DequantizeLinear" and node.input[0] in initializers and len(node.input) >= 3:
            base = node.input[0]
            base = base[: -len("_quantized")] if base.endswith("_quantized") else base
            entry = _encoding(base, node.input[1], node.input[2], initializers, node)
            if entry:
                params.setdefault(base, entry)
    return {
        "version": FORMAT_VERSION,
        "activation_encodings": [activations[k] for k in sorted(activations)],
        "param_encodings": [params[k] for k in sorted(params)],
        "quantizer_args": {"activation_bitwidth": _common_bits(activations), "param_bitwidth": _common_bits(params),
                           "dtype": "int", "per_channel_quantization": any(
                               p["enc_type"] == "PER_CHANNEL" for p in params.values())},
    }


def _common_bits(entries: dict) -> int | None:
    bits = sorted({e["bw"] for e in entries.values() if e["bw"] != 32})
    return bits[0] if len(bits) == 1 else None


def dumps(encodings: dict) -> str:
    return json.dumps(encodings, indent=1, sort_keys=True) + "\n"
