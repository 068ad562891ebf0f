"""The one-op cases ``tools.qnn_probe`` compiles: the case table (``tools.qnn_probe_build`` builds them).

A case is one ONNX op with its inputs described by role (:class:`Act` graph input, :class:`Weight`,
:class:`Bias`, :class:`ActConst`, :class:`Param`, ...). :func:`build_case` turns a case and a precision into
an opset-21 model that passes ``onnx.checker``, following the quantizer's conventions:

* activations (every float graph input and output, and constant inputs of non-weight ops) are per-tensor
  asymmetric ``uint8``/``uint16``, range ``[min(0, lo), max(0, hi)]`` of the values they carry;
* weights are symmetric signed (zero point 0) per output channel, or per tensor in ``*_per_tensor`` cases;
* ``*_lpbq`` cases (a8w4/a16w4 only) quantize the weight with onnxq's LPBQ (int4 per block of 32 input
  channels, 96 of them, 64 output channels; block scales k·c): float32 block scales, or (``*_lpbq_int``)
  uint8 k through a DequantizeLinear by c feeding the weight DequantizeLinear's scale, the explicit chain the
  QNN EP fuses. ``conv_lpbq_block16`` has blocks of 16 and 48 input channels (an odd block count), which
  decides whether the table may use blocks of 16;
* biases are ``int32`` with ``scale = s_act · s_w`` (per channel where the weight is; LPBQ: s_act · c),
  zero point 0;
* shape/parameter inputs stay plain constants; ``fp16`` is the float model itself, no Q/DQ.

Inputs are drawn from a generator seeded by the case name, so every process builds identical models.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import ml_dtypes
import numpy as np

OPSET, IR_VERSION = 21, 10
#: precision -> (activation bits, weight bits); fp16 has no quantization.
PRECISIONS: dict[str, tuple[int, int] | None] = {
    "a8w8": (8, 8), "a16w8": (16, 8), "a16w16": (16, 16), "a8w4": (8, 4), "a16w4": (16, 4), "fp16": None,
}
#: Weightless ops: only these are probed, the others copied from the one of the same activation width.
PROBED_WEIGHTLESS = ("a8w8", "a16w8", "fp16")
DERIVED_FROM = {"a16w16": "a16w8", "a8w4": "a8w8", "a16w4": "a16w8"}
#: LPBQ cases: 4-bit weights only; their other precisions are recorded as not applicable.
LPBQ_PRECISIONS = ("a8w4", "a16w4")
_UNSIGNED = {8: np.uint8, 16: np.uint16}
_SIGNED = {4: ml_dtypes.int4, 8: np.int8, 16: np.int16}


# ---------------------------------------------------------------------------------------- input roles
@dataclass(frozen=True, eq=False)
class Act:
    """A float graph input, uniform in [low, high]."""
    shape: tuple[int, ...]
    low: float = -2.0
    high: float = 2.0


@dataclass(frozen=True, eq=False)
class Indices:
    """An int64 graph input in [0, high)."""
    shape: tuple[int, ...]
    high: int


@dataclass(frozen=True, eq=False)
class Condition:
    """A bool graph input."""
    shape: tuple[int, ...]


@dataclass(frozen=True, eq=False)
class Weight:
    """A weight initializer: symmetric signed, per channel along ``axis`` (None: per tensor)."""
    value: np.ndarray
    axis: int | None


@dataclass(frozen=True, eq=False)
class BlockWeight:
    """An LPBQ weight: per block of ``block`` along ``block_axis``, one float scale per ``channel_axis``;
    ``int_scales`` writes the integer block scales as uint8 through a DequantizeLinear."""
    value: np.ndarray
    channel_axis: int
    block_axis: int
    int_scales: bool = False
    block: int = 32


@dataclass(frozen=True, eq=False)
class Bias:
    """An int32 bias whose scale is the product of the scales of input slots ``of``."""
    value: np.ndarray
    of: tuple[int, int] = (0, 1)


@dataclass(frozen=True, eq=False)
class ActConst:
    """A float constant of a non-weight op, quantized like an activation."""
    value: np.ndarray


@dataclass(frozen=True, eq=False)
class Param:
    """A shape/parameter input, never quantized."""
    value: np.ndarray


Slot = Act | Indices | Condition | Weight | BlockWeight | Bias | ActConst | Param | None


@dataclass(frozen=True, eq=False)
class OpSpec:
    op: str
    inputs: list[Slot]
    attrs: dict = field(default_factory=dict)
    outputs: int = 1
    fixed_output: str | None = None  # "unit": [0, 1) (Sigmoid, Softmax); "tanh": [-1, 1)


@dataclass(frozen=True)
class Case:
    key: str
    op: str
    variant: str
    make: Callable[[np.random.Generator], OpSpec]

    @property
    def weighted(self) -> bool:
        return any(isinstance(s, (Weight, BlockWeight)) for s in self.make(np.random.default_rng(0)).inputs)

    @property
    def lpbq(self) -> bool:
        return any(isinstance(s, BlockWeight) for s in self.make(np.random.default_rng(0)).inputs)


def case_precisions(key: str) -> tuple[str, ...]:
    """The precisions a model can be built at for case ``key``."""
    return LPBQ_PRECISIONS if CASES[key].lpbq else tuple(PRECISIONS)


# ------------------------------------------------------------------------------------------ case table
X4 = (1, 8, 8, 8)


def _w(rng, *shape):
    return (rng.standard_normal(shape) * 0.3).astype(np.float32)


def _w_blocks(rng, *shape, axis, block=16):
    """Like ``_w``, with every block along ``axis`` scaled by its own factor in [0.3, 3]."""
    factor = np.repeat(rng.uniform(0.3, 3.0, shape[axis] // block), block).astype(np.float32)
    view = [1] * len(shape)
    view[axis] = -1
    return _w(rng, *shape) * factor.reshape(view)


def _lpbq_cases() -> list[Case]:
    cases = []
    for suffix, int_scales in (("", False), ("_int", True)):
        variant = "lpbq" + suffix
        cases += [
            Case(f"conv_{variant}", "Conv", variant, lambda r, i=int_scales: OpSpec(
                "Conv", [Act((1, 96, 8, 8)), BlockWeight(_w_blocks(r, 64, 96, 1, 1, axis=1), 0, 1, i),
                         Bias(_w(r, 64))])),
            Case(f"gemm_{variant}", "Gemm", variant, lambda r, i=int_scales: OpSpec(
                "Gemm", [Act((1, 96)), BlockWeight(_w_blocks(r, 64, 96, axis=1), 0, 1, i), Bias(_w(r, 64))],
                {"transB": 1})),
            Case(f"matmul_{variant}", "MatMul", variant, lambda r, i=int_scales: OpSpec(
                "MatMul", [Act((1, 8, 96)), BlockWeight(_w_blocks(r, 96, 64, axis=0), 1, 0, i)])),
        ]
    cases.append(Case("conv_lpbq_block16", "Conv", "lpbq_block16", lambda r: OpSpec(
        "Conv", [Act((1, 48, 8, 8)), BlockWeight(_w_blocks(r, 64, 48, 1, 1, axis=1), 0, 1, block=16),
                 Bias(_w(r, 64))])))
    return cases


def _u(rng, shape, low, high):
    return rng.uniform(low, high, shape).astype(np.float32)


def _i64(*values):
    return np.array(values, np.int64)


def _unary(op, low=-2.0, high=2.0, shape=X4, **attrs):
    return lambda rng: OpSpec(op, [Act(shape, low, high)], attrs)


def _binary(op, *, const=False, low2=-2.0, high2=2.0):
    def make(rng):
        second = ActConst(_u(rng, (1, 8, 1, 1), low2, high2)) if const else Act(X4, low2, high2)
        return OpSpec(op, [Act(X4), second])
    return make


def _fixed(op, fixed, calibrated_low, calibrated_high, shape=X4, **attrs):
    """Two cases: output scale from the observed range, and the op's fixed output range."""
    key = op.lower()
    return [
        Case(f"{key}_calibrated", op, "calibrated",
             _unary(op, calibrated_low, calibrated_high, shape, **attrs)),
        Case(f"{key}_fixed", op, "fixed", lambda rng: OpSpec(
            op, [Act(shape, calibrated_low, calibrated_high)], attrs, fixed_output=fixed)),
    ]


def _layernorm(bias_role):
    def make(rng):
        bias = _u(rng, (32,), -0.5, 0.5)
        return OpSpec("LayerNormalization", [Act((1, 8, 32)), ActConst(_u(rng, (32,), 0.5, 1.5)),
                                             bias_role(bias)], {"axis": -1, "epsilon": 1e-5})
    return make


def _cases() -> list[Case]:
    c = [
        Case("conv", "Conv", "", lambda r: OpSpec(
            "Conv", [Act(X4), Weight(_w(r, 16, 8, 3, 3), 0), Bias(_w(r, 16))], {"pads": [1, 1, 1, 1]})),
        Case("conv_depthwise", "Conv", "depthwise", lambda r: OpSpec(
            "Conv", [Act(X4), Weight(_w(r, 8, 1, 3, 3), 0), Bias(_w(r, 8))],
            {"pads": [1, 1, 1, 1], "group": 8})),
        Case("conv1d", "Conv", "1d", lambda r: OpSpec(
            "Conv", [Act((1, 8, 16)), Weight(_w(r, 16, 8, 3), 0), Bias(_w(r, 16))], {"pads": [1, 1]})),
        Case("convtranspose", "ConvTranspose", "", lambda r: OpSpec(
            "ConvTranspose", [Act(X4), Weight(_w(r, 8, 8, 2, 2), 1), Bias(_w(r, 8))], {"strides": [2, 2]})),
        Case("gemm", "Gemm", "", lambda r: OpSpec(
            "Gemm", [Act((1, 32)), Weight(_w(r, 16, 32), 0), Bias(_w(r, 16))], {"transB": 1})),
        Case("gemm_per_tensor", "Gemm", "per_tensor", lambda r: OpSpec(
            "Gemm", [Act((1, 32)), Weight(_w(r, 16, 32), None), Bias(_w(r, 16))], {"transB": 1})),
        Case("matmul_const", "MatMul", "const", lambda r: OpSpec(
            "MatMul", [Act((1, 8, 32)), Weight(_w(r, 32, 16), 1)])),
        Case("matmul_const_per_tensor", "MatMul", "const_per_tensor", lambda r: OpSpec(
            "MatMul", [Act((1, 8, 32)), Weight(_w(r, 32, 16), None)])),
        Case("matmul_act", "MatMul", "act", lambda r: OpSpec("MatMul", [Act((1, 8, 32)), Act((1, 32, 16))])),
        Case("add", "Add", "", _binary("Add", low2=-4, high2=1)),
        Case("add_const", "Add", "const", _binary("Add", const=True)),
        Case("sub", "Sub", "", _binary("Sub", low2=-1, high2=3)),
        Case("mul", "Mul", "", _binary("Mul", low2=-1, high2=3)),
        Case("mul_const", "Mul", "const", _binary("Mul", const=True)),
        Case("div", "Div", "", _binary("Div", low2=0.5, high2=2)),
        Case("div_const", "Div", "const", _binary("Div", const=True, low2=0.5, high2=2)),
        Case("relu", "Relu", "", _unary("Relu")),
        Case("clip", "Clip", "", lambda r: OpSpec(
            "Clip", [Act(X4, -3, 8), Param(np.array(0.0, np.float32)), Param(np.array(6.0, np.float32))])),
        Case("leakyrelu", "LeakyRelu", "", _unary("LeakyRelu", alpha=0.1)),
        Case("prelu", "PRelu", "", lambda r: OpSpec(
            "PRelu", [Act(X4), ActConst(_u(r, (8, 1, 1), 0.05, 0.3))])),
        *_fixed("Sigmoid", "unit", -6, 6),
        *_fixed("Tanh", "tanh", -3, 3),
        *_fixed("Softmax", "unit", -4, 4, shape=(1, 8, 16), axis=-1),
        Case("hardswish", "HardSwish", "", _unary("HardSwish", -4, 4)),
        Case("hardsigmoid", "HardSigmoid", "", _unary("HardSigmoid", -4, 4)),
        Case("gelu", "Gelu", "", _unary("Gelu", -4, 4)),
        Case("gelu_tanh", "Gelu", "tanh", _unary("Gelu", -4, 4, approximate="tanh")),
        Case("erf", "Erf", "", _unary("Erf")),
        Case("exp", "Exp", "", _unary("Exp")),
        Case("sqrt", "Sqrt", "", _unary("Sqrt", 0.1, 4)),
        Case("pow", "Pow", "", lambda r: OpSpec("Pow", [Act(X4), ActConst(np.array(2.0, np.float32))])),
        Case("neg", "Neg", "", _unary("Neg")),
        Case("layernormalization_bias_act", "LayerNormalization", "bias_act", _layernorm(ActConst)),
        Case("layernormalization_bias_int32", "LayerNormalization", "bias_int32", _layernorm(Bias)),
        Case("reducemean", "ReduceMean", "", lambda r: OpSpec("ReduceMean", [Act(X4), Param(_i64(2, 3))])),
        Case("reducemax", "ReduceMax", "", lambda r: OpSpec("ReduceMax", [Act(X4), Param(_i64(1))])),
        Case("concat", "Concat", "", lambda r: OpSpec("Concat", [Act(X4), Act(X4, -4, 1)], {"axis": 1})),
        Case("reshape", "Reshape", "", lambda r: OpSpec("Reshape", [Act(X4), Param(_i64(1, 8, 64))])),
        Case("transpose", "Transpose", "", _unary("Transpose", perm=[0, 2, 3, 1])),
        Case("flatten", "Flatten", "", _unary("Flatten", axis=1)),
        Case("squeeze", "Squeeze", "", lambda r: OpSpec("Squeeze", [Act((1, 8, 1, 8)), Param(_i64(2))])),
        Case("unsqueeze", "Unsqueeze", "", lambda r: OpSpec("Unsqueeze", [Act((1, 8, 16)), Param(_i64(2))])),
        Case("maxpool", "MaxPool", "", _unary("MaxPool", kernel_shape=[2, 2], strides=[2, 2])),
        Case("averagepool", "AveragePool", "", _unary("AveragePool", kernel_shape=[2, 2], strides=[2, 2])),
        Case("globalaveragepool", "GlobalAveragePool", "", _unary("GlobalAveragePool")),
        Case("resize_nearest", "Resize", "nearest", lambda r: OpSpec(
            "Resize", [Act(X4), None, Param(np.array([1, 1, 2, 2], np.float32))],
            {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"})),
        Case("resize_linear", "Resize", "linear", lambda r: OpSpec(
            "Resize", [Act(X4), None, Param(np.array([1, 1, 2, 2], np.float32))],
            {"mode": "linear", "coordinate_transformation_mode": "half_pixel"})),
        Case("slice", "Slice", "", lambda r: OpSpec(
            "Slice", [Act(X4), Param(_i64(0, 2)), Param(_i64(8, 6)), Param(_i64(2, 3))])),
        Case("split", "Split", "", lambda r: OpSpec("Split", [Act(X4), Param(_i64(4, 4))], {"axis": 1}, 2)),
        Case("gather", "Gather", "", lambda r: OpSpec(
            "Gather", [ActConst(_u(r, (16, 8), -1, 1)), Indices((1, 4), 16)], {"axis": 0})),
        Case("where", "Where", "", lambda r: OpSpec("Where", [Condition(X4), Act(X4), Act(X4, -1, 3)])),
        Case("pad", "Pad", "", lambda r: OpSpec("Pad", [Act(X4), Param(_i64(0, 0, 1, 1, 0, 0, 1, 1))])),
        *_lpbq_cases(),
    ]
    return c


CASES: dict[str, Case] = {case.key: case for case in _cases()}
