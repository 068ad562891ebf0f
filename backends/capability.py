"""Capability tables: what a target's kernels can run quantized, declared as data.

A table is an ordered tuple of ``PatternRow``s (fused patterns first: conv+relu before conv). Each row
names an op chain, how its tensors are quantized (its ``kind``), the precisions the target's kernels
support for it, and an optional check that explains a refusal in words ("MatMul with two activations:
HTP v68 needs 8-bit"). The annotator (``onnxq.quant.annotate``) walks the graph with the table; nothing in
the core asks which backend it is talking to.

Row kinds:
  COMPUTE      weights (constant inputs) quantized per channel, activation inputs and output per tensor,
               bias int32 with scale s_act·s_w (Conv, ConvTranspose, Gemm, MatMul).
  ELEMENTWISE  activation inputs and output quantized per tensor, but only next to quantized neighbours
               (an Add between two float ops would only add conversions).
  PASSTHROUGH  data movement (Reshape, Transpose, MaxPool, ...): the output shares the input's scale,
               only when the input is already quantized.
  SHARED       inputs and output share one scale (Concat); dissolved after calibration when the inputs'
               ranges differ too much for one scale (the box-coordinates-with-scores trap).

Table-wide policy (``CapabilityTable``):
  full_offload   an accelerator that runs only quantized ops (QNN HTP): every op a row covers is quantized,
                 neighbours or not, graph inputs and outputs included, and constant float inputs of
                 non-compute ops (an Add's constant, LayerNorm's gamma) are quantized per tensor like
                 activations. A float op there is an op the accelerator cannot run.
  static_shapes  the runtime needs static input shapes: ``quantize`` fixes them from the calibration data.

Per-block weights: a precision with ``weight_block_size`` quantizes a weight per block along the row's
``block_axis`` (the input channels) where the row lists the precision in ``block_precisions`` and the
channels divide into two blocks or more (the largest power of two from ``weight_block_size`` down to
``weight_min_block_size``); elsewhere the weight is per-channel at the precision's dtype. With
``weight_block_scale_bits`` the block scales are LPBQ's (integers times a float per output channel, see
``onnxq.quant.qparams``); ``int_block_scales`` on the row writes them as uint8 read through a
DequantizeLinear.

Fusion barriers (``FusionBarrier``): a runtime that fuses a unit (SiLU after a Conv) into one kernel that
computes it wrongly at some widths is kept from fusing it: the unit's gated op reads its input through a
converted copy whose range is one step wider, a Convert the runtime cannot fold (see ``onnxq.quant.engine``).

Row extras: ``data_inputs`` names which inputs are tensors (Clip bounds and Resize scales are parameters and
stay float constants); ``fixed_output`` pins an output range the kernel requires ("unit" for Sigmoid and
Softmax: scale 1/2^bits, zero point 0; "signed_unit" for Tanh: scale 2/2^bits, zero point 2^(bits-1)).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field

import onnx_ir as ir

from onnxq.quant.spec import QuantSpec, activation_spec


class RowKind(enum.Enum):
    COMPUTE = "compute"
    ELEMENTWISE = "elementwise"
    PASSTHROUGH = "passthrough"
    SHARED = "shared"


@dataclass(frozen=True)
class Precision:
    """A named precision: activation spec plus weight dtype/granularity (axis is chosen per op)."""

    name: str
    activation: QuantSpec
    weight_dtype: str | None = "int8"
    weight_per_channel: bool = True
    #: per-block weights where the row allows (see the module docstring): the largest block, the smallest
    #: block tried when the channels do not divide, and LPBQ's block-scale bits
    weight_block_size: int | None = None
    weight_min_block_size: int | None = None
    weight_block_scale_bits: int | None = None
    #: the largest integer weight the runtime reads as written (``QuantSpec.max_level``); None: the dtype's top
    weight_max_level: int | None = None
    #: cost order for fall-back: a layer moves from lower to higher ``level`` (float is above all)
    level: int = 0
    #: weights quantized offline, activations at run time (DynamicQuantizeLinear + MatMulInteger on ORT):
    #: no calibration, no activation Q/DQ; ``activation`` describes the run-time quantization
    dynamic: bool = False

    def describe(self) -> str:
        if self.dynamic:
            return f"dynamic: {self.activation.dtype.label} activations quantized at run time, {self.weight_dtype} " \
                   f"weights {'per-channel' if self.weight_per_channel else 'per-tensor'}"
        weights = "float weights" if self.weight_dtype is None else (
            f"{self.weight_dtype} weights " + ("per-channel" if self.weight_per_channel else "per-tensor")
        )
        if self.weight_dtype is not None and self.weight_block_size:
            smallest = self.weight_min_block_size or self.weight_block_size
            blocks = str(self.weight_block_size) + (f"..{smallest}" if smallest != self.weight_block_size
                                                    else "")
            lpbq = (f" (LPBQ: {self.weight_block_scale_bits}-bit integer block scales x float per channel)"
                    if self.weight_block_scale_bits else "")
            weights += f", per-block {blocks}{lpbq} where the op allows"
        if self.weight_dtype is not None and self.weight_max_level is not None:
            weights += f", at most {self.weight_max_level}"
        return f"{self.activation.dtype.label} activations, {weights}"


@dataclass(frozen=True)
class Match:
    """A matched op chain: ``nodes[0]`` is the anchor, each next node the single consumer of the last."""

    nodes: tuple[ir.Node, ...]
    variant: str

    @property
    def anchor(self) -> ir.Node:
        return self.nodes[0]

    @property
    def last(self) -> ir.Node:
        return self.nodes[-1]


#: A check returns None to accept a match, or the reason it is refused.
Check = Callable[[Match], str | None]
#: Axis of the output channels of a constant weight input, for per-channel quantization.
WeightAxis = Callable[[ir.Node, int], int | None]


@dataclass(frozen=True)
class PatternRow:
    name: str
    ops: tuple[str, ...]
    kind: RowKind
    precisions: tuple[str, ...]
    weight_inputs: tuple[int, ...] = ()
    weight_axis: WeightAxis | None = None
    bias_input: int | None = None
    check: Check | None = None
    note: str = ""
    #: indices of inputs that are tensors to quantize (None: all); the rest are parameters
    data_inputs: tuple[int, ...] | None = None
    #: "unit" ([0, 1]) or "signed_unit" ([-1, 1]): the output range the kernel requires
    fixed_output: str | None = None
    #: a clamp (Relu, Clip with constant bounds): when its input has no other reader, the input is
    #: quantized with the clamp's output range and scale, so the quantizer does the clamping and the
    #: runtime drops the op (QNN folds Relu/Clip this way) instead of wasting levels on the cut-off part
    clamp: bool = False
    #: axis of the input channels of a constant weight, along which per-block precisions block it (None:
    #: this weight is per-channel at every precision)
    block_axis: WeightAxis | None = None
    #: precisions whose per-block weights the kernel takes (others quantize the weight per channel)
    block_precisions: tuple[str, ...] = ()
    #: per-block scales written as uint8 through a DequantizeLinear (explicit LPBQ) instead of float32
    int_block_scales: bool = False

    def __post_init__(self) -> None:
        if not set(self.block_precisions) <= set(self.precisions):
            raise ValueError(f"row '{self.name}': block_precisions must be among its precisions")
        if self.fixed_output not in (None, *FIXED_RANGES):
            raise ValueError(f"row '{self.name}': fixed_output must be one of {sorted(FIXED_RANGES)}")

    def is_data_input(self, index: int) -> bool:
        return self.data_inputs is None or index in self.data_inputs


@dataclass(frozen=True)
class FusionBarrier:
    """A unit ``fuse-activations`` tags (``"silu"``: ``x·Sigmoid(x)``) that the runtime fuses with the op
    producing ``x`` into one kernel that is wrong at these activation widths; ``reason`` says what was seen.
    The engine then feeds the unit's Mul a converted copy of ``x`` (range one step wider), which the runtime
    cannot fold into the producer, so the unit runs as the separate kernels it was verified as."""

    unit: str
    producers: tuple[str, ...]
    bits: tuple[int, ...]
    reason: str

    def __post_init__(self) -> None:
        if not self.producers or not self.bits:
            raise ValueError(f"fusion barrier '{self.unit}': needs producers and bits")


#: fixed output ranges (lo, hi) a kernel may require; the top is one step short of hi (see fixed_range)
FIXED_RANGES = {"unit": (0.0, 1.0), "signed_unit": (-1.0, 1.0)}


def fixed_range(kind: str, bits: int) -> tuple[float, float]:
    """The calibration range that yields the exact fixed parameters for ``bits``-bit unsigned tensors.

    [lo, hi - (hi - lo)/2^bits] gives scale (hi - lo)/2^bits and zero point -lo/scale: 1/256 and 0 for an
    8-bit Sigmoid, 2/65536 and 32768 for a 16-bit Tanh, as QNN's kernels require.
    """
    lo, hi = FIXED_RANGES[kind]
    return lo, hi - (hi - lo) / float(1 << bits)


@dataclass(frozen=True)
class CapabilityTable:
    """A target variant's capability table; ``describe()`` prints it in words (``onnxq targets``)."""

    target: str
    summary: str
    rows: tuple[PatternRow, ...]
    precisions: dict[str, Precision]
    default_precision: str
    #: precisions a harmful layer moves through, in order, before float (empty: straight to float)
    fallback_precisions: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)
    full_offload: bool = False
    static_shapes: bool = False
    #: whether fall-back may leave layers in float as the last resort (an accelerator that runs only
    #: quantized ops would drop them to the CPU or run them at a precision nobody verified)
    float_fallback: bool = True
    #: opset models for this target are raised to before the graph passes (QNN: 21, so GELU fuses into the
    #: Gelu op the HTP runs, where the erf form would leave Erf to the CPU, and 16-bit Q/DQ is legal)
    opset: int | None = None
    #: op types whose *float* weight the runtime quantizes on its own (symmetric int8, one scale per tensor)
    #: when their data input comes from a per-tensor DequantizeLinear: ORT >= 1.20's WeightBiasQuantization
    #: does this to fuse QLinearConv, which turns a layer fall-back kept float into the worst-quantized layer
    #: of the model. The engine gives such a float layer its own DequantizeLinear with a per-channel-shaped
    #: scale (same values), which that rewrite does not match.
    requantizes_float_weights: tuple[str, ...] = ()
    #: whether a fall-back stage that cannot meet the budget hands the next stage its result with every layer
    #: moved (ORT: a dynamic MatMul runs as fast as a static one, so the float stage starts from them), or the
    #: next stage starts from the base precision again (QNN: 16-bit everywhere would halve the HTP's speed)
    fallback_cumulative: bool = False
    #: tags of units ``fuse-activations`` recognises (``"silu"``) whose ops the table quantizes one by one
    #: where the runtime has int8 kernels for them; other units stay float on CPU targets (fused there)
    quantized_units: tuple[str, ...] = ()
    #: compute ops the runtime runs faster in float when no quantized op feeds them or reads them: a lone
    #: int8 kernel pays a Quantize and a Dequantize over its whole input and output (None: no such ops)
    float_when_alone: Callable[[ir.Node], bool] | None = None
    #: runtime fusions that compute wrongly, kept from happening (see ``FusionBarrier``)
    fusion_barriers: tuple[FusionBarrier, ...] = ()

    def __post_init__(self) -> None:
        unknown_fallback = set(self.fallback_precisions) - set(self.precisions)
        if unknown_fallback:
            raise ValueError(f"{self.target}: fall-back precisions {sorted(unknown_fallback)} are not declared")
        if self.default_precision not in self.precisions:
            raise ValueError(f"{self.target}: default precision '{self.default_precision}' is not declared")
        for row in self.rows:
            unknown = set(row.precisions) - set(self.precisions)
            if unknown:
                raise ValueError(f"{self.target}: row '{row.name}' names undeclared precisions {sorted(unknown)}")

    def rows_for(self, op_type: str) -> list[PatternRow]:
        return [row for row in self.rows if row.ops[0] == op_type]

    def describe(self) -> str:
        lines = [f"{self.target}: {self.summary}"]
        if self.full_offload:
            lines.append("policy: full offload (every covered op quantized, graph inputs/outputs included)")
        if self.static_shapes:
            lines.append("policy: static input shapes (fixed from the calibration data or --input-shape)")
        lines.append("precisions:")
        for name, precision in self.precisions.items():
            mark = " (default)" if name == self.default_precision else ""
            lines.append(f"  {name}{mark}: {precision.describe()}")
        lines.append("patterns, in match order:")
        for row in self.rows:
            chain = "+".join(row.ops)
            lines.append(f"  {row.name:<22} {chain:<28} {row.kind.value:<12} {', '.join(row.precisions)}")
            if row.fixed_output:
                lines.append(f"  {'':<22} fixed output range: {row.fixed_output}")
            if row.block_precisions:
                form = ("uint8 block scales + DequantizeLinear" if row.int_block_scales
                        else "float32 block scales")
                lines.append(f"  {'':<22} per-block weights at {', '.join(row.block_precisions)} ({form})")
            if row.note:
                lines.append(f"  {'':<22} {row.note}")
        chain = [*self.fallback_precisions] + (["float"] if self.float_fallback else [])
        lines.append(f"fall-back order for harmful layers: {' -> '.join(chain) or 'none'}")
        lines.extend(f"note: {note}" for note in self.notes)
        for barrier in self.fusion_barriers:
            lines.append(f"fusion barrier: {barrier.unit} after {'/'.join(barrier.producers)} at "
                         f"{'/'.join(map(str, barrier.bits))}-bit reads a converted input: {barrier.reason}")
        return "\n".join(lines)


def a8w8(level: int = 0, *, activation: str = "uint8", weight: str = "int8") -> Precision:
    return Precision("a8w8", activation_spec(activation), weight, level=level)


def a16w8(level: int = 1, *, activation: str = "uint16", weight: str = "int8") -> Precision:
    return Precision("a16w8", activation_spec(activation), weight, level=level)


def conv_weight_axis(node: ir.Node, index: int) -> int | None:
    """Conv: W[C_out, C_in/g, k...] → axis 0. ConvTranspose: W[C_in, C_out/g, k...] → axis 1."""
    if index != 1:
        return None
    return 1 if node.op_type == "ConvTranspose" else 0


def gemm_weight_axis(node: ir.Node, index: int) -> int | None:
    """Gemm B is [K, N] (axis 1) or [N, K] with transB (axis 0); A as a weight is rare: per-tensor."""
    if index != 1:
        return None
    trans_b = node.attributes.get("transB")
    return 0 if trans_b is not None and trans_b.value else 1


def matmul_weight_axis(node: ir.Node, index: int) -> int | None:
    """MatMul B is [..., K, N]: output channels on the last axis."""
    return -1 if index == 1 else None


def gemm_block_axis(node: ir.Node, index: int) -> int | None:
    """Gemm B: K is axis 1 of [N, K] (transB) or axis 0 of [K, N]."""
    axis = gemm_weight_axis(node, index)
    return None if axis is None else 1 - axis


def matmul_block_axis(node: ir.Node, index: int) -> int | None:
    """MatMul B[..., K, N]: K on the second-last axis."""
    return -2 if index == 1 else None
