"""Build the QDQ model of one probe case (``tools.qnn_probe_cases`` holds the case table).

:func:`build_case` turns a case and a precision into an opset-21 model that passes ``onnx.checker``, with
the quantization conventions the case table's docstring lists, and the float outputs of the CPU run it is
compared with.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tools.qnn_probe_cases import (
    _SIGNED,
    _UNSIGNED,
    CASES,
    IR_VERSION,
    OPSET,
    PRECISIONS,
    Act,
    ActConst,
    BlockWeight,
    Condition,
    Indices,
    OpSpec,
    Param,
    Slot,
    Weight,
    _u,
    case_precisions,
)

# ---------------------------------------------------------------------------------------- quantization
def act_qparams(values: np.ndarray, bits: int) -> tuple[np.float32, np.generic]:
    """Asymmetric per-tensor (scale, zero point) covering [min(0, lo), max(0, hi)]."""
    lo, hi = min(0.0, float(values.min())), max(0.0, float(values.max()))
    if hi == lo:
        hi = lo + 1.0
    qmax = 2**bits - 1
    scale = np.float32((hi - lo) / qmax)
    zero_point = _UNSIGNED[bits](np.clip(round(-lo / float(scale)), 0, qmax))
    return scale, zero_point


def fixed_qparams(kind: str, bits: int) -> tuple[np.float32, np.generic]:
    """Sigmoid/Softmax: scale 1/2^bits, zp 0. Tanh: scale 2/2^bits, zp 2^(bits-1)."""
    if kind == "unit":
        return np.float32(1.0 / 2**bits), _UNSIGNED[bits](0)
    return np.float32(2.0 / 2**bits), _UNSIGNED[bits](2 ** (bits - 1))


def weight_quant(value: np.ndarray, axis: int | None, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric signed quantization: (integer values, float32 scale per channel or scalar)."""
    qmax = 2 ** (bits - 1) - 1
    reduce = tuple(i for i in range(value.ndim) if i != axis) if axis is not None else None
    absmax = np.abs(value).max(axis=reduce)
    scale = (np.maximum(absmax, 1e-8) / qmax).astype(np.float32)
    shape = [1] * value.ndim
    if axis is not None:
        shape[axis] = -1
    quantized = np.clip(np.round(value / scale.reshape(shape)), -qmax, qmax)
    return quantized.astype(_SIGNED[bits]), scale


@dataclass
class BuiltCase:
    model: onnx.ModelProto
    feeds: dict[str, np.ndarray]
    output_scales: list[float] | None  # None: float model (fp16)
    provider_extra: dict[str, str]


class _Graph:
    def __init__(self):
        self.nodes, self.inits, self.inputs = [], [], []

    def const(self, name: str, value) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def qdq(self, source: str, stem: str, scale, zero_point, *, quantize: bool = True, axis=None,
            output: str | None = None) -> str:
        scale_name, zp_name = self.const(f"{stem}_scale", scale), self.const(f"{stem}_zp", zero_point)
        if quantize:
            self.nodes.append(helper.make_node("QuantizeLinear", [source, scale_name, zp_name], [f"{stem}_q"],
                                               name=f"{stem}_Q"))
            source = f"{stem}_q"
        attrs = {"axis": axis} if axis is not None else {}
        output = output or f"{stem}_dq"
        self.nodes.append(helper.make_node("DequantizeLinear", [source, scale_name, zp_name], [output],
                                           name=f"{stem}_DQ", **attrs))
        return output


def _feeds(spec: OpSpec, rng: np.random.Generator) -> dict[str, np.ndarray]:
    feeds = {}
    for i, slot in enumerate(spec.inputs):
        if isinstance(slot, Act):
            feeds[f"in{i}"] = _u(rng, slot.shape, slot.low, slot.high)
        elif isinstance(slot, Indices):
            feeds[f"in{i}"] = rng.integers(0, slot.high, slot.shape).astype(np.int64)
        elif isinstance(slot, Condition):
            feeds[f"in{i}"] = rng.integers(0, 2, slot.shape).astype(bool)
    return feeds


_ELEM = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.int64): TensorProto.INT64,
         np.dtype(bool): TensorProto.BOOL}


def _model(graph: _Graph, spec: OpSpec, feeds, outputs: list[tuple[str, list[int]]]) -> onnx.ModelProto:
    inputs = [helper.make_tensor_value_info(name, _ELEM[a.dtype], a.shape) for name, a in feeds.items()]
    outs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in outputs]
    g = helper.make_graph(graph.nodes, spec.op.lower(), inputs, outs, graph.inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION,
                              producer_name="onnxq.tools.qnn_probe")
    if all(shape is not None for _, shape in outputs):  # the calibration model has none yet
        onnx.checker.check_model(model, full_check=True)
    return model


def _float_model(spec: OpSpec, feeds, shapes=None) -> onnx.ModelProto:
    graph = _Graph()
    names = []
    for i, slot in enumerate(spec.inputs):
        if slot is None:
            names.append("")
        elif isinstance(slot, (Act, Indices, Condition)):
            names.append(f"in{i}")
        else:
            names.append(graph.const(f"c{i}", slot.value))
    outs = [f"out{j}" for j in range(spec.outputs)]
    graph.nodes.append(helper.make_node(spec.op, names, outs, name="op", **spec.attrs))
    return _model(graph, spec, feeds, [(o, shapes[j] if shapes else None) for j, o in enumerate(outs)])


def _run_cpu(model: onnx.ModelProto, feeds) -> list[np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _qdq_input(graph: _Graph, spec: OpSpec, i: int, slot: Slot, feeds, bits, scales) -> str:
    act_bits, weight_bits = bits
    if slot is None:
        return ""
    if isinstance(slot, (Indices, Condition)):
        return f"in{i}"
    if isinstance(slot, Param):
        return graph.const(f"c{i}", slot.value)
    if isinstance(slot, Act):
        scales[i], zp = act_qparams(feeds[f"in{i}"], act_bits)
        return graph.qdq(f"in{i}", f"in{i}", scales[i], zp)
    if isinstance(slot, ActConst):
        scales[i], zp = act_qparams(slot.value, act_bits)
        q = np.clip(np.round(slot.value / scales[i]) + zp.astype(np.int64), 0, 2**act_bits - 1)
        return graph.qdq(graph.const(f"c{i}_q", q.astype(zp.dtype)), f"c{i}", scales[i], zp, quantize=False)
    if isinstance(slot, BlockWeight):
        return _lpbq_weight(graph, i, slot, weight_bits, scales)
    if isinstance(slot, Weight):
        q, scales[i] = weight_quant(slot.value, slot.axis, weight_bits)
        zp = np.zeros(scales[i].shape, q.dtype)
        return graph.qdq(graph.const(f"c{i}_q", q), f"c{i}", scales[i], zp, quantize=False, axis=slot.axis)
    a, b = slot.of  # Bias
    scale = (np.float32(scales[a]) * np.asarray(scales[b], np.float32)).astype(np.float32)
    scale = np.broadcast_to(scale, slot.value.shape).copy() if scale.ndim else scale
    q = np.clip(np.round(slot.value / scale), -(2**31) + 1, 2**31 - 1).astype(np.int32)
    axis = 0 if scale.ndim else None
    return graph.qdq(graph.const(f"c{i}_q", q), f"c{i}", scale, np.zeros(scale.shape, np.int32),
                     quantize=False, axis=axis)


def _lpbq_weight(graph: _Graph, i: int, slot: BlockWeight, bits: int, scales) -> str:
    """The LPBQ weight exactly as onnxq's quantizer writes it (``onnxq.quant.qparams``)."""
    from onnxq.quant.qparams import quantize_weight_lpbq
    from onnxq.quant.spec import weight_spec

    spec = weight_spec(f"int{bits}", slot.block_axis, block_size=slot.block, channel_axis=slot.channel_axis,
                       block_scale_bits=4, int_block_scales=slot.int_scales)
    lpbq = quantize_weight_lpbq(slot.value, spec)
    scales[i] = lpbq.channel_scale
    if slot.int_scales:
        zero = np.zeros(lpbq.channel_scale.shape, np.uint8)
        scale = graph.qdq(graph.const(f"c{i}_k", lpbq.block_ints), f"c{i}_k", lpbq.channel_scale, zero,
                          quantize=False, axis=slot.channel_axis)
    else:
        scale = graph.const(f"c{i}_scale", lpbq.block_scales)
    zero = graph.const(f"c{i}_zp", lpbq.zero)
    graph.nodes.append(helper.make_node("DequantizeLinear", [graph.const(f"c{i}_q", lpbq.q), scale, zero],
                                        [f"c{i}_dq"], name=f"c{i}_DQ", axis=slot.block_axis,
                                        block_size=slot.block))
    return f"c{i}_dq"


@lru_cache(maxsize=64)
def build_case(key: str, precision: str) -> BuiltCase:
    """The model of case ``key`` at ``precision`` (checked by onnx.checker), its inputs, output scales."""
    if key not in CASES:
        raise KeyError(f"unknown case {key!r}; known: {', '.join(CASES)}")
    if precision not in case_precisions(key):
        raise KeyError(f"precision {precision!r} for case {key!r}; known: {', '.join(case_precisions(key))}")
    rng = np.random.default_rng(zlib.crc32(key.encode()))
    spec = CASES[key].make(rng)
    feeds = _feeds(spec, rng)
    float_model = _float_model(spec, feeds)
    reference = _run_cpu(float_model, feeds)
    shapes = [list(r.shape) for r in reference]
    bits = PRECISIONS[precision]
    if bits is None:
        return BuiltCase(_float_model(spec, feeds, shapes), feeds, None, {"enable_htp_fp16_precision": "1"})
    graph, scales = _Graph(), {}
    names = [_qdq_input(graph, spec, i, slot, feeds, bits, scales) for i, slot in enumerate(spec.inputs)]
    outs = [f"out{j}_f" for j in range(spec.outputs)]
    graph.nodes.append(helper.make_node(spec.op, names, outs, name="op", **spec.attrs))
    output_scales, graph_outputs = [], []
    for j, (name, value) in enumerate(zip(outs, reference)):
        if spec.fixed_output:
            scale, zp = fixed_qparams(spec.fixed_output, bits[0])
        else:
            scale, zp = act_qparams(value, bits[0])
        graph.qdq(name, f"out{j}", scale, zp, output=f"out{j}")
        output_scales.append(float(scale))
        graph_outputs.append((f"out{j}", shapes[j]))
    return BuiltCase(_model(graph, spec, feeds, graph_outputs), feeds, output_scales, {})
