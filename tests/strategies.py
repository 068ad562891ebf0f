"""Hypothesis strategies: random *valid* ONNX graphs built from the ops and decompositions the passes touch.

A graph is a chain of blocks on one running tensor, in one of three layouts: images (N, C, H, W), sequences
(N, T, D) and features (N, D). Image blocks: Conv / depthwise Conv / ConvTranspose, each with an optional
BatchNormalization and activation, lone BatchNormalization, pools, per-channel Mul/Add, channel Concat,
an NHWC Transpose round trip, residual Add, and the flatten to features. Sequence and feature blocks:
MatMul(+Add), Gemm, BatchNormalization on features, decomposed LayerNorm, GELU (erf and tanh forms),
HardSwish / HardSigmoid / Relu6 decompositions, Transpose round trips, Reshape. Identity and Dropout
appear anywhere. The opset is one of 13, 15, 17, 18 (ReduceMean takes axes as an input from 18) and the
batch dim is sometimes symbolic.

Structure comes from hypothesis (so it shrinks to a small failing graph); weights come from a numpy
generator seeded by a drawn integer. ``describe`` of a case lists its blocks, for failure reports.
With ``extra_outputs=True`` some intermediate tensors (still consumed downstream) also become graph
outputs, so a model has several outputs; the draws for them happen only then, so the examples of callers
that leave it off do not change.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

OPSETS = (13, 15, 17, 18)


def default_pipeline() -> str:
    """'default' once every pass it names is registered; until then the registered part of it."""
    from onnxq.pass_api import available_passes
    from onnxq.pipeline import PIPELINES

    passes = available_passes()
    if all(name in passes for name in PIPELINES["default"]):
        return "default"
    return ",".join(name for name in PIPELINES["default"] if name in passes)


@dataclass
class FuzzCase:
    model: onnx.ModelProto
    batch: int
    blocks: list[str] = field(default_factory=list)

    def describe(self) -> str:
        opset = self.model.opset_import[0].version
        dims = [d.dim_param or d.dim_value for d in self.model.graph.input[0].type.tensor_type.shape.dim]
        return f"opset {opset}, input {dims}, batch {self.batch}: " + " -> ".join(self.blocks)


class GraphBuilder:
    """Appends nodes to a chain; ``self.x`` is the running tensor, ``self.shape`` its shape (batch first)."""

    def __init__(self, opset: int, seed: int, shape: tuple[int, ...]):
        self.opset, self.rng, self.shape = opset, np.random.default_rng(seed), shape
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[TensorProto] = []
        self.x = "x"
        self._count = 0

    def fresh(self, hint: str) -> str:
        self._count += 1
        separator = "_" if hint[-1].isdigit() else ""  # "sqrt2" + "1" would be Sqrt output 21's name
        return f"{hint}{separator}{self._count}"

    def const(self, value, hint: str = "c", dtype=np.float32) -> str:
        name = self.fresh(hint)
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def weight(self, shape, scale: float = 0.5) -> str:
        return self.const(self.rng.normal(0, scale, shape), "w")

    def op(self, op_type: str, inputs: list[str], **attrs) -> str:
        out = self.fresh(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def reduce_mean(self, x: str, axis: int) -> str:
        if self.opset >= 18:
            return self.op("ReduceMean", [x, self.const([axis], "axes", np.int64)], keepdims=1)
        return self.op("ReduceMean", [x], axes=[axis], keepdims=1)

    def channel_shape(self) -> tuple[int, ...]:
        """Shape of a per-channel constant that broadcasts against the running tensor."""
        return (self.shape[1],) + (1,) * (len(self.shape) - 2) if len(self.shape) == 4 else (self.shape[-1],)


# --- blocks: each draws its variant, appends nodes, updates b.x / b.shape and returns a label ------------


def _activation(draw, b: GraphBuilder, x: str) -> tuple[str, str]:
    kind = draw(st.sampled_from(["relu", "relu6", "sigmoid", "hardswish", "hardsigmoid", "none"]))
    if kind == "relu":
        return b.op("Relu", [x]), kind
    if kind == "sigmoid":
        return b.op("Sigmoid", [x]), kind
    if kind == "relu6":
        return b.op("Clip", [x, b.const(0.0, "zero"), b.const(6.0, "six")]), kind
    if kind in ("hardswish", "hardsigmoid"):
        clipped = b.op(
            "Clip", [b.op("Add", [x, b.const(3.0, "three")]), b.const(0.0, "zero"), b.const(6.0, "six")]
        )
        if kind == "hardsigmoid":
            return b.op("Div", [clipped, b.const(6.0, "six")]), kind
        form = draw(st.sampled_from(["div", "mul-sixth", "swapped"]))
        if form == "div":
            return b.op("Div", [b.op("Mul", [x, clipped]), b.const(6.0, "six")]), kind + "/div"
        if form == "mul-sixth":
            return b.op("Mul", [b.op("Mul", [x, clipped]), b.const(1 / 6, "sixth")]), kind + "/mul"
        return b.op("Div", [b.op("Mul", [clipped, x]), b.const(6.0, "six")]), kind + "/swapped"
    return x, kind


def _batchnorm(b: GraphBuilder, x: str, channels: int) -> str:
    r = b.rng
    params = [
        b.const(r.uniform(0.5, 1.5, channels), "gamma"),
        b.const(r.normal(0, 0.2, channels), "beta"),
        b.const(r.normal(0, 0.2, channels), "mean"),
        b.const(r.uniform(0.5, 2.0, channels), "var"),
    ]
    return b.op("BatchNormalization", [x, *params], epsilon=float(r.choice([1e-5, 1e-3])))


def conv_block(draw, b: GraphBuilder) -> str:
    _, c, h, w = b.shape
    depthwise = draw(st.booleans())
    cout = c if depthwise else draw(st.integers(1, 8))
    k = draw(st.sampled_from([1, 3]))
    stride = 2 if min(h, w) >= 8 and draw(st.booleans()) else 1
    inputs = [b.x, b.weight((cout, 1 if depthwise else c, k, k))]
    if draw(st.booleans()):
        inputs.append(b.const(b.rng.normal(0, 0.1, cout), "bias"))
    y = b.op(
        "Conv",
        inputs,
        kernel_shape=[k, k],
        pads=[k // 2] * 4,
        strides=[stride] * 2,
        group=c if depthwise else 1,
    )
    bn = draw(st.booleans())
    if bn:
        y = _batchnorm(b, y, cout)
    b.x, act = _activation(draw, b, y)
    b.shape = (b.shape[0], cout, -(-h // stride), -(-w // stride))
    return f"{'dw' if depthwise else ''}conv{k}x{k}/s{stride}{'+bn' if bn else ''}+{act}"


def conv_transpose_block(draw, b: GraphBuilder) -> str:
    _, c, h, w = b.shape
    cout = draw(st.integers(1, 8))
    up = max(h, w) <= 6 and draw(st.booleans())
    k, stride, pad = (2, 2, 0) if up else (3, 1, 1)
    inputs = [b.x, b.weight((c, cout, k, k))]
    if draw(st.booleans()):
        inputs.append(b.const(b.rng.normal(0, 0.1, cout), "bias"))
    y = b.op("ConvTranspose", inputs, kernel_shape=[k, k], pads=[pad] * 4, strides=[stride] * 2)
    bn = draw(st.booleans())
    b.x = _batchnorm(b, y, cout) if bn else y
    b.shape = (b.shape[0], cout, h * stride, w * stride)
    return f"convtranspose/s{stride}{'+bn' if bn else ''}"


def batchnorm_block(draw, b: GraphBuilder) -> str:
    b.x = _batchnorm(b, b.x, b.shape[1])
    return "bn"


def pool_block(draw, b: GraphBuilder) -> str:
    kind = draw(st.sampled_from(["MaxPool", "AveragePool", "GlobalAveragePool"]))
    n, c, h, w = b.shape
    if kind == "GlobalAveragePool":
        b.x, b.shape = b.op(kind, [b.x]), (n, c, 1, 1)
    elif min(h, w) >= 8:
        b.x, b.shape = b.op(kind, [b.x], kernel_shape=[2, 2], strides=[2, 2]), (n, c, h // 2, w // 2)
    else:
        b.x = b.op(kind, [b.x], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    return kind


def scale_shift_block(draw, b: GraphBuilder) -> str:
    op = draw(st.sampled_from(["Mul", "Add"]))
    const = b.const(b.rng.uniform(0.5, 1.5, b.channel_shape()), "k")
    b.x = b.op(op, [const, b.x] if draw(st.booleans()) else [b.x, const])
    return op.lower() + "-const"


def concat_block(draw, b: GraphBuilder) -> str:
    _, c, h, w = b.shape
    if 2 * c > 8:
        return relu_block(draw, b)
    other = (
        b.op("Relu", [b.x])
        if draw(st.booleans())
        else b.op("Conv", [b.x, b.weight((c, c, 1, 1))], kernel_shape=[1, 1])
    )
    b.x = b.op("Concat", [b.x, other], axis=1)
    b.shape = (b.shape[0], 2 * c, h, w)
    return "concat"


def transpose_round_trip_block(draw, b: GraphBuilder) -> str:
    perm, back = ([0, 2, 3, 1], [0, 3, 1, 2]) if len(b.shape) == 4 else ([0, 2, 1], [0, 2, 1])
    if len(b.shape) == 2:
        perm = back = [1, 0]
    inner = b.op("Transpose", [b.x], perm=perm)
    inner = b.op(draw(st.sampled_from(["Relu", "Sigmoid", "Identity"])), [inner])
    b.x = b.op("Transpose", [inner], perm=back)
    return "transpose-round-trip"


def residual_block(draw, b: GraphBuilder) -> str:
    if len(b.shape) == 4:
        c = b.shape[1]
        branch = b.op("Conv", [b.x, b.weight((c, c, 3, 3), 0.2)], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    else:
        d = b.shape[-1]
        branch = b.op("MatMul", [b.x, b.weight((d, d), 0.3)])
    b.x = b.op("Add", [b.x, branch] if draw(st.booleans()) else [branch, b.x])
    return "residual"


def flatten_block(draw, b: GraphBuilder) -> str:
    n, c, h, w = b.shape
    if draw(st.booleans()):
        b.x = b.op("Reshape", [b.x, b.const([0, -1], "shape", np.int64)])
    else:
        b.x = b.op("Flatten", [b.x], axis=1)
    b.shape = (n, c * h * w)
    return "flatten"


def matmul_block(draw, b: GraphBuilder) -> str:
    d, dout = b.shape[-1], draw(st.integers(1, 16))
    gemm = len(b.shape) == 2 and draw(st.booleans())
    if gemm:
        trans_b = draw(st.booleans())
        inputs = [b.x, b.weight((dout, d) if trans_b else (d, dout), 0.3)]
        if draw(st.booleans()):
            inputs.append(b.const(b.rng.normal(0, 0.1, dout), "bias"))
        alpha, beta = draw(st.sampled_from([(1.0, 1.0), (0.5, 2.0)]))
        b.x = b.op("Gemm", inputs, transB=int(trans_b), alpha=alpha, beta=beta)
        label = "gemm"
    else:
        y = b.op("MatMul", [b.x, b.weight((d, dout), 0.3)])
        bias = draw(st.sampled_from(["add", "add-swapped", "none"]))
        if bias != "none":
            const = b.const(b.rng.normal(0, 0.1, dout), "bias")
            y = b.op("Add", [y, const] if bias == "add" else [const, y])
        b.x, label = y, f"matmul+{bias}"
    b.shape = b.shape[:-1] + (dout,)
    b.x, act = _activation(draw, b, b.x)
    return f"{label}+{act}"


def features_batchnorm_block(draw, b: GraphBuilder) -> str:
    b.x = _batchnorm(b, b.x, b.shape[1])
    return "bn1d"


def layernorm_block(draw, b: GraphBuilder) -> str:
    x, d = b.x, b.shape[-1]
    axis = draw(st.sampled_from([-1, len(b.shape) - 1]))
    mean = b.reduce_mean(x, axis)
    diff = b.op("Sub", [x, mean])
    square = b.op("Pow", [diff, b.const(2.0, "two")]) if draw(st.booleans()) else b.op("Mul", [diff, diff])
    std = b.op("Sqrt", [b.op("Add", [b.reduce_mean(square, axis), b.const(1e-5, "eps")])])
    norm = b.op("Div", [diff, std]) if draw(st.booleans()) else b.op("Mul", [diff, b.op("Reciprocal", [std])])
    affine = draw(st.sampled_from(["scale+bias", "scale", "none"]))
    if affine != "none":
        norm = b.op("Mul", [norm, b.const(b.rng.uniform(0.5, 1.5, d), "gamma")])
    if affine == "scale+bias":
        norm = b.op("Add", [norm, b.const(b.rng.normal(0, 0.1, d), "beta")])
    b.x = norm
    return f"layernorm({affine})"


def gelu_block(draw, b: GraphBuilder) -> str:
    x = b.x
    form = draw(st.sampled_from(["erf-div", "erf-mul", "tanh"]))
    if form == "tanh":
        cube = b.op("Pow", [x, b.const(3.0, "three")])
        inner = b.op("Add", [x, b.op("Mul", [cube, b.const(0.044715, "k")])])
        t = b.op("Tanh", [b.op("Mul", [inner, b.const(np.sqrt(2 / np.pi), "k")])])
    elif form == "erf-div":
        t = b.op("Erf", [b.op("Div", [x, b.const(np.sqrt(2.0), "sqrt2")])])
    else:
        t = b.op("Erf", [b.op("Mul", [x, b.const(1 / np.sqrt(2.0), "rsqrt2")])])
    one_plus = b.op("Add", [t, b.const(1.0, "one")])
    if draw(st.booleans()):
        b.x = b.op("Mul", [b.op("Mul", [x, one_plus]), b.const(0.5, "half")])
    else:
        b.x = b.op("Mul", [b.op("Mul", [x, b.const(0.5, "half")]), one_plus])
    return f"gelu/{form}"


def activation_block(draw, b: GraphBuilder) -> str:
    b.x, act = _activation(draw, b, b.x)
    return act


def relu_block(draw, b: GraphBuilder) -> str:
    b.x = b.op("Relu", [b.x])
    return "relu"


def noop_block(draw, b: GraphBuilder) -> str:
    kind = draw(st.sampled_from(["Identity", "Dropout", "Dropout-ratio"]))
    if kind == "Dropout-ratio" and b.opset >= 12:
        b.x = b.op("Dropout", [b.x, b.const(0.3, "ratio")])
    else:
        b.x = b.op(kind.split("-")[0], [b.x])
    return kind.lower()


def sequence_reshape_block(draw, b: GraphBuilder) -> str:
    """(N, T, D) <-> (N, T*D) keeps the batch dim (0 copies it, so a symbolic batch stays fine)."""
    if len(b.shape) == 3:
        n, t, d = b.shape
        b.x, b.shape = b.op("Reshape", [b.x, b.const([0, t * d], "shape", np.int64)]), (n, t * d)
        return "reshape-to-2d"
    return relu_block(draw, b)


IMAGE_BLOCKS = [
    conv_block,
    conv_block,
    conv_transpose_block,
    batchnorm_block,
    pool_block,
    scale_shift_block,
    concat_block,
    transpose_round_trip_block,
    residual_block,
    activation_block,
    noop_block,
    flatten_block,
]
VECTOR_BLOCKS = [
    matmul_block,
    matmul_block,
    layernorm_block,
    gelu_block,
    activation_block,
    residual_block,
    transpose_round_trip_block,
    noop_block,
    scale_shift_block,
    sequence_reshape_block,
]


def _extra_outputs(draw, taken: list[tuple[str, tuple[int, ...]]], final: str, batch_dim) -> list:
    """Value infos for up to two intermediate tensors that also become graph outputs."""
    candidates = sorted({name: shape for name, shape in taken if name not in ("x", final)}.items())
    if not candidates:
        return []
    chosen = draw(st.permutations(candidates))[: draw(st.integers(0, 2))]
    return [helper.make_tensor_value_info(name, TensorProto.FLOAT, [batch_dim, *shape[1:]])
            for name, shape in chosen]


@st.composite
def fuzz_models(draw, max_blocks: int = 6, extra_outputs: bool = False) -> FuzzCase:
    """A random valid model with one float input 'x' and output 'y' (and, if asked, more outputs)."""
    opset = draw(st.sampled_from(OPSETS))
    batch = draw(st.integers(1, 2))
    layout = draw(st.sampled_from(["image", "image", "sequence", "features"]))
    if layout == "image":
        shape = (batch, draw(st.integers(1, 8)), draw(st.integers(4, 12)), draw(st.integers(4, 12)))
    elif layout == "sequence":
        shape = (batch, draw(st.integers(1, 6)), draw(st.integers(1, 16)))
    else:
        shape = (batch, draw(st.integers(1, 16)))
    b = GraphBuilder(opset, draw(st.integers(0, 2**16)), shape)
    labels, taken = [], []
    for _ in range(draw(st.integers(1, max_blocks))):
        if len(b.shape) == 4:
            blocks = IMAGE_BLOCKS
        else:
            blocks = VECTOR_BLOCKS + ([features_batchnorm_block] if len(b.shape) == 2 else [])
        labels.append(draw(st.sampled_from(blocks))(draw, b))
        taken.append((b.x, b.shape))
    b.nodes.append(helper.make_node("Identity", [b.x], ["y"], name="output"))
    dims = ["N" if draw(st.booleans()) else batch, *shape[1:]]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [dims[0], *b.shape[1:]])]
    if extra_outputs:
        outputs += _extra_outputs(draw, taken, b.x, dims[0])
        labels += [f"output {o.name}" for o in outputs[1:]]
    graph = helper.make_graph(
        b.nodes,
        "fuzz",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
        outputs,
        b.inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="onnxq-fuzz"
    )
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return FuzzCase(model, batch, labels)
