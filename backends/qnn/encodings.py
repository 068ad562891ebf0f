"""AIMET-style encodings (format version 1.0.0) read off a QDQ model, for users of Qualcomm's converter.

``qnn-onnx-converter --quantization_overrides FILE`` takes per-tensor encodings so the converter keeps the
ranges onnxq calibrated and verified instead of recomputing its own. We write the 1.0.0 layout:

    {"version": "1.0.0",
     "activation_encodings": [{"name", "dtype": "INT", "enc_type": "PER_TENSOR", "bw", "is_sym",
                               "scale": [s], "offset": [o]}, ...],
     "param_encodings":      [{... "enc_type": "PER_TENSOR" | "PER_CHANNEL" | "PER_BLOCK", "block_size"?}],
     "quantizer_args": {...}}

LPBQ weights (int4 per block, block scales ``k·c``, see ``onnxq.quant.qparams``) are written as AIMET writes
them: ``{"enc_type": "LPBQ", "dtype": "INT", "bw": 8, "compressed_bw": 4, "is_sym": true, "block_size",
"scale": [c per output channel], "offset": [-128 per channel], "per_block_int_scale": [k, channel-major]}``
(``bw`` is the decompressed width: 4-bit weights times k ≤ 2^(8−4)). They are recognised in both forms
onnxq writes: the block scales computed by ``DequantizeLinear(k uint8, c)``, or float32 block scales that
are exactly k·c with k = 16 in every channel; other blocked weights are ``PER_BLOCK``.

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


#: LPBQ as the HTP runs it: 4-bit weights, integer block scales in [1, 16] (decompressed to 8 bits)
LPBQ_COMPRESSED_BW, LPBQ_BW = 4, 8


def _lpbq_encoding(name: str, ints: np.ndarray, channel_scale: np.ndarray, channel_axis: int, block_axis: int,
                   block_size: int) -> dict:
    per_channel = np.moveaxis(ints, (channel_axis, block_axis), (0, -1)).reshape(ints.shape[channel_axis], -1)
    return {
        "name": name, "dtype": "INT", "enc_type": "LPBQ", "bw": LPBQ_BW, "compressed_bw": LPBQ_COMPRESSED_BW,
        "is_sym": True, "block_size": int(block_size),
        "scale": [float(c) for c in channel_scale.reshape(-1)],
        "offset": [-(1 << (LPBQ_BW - 1))] * int(channel_scale.size),
        "per_block_int_scale": [int(k) for k in per_channel.reshape(-1)],
    }


def _lpbq_from_float(name: str, scales: np.ndarray, block_axis: int, block_size: int) -> dict | None:
    """An LPBQ entry when float block scales are k·c with c = max/16 per channel and integer k, else None."""
    if scales.ndim < 2:
        return None
    channel_axis = 0 if block_axis % scales.ndim != 0 else 1
    levels = 1 << (LPBQ_BW - LPBQ_COMPRESSED_BW)
    per_channel = np.moveaxis(scales.astype(np.float64), channel_axis, 0)
    per_channel = per_channel.reshape(scales.shape[channel_axis], -1)
    channel = per_channel.max(axis=1) / levels
    if np.any(channel <= 0):
        return None
    ints = per_channel / channel[:, None]
    if np.max(np.abs(ints - np.round(ints))) > 1e-3 or np.round(ints).min() < 1:
        return None
    ints = np.moveaxis(np.round(ints).reshape(np.moveaxis(scales, channel_axis, 0).shape), 0, channel_axis)
    return _lpbq_encoding(name, ints.astype(np.int64), channel.astype(np.float32), channel_axis,
                          block_axis % scales.ndim, block_size)


def _weight_encoding(base: str, node: onnx.NodeProto, initializers: dict, producers: dict) -> dict | None:
    """The param encoding of a weight DequantizeLinear: LPBQ when its block scales are LPBQ's."""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    block_size = attrs.get("block_size")
    zero = initializers.get(node.input[2]) if len(node.input) > 2 else None
    is_int4 = zero is not None and zero.data_type == onnx.TensorProto.INT4
    if block_size and is_int4:
        rank = len(initializers[node.input[0]].dims)
        block_axis = attrs.get("axis", 1) % rank
        scale_dq = producers.get(node.input[1])
        if scale_dq is not None and scale_dq.op_type == "DequantizeLinear" \
                and scale_dq.input[0] in initializers:
            ints = numpy_helper.to_array(initializers[scale_dq.input[0]])
            channel_axis = {a.name: a.i for a in scale_dq.attribute}.get("axis", 1) % ints.ndim
            return _lpbq_encoding(base, ints, _array(initializers, scale_dq.input[1]), channel_axis,
                                  block_axis, block_size)
        if node.input[1] in initializers:
            scales = numpy_helper.to_array(initializers[node.input[1]])
            lpbq = _lpbq_from_float(base, scales, block_axis, block_size)
            if lpbq:
                return lpbq
    return _encoding(base, node.input[1], node.input[2], initializers, node)


def encodings_from_qdq(model: onnx.ModelProto) -> dict:
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    graph_outputs = {o.name for o in graph.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    producers = {out: node for node in graph.node for out in node.output}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    # DequantizeLinears that compute another DequantizeLinear's scale (LPBQ's k·c) are part of that weight
    scale_makers = {id(producers[n.input[1]]) for n in graph.node
                    if n.op_type == "DequantizeLinear" and len(n.input) > 1 and n.input[1] in producers}
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
        elif node.op_type == "DequantizeLinear" and node.input[0] in initializers and len(node.input) >= 3 \
                and id(node) not in scale_makers:
            base = node.input[0]
            base = base[: -len("_quantized")] if base.endswith("_quantized") else base
            entry = _weight_encoding(base, node, initializers, producers)
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
