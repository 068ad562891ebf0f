"""QNN HTP capability tables, built from the probe's data (``capabilities.json``) for one HTP arch.

The rows say *how* each op is quantized for the HTP (ORT's QNN EP conventions: uint8/uint16 activations
per tensor, symmetric int8 weights per output channel, MatMul weights per tensor, int32 bias = s_act·s_w,
fixed output ranges where the kernel requires them). *Which* rows and precisions an arch gets is data:
``tools/qnn_probe.py`` compiles one-op models per arch on the simulator and records what ran fully on the
HTP; a row or precision the probe did not see run is not in the table. The table is full-offload: the HTP
runs only quantized ops, so every covered op is quantized, graph inputs and outputs included.

int4 weights (a8w4, a16w4) are LPBQ where the probe's ``*_lpbq`` cases ran accurately for the row: int4 per
block of 64 input channels (32 where they do not divide; 16 only where the probe's ``conv_lpbq_block16`` ran
accurately: from v69 the HTP computes 16-blocks wrongly when their count is odd), block scales k·c with k in
[1, 16] and one float c per output channel. Each row takes the LPBQ form its probe cases accepted at more
precisions: float32 block scales (which the EP turns into LPBQ, ``enable_block_quant_weight_optimization``; probe 2.7:
pointwise Conv and MatMul, Gemm from v73, 16-bit activations only) or uint8 k through a DequantizeLinear
(the explicit chain the EP fuses; MatMul at both widths). Other weights stay int4 per channel.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

from onnxq.backends.capability import (
    CapabilityTable,
    FusionBarrier,
    Match,
    PatternRow,
    Precision,
    RowKind,
    conv_weight_axis,
    gemm_block_axis,
    gemm_weight_axis,
    matmul_block_axis,
    matmul_weight_axis,
)
from onnxq.backends.qnn.socs import Soc
from onnxq.quant.spec import activation_spec

CAPABILITIES = Path(__file__).with_name("capabilities.json")

#: The HTP (QNN 2.51, every arch v73..v81) saturates int16 weights above 32639 (= 32767 - 128) to 32639 in
#: Conv, depthwise Conv, Gemm and MatMul; negative ones are read down to -32768. Symmetric per-channel
#: weights put +32767 in every channel whose largest magnitude is positive: EfficientNet-Lite0's a16w16
#: Convs were up to 8000 16-bit steps off the CPU EP (logits 0.071 relative L2 against the FP32 model,
#: where the CPU EP measured 0.002). a16w16 weights are scaled to 32639 instead (0.4% coarser).
#: tests/test_qnn_int16_weights.py checks the saturation and the fix on the simulator.
HTP_INT16_WEIGHT_MAX = 32639

PRECISIONS = {
    "a8w8": Precision("a8w8", activation_spec("uint8"), "int8", level=0),
    "a16w8": Precision("a16w8", activation_spec("uint16"), "int8", level=1),
    "a16w16": Precision("a16w16", activation_spec("uint16"), "int16", level=2,
                        weight_max_level=HTP_INT16_WEIGHT_MAX),
    # int4 weights, symmetric per output channel (recipe choices for size; never picked by fall-back):
    "a8w4": Precision("a8w4", activation_spec("uint8"), "int4", level=-2),
    "a16w4": Precision("a16w4", activation_spec("uint16"), "int4", level=-1),
}
#: what an int4 precision gains on an arch where some row takes its weights as LPBQ
LPBQ = {"weight_block_size": 64, "weight_block_scale_bits": 4}
#: probe case with blocks of 16 (an odd count of them): where it ran accurately the smallest block is 16,
#: else 32
BLOCK16_CASE, SMALLEST_BLOCK = "conv_lpbq_block16", {True: 16, False: 32}


@dataclass(frozen=True)
class RowSpec:
    """A row template and the probe case(s) that decide whether (and at which precisions) an arch gets it."""

    row: PatternRow
    cases: tuple[str, ...]
    #: probe case whose acceptance switches the row's weights to per-channel (else per-tensor)
    per_channel_case: str | None = None
    #: probe case that runs with a calibrated output range; if it is refused, the fixed range is required
    calibrated_case: str | None = None
    #: probe cases of LPBQ weights (float32 block scales, uint8 block scales + DequantizeLinear): where one
    #: ran, the row's int4 weights become LPBQ at those precisions (the form that ran at more of them)
    lpbq_cases: tuple[str, str] | None = None
    #: said in the row's note when it takes LPBQ weights
    lpbq_note: str = ""


def _conv_ok(match: Match) -> str | None:
    weight = match.anchor.inputs[1]
    if weight is None or weight.const_value is None:
        return f"{match.anchor.op_type} with a non-constant weight: the HTP needs static quantized weights"
    if len(weight.const_value.shape) not in (3, 4):
        return f"{match.anchor.op_type} {len(weight.const_value.shape) - 2}-D: only 1-D/2-D were probed"
    return None


def _pointwise_conv_block_axis(node, index: int) -> int | None:
    """The EP's LPBQ Conv takes one block scale per (output channel, block): 2-D 1x1 Convs, group 1."""
    weight = node.inputs[1] if index == 1 and len(node.inputs) > 1 else None
    if node.op_type != "Conv" or weight is None or weight.const_value is None:
        return None
    group = node.attributes.get("group")
    shape = weight.const_value.shape
    if len(shape) != 4 or tuple(shape[2:]) != (1, 1) or (group is not None and group.value != 1):
        return None
    return 1


def _matmul_ok(match: Match) -> str | None:
    b = match.anchor.inputs[1]
    if b.const_value is not None and len(b.const_value.shape) != 2:
        return "MatMul with a batched constant weight was not probed"
    return None


def _row_specs() -> tuple[RowSpec, ...]:
    compute = dict(kind=RowKind.COMPUTE, precisions=tuple(PRECISIONS), weight_inputs=(1,))
    elementwise = dict(kind=RowKind.ELEMENTWISE, precisions=tuple(PRECISIONS))
    passthrough = dict(kind=RowKind.PASSTHROUGH, precisions=tuple(PRECISIONS))
    specs = [
        RowSpec(PatternRow("conv", ("Conv",), weight_axis=conv_weight_axis, bias_input=2, check=_conv_ok,
                           block_axis=_pointwise_conv_block_axis, **compute),
                ("conv", "conv_depthwise", "conv1d"),
                lpbq_cases=("conv_lpbq", "conv_lpbq_int"),
                lpbq_note="per-block (LPBQ) weights only for 1x1 Convs of group 1: the EP's LPBQ Conv takes "
                          "one block scale per output channel and block; other Convs stay per channel"),
        RowSpec(PatternRow("convtranspose", ("ConvTranspose",), weight_axis=conv_weight_axis, bias_input=2,
                           check=_conv_ok, **compute), ("convtranspose",)),
        RowSpec(PatternRow("gemm", ("Gemm",), weight_axis=gemm_weight_axis, bias_input=2,
                           block_axis=gemm_block_axis, **compute),
                ("gemm_per_tensor",), per_channel_case="gemm", lpbq_cases=("gemm_lpbq", "gemm_lpbq_int")),
        RowSpec(PatternRow("matmul", ("MatMul",), weight_axis=matmul_weight_axis, check=_matmul_ok,
                           block_axis=matmul_block_axis,
                           note="constant B per tensor unless the probe saw per-channel run; A·B of two "
                                "activations both per tensor", **compute),
                ("matmul_const_per_tensor", "matmul_act"), per_channel_case="matmul_const",
                lpbq_cases=("matmul_lpbq", "matmul_lpbq_int")),
        RowSpec(PatternRow("concat", ("Concat",), RowKind.SHARED, tuple(PRECISIONS),
                           note="one scale for inputs and output; dissolved when ranges differ > 10x"),
                ("concat",)),
        RowSpec(PatternRow("sigmoid", ("Sigmoid",), fixed_output="unit", **elementwise),
                ("sigmoid_fixed",), calibrated_case="sigmoid_calibrated"),
        RowSpec(PatternRow("tanh", ("Tanh",), fixed_output="signed_unit", **elementwise),
                ("tanh_fixed",), calibrated_case="tanh_calibrated"),
        RowSpec(PatternRow("softmax", ("Softmax",), fixed_output="unit", **elementwise),
                ("softmax_fixed",), calibrated_case="softmax_calibrated"),
        RowSpec(PatternRow("hardsigmoid", ("HardSigmoid",), fixed_output="unit", **elementwise),
                ("hardsigmoid",), calibrated_case="hardsigmoid"),
        RowSpec(PatternRow("clip", ("Clip",), data_inputs=(0,), clamp=True, **elementwise), ("clip",)),
        RowSpec(PatternRow("relu", ("Relu",), clamp=True, **elementwise), ("relu",)),
        RowSpec(PatternRow("pad", ("Pad",), data_inputs=(0,), **elementwise), ("pad",)),
        RowSpec(PatternRow("resize", ("Resize",), data_inputs=(0,), **elementwise),
                ("resize_nearest", "resize_linear")),
        RowSpec(PatternRow("where", ("Where",), data_inputs=(1, 2), **elementwise), ("where",)),
        RowSpec(PatternRow("gather", ("Gather",), data_inputs=(0,), **elementwise), ("gather",)),
        RowSpec(PatternRow("pow", ("Pow",), data_inputs=(0, 1), **elementwise), ("pow",)),
        RowSpec(PatternRow("layernormalization", ("LayerNormalization",), **elementwise),
                ("layernormalization_bias_act",)),
        RowSpec(PatternRow("add", ("Add",), **elementwise), ("add", "add_const")),
    ]
    for op in ("Sub", "Mul", "Div", "LeakyRelu", "PRelu", "HardSwish", "Gelu", "Erf",
               "Exp", "Sqrt", "Neg", "ReduceMean", "ReduceMax", "AveragePool", "GlobalAveragePool"):
        specs.append(RowSpec(PatternRow(op.lower(), (op,), **elementwise), (op.lower(),)))
    for op in ("MaxPool", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Slice", "Split"):
        specs.append(RowSpec(PatternRow(op.lower(), (op,), **passthrough), (op.lower(),)))
    return tuple(specs)


@functools.cache
def load_capabilities(path: Path = CAPABILITIES) -> dict:
    return json.loads(path.read_text())


#: The HTP (QNN 2.51, every arch v68..v81) fuses Conv + x·Sigmoid(x) into one kernel; with 16-bit activations
#: that kernel writes whole rows wrongly for many output shapes (heights 9..12 of a 10-wide map, any height
#: >= 9 of a 3-wide one), while Conv, Sigmoid and Mul each run to 1 LSB. YOLOv8's SiLUs after its 10x10
#: Convs made a16w16 outputs 8-24% off the CPU EP's; with the barrier they agree to 1%.
#: tests/test_qnn_fusion_barrier.py checks both facts on the simulator.
SILU_BARRIER = FusionBarrier(
    "silu", ("Conv",), (16,),
    "the HTP's fused 16-bit Conv+SiLU kernel writes wrong rows (Conv -> SiLU on [1, 32, 10, 10]: relative "
    "error 0.49; separate kernels: 1e-4)")

#: a probe result counts only if the HTP's output is within this many 8-bit steps of the CPU EP's (16-bit
#: results are scaled: 256 16-bit steps are one 8-bit step)
MAX_ERROR_8BIT_STEPS = 4.0


def _accepted(arch_data: dict, case: str, *, overridden: bool = True) -> set[str]:
    """Precisions the probe saw run accurately; ``overridden=False`` also drops those where the runtime
    said it replaced the output encoding (16-bit Sigmoid/Tanh/HardSigmoid: QNN imposes a fixed range)."""
    results = arch_data["cases"].get(case, {}).get("results", {})
    accepted = set()
    for name, result in results.items():
        if not result.get("ok") or (not overridden and result.get("override")):
            continue
        bits = 16 if name.startswith("a16") else 8
        error = result.get("err_lsb")
        if error is None or error / float(1 << (bits - 8)) <= MAX_ERROR_8BIT_STEPS:
            accepted.add(name)
    return accepted


def build_table(soc: Soc, capabilities: dict | None = None) -> CapabilityTable:
    data = (capabilities or load_capabilities())["archs"][soc.arch]
    rows = []
    skipped = []
    for spec in _row_specs():
        accepted = set(PRECISIONS)
        for case in spec.cases:
            accepted &= _accepted(data, case)
        precisions = tuple(p for p in spec.row.precisions if p in accepted)
        if not precisions:
            skipped.append(spec.row.name)
            continue
        changes: dict = {"precisions": precisions}
        if spec.per_channel_case is not None and not set(precisions) <= _accepted(data, spec.per_channel_case):
            changes["weight_axis"] = None  # per-tensor weights
        if spec.calibrated_case is not None and set(precisions) <= _accepted(
                data, spec.calibrated_case, overridden=False):
            changes["fixed_output"] = None  # the kernel takes any range at every width: calibrate it
        if spec.lpbq_cases is not None:
            changes.update(_lpbq_changes(data, spec.lpbq_cases, precisions))
            if changes.get("block_precisions") and spec.lpbq_note:
                changes["note"] = "; ".join(filter(None, (spec.row.note, spec.lpbq_note)))
        rows.append(_replace(spec.row, **changes))
    # A precision exists on an arch when some compute row has it (weightless rows accept every activation
    # width, so they would list a16w16 even where no convolution runs it).
    used = {p for row in rows if row.kind is RowKind.COMPUTE for p in row.precisions} | {"a8w8"}
    rows = [_replace(row, precisions=tuple(p for p in row.precisions if p in used),
                     block_precisions=tuple(p for p in row.block_precisions if p in used)) for row in rows]
    blocked, small_blocks = {p for row in rows for p in row.block_precisions}, _accepted(data, BLOCK16_CASE)
    precisions = {name: _replace(p, **LPBQ, weight_min_block_size=SMALLEST_BLOCK[name in small_blocks])
                  if name in blocked else p for name, p in PRECISIONS.items() if name in used}
    notes = [f"rows and precisions from tools/qnn_probe.py on the HTP simulator "
             f"(onnxruntime-qnn {capabilities_version(capabilities)})"]
    fp16 = _fp16_note(data)
    if fp16:
        notes.append(fp16)
    if skipped:
        notes.append(f"not run fully on HTP {soc.arch} in the probe: {', '.join(sorted(skipped))}")
    return CapabilityTable(
        target=f"qnn:{soc.name}",
        summary=f"Qualcomm QNN HTP {soc.arch} ({soc.marketing}, soc_model {soc.soc_model}); full offload",
        rows=tuple(rows),
        precisions=precisions,
        default_precision="a8w8",
        fallback_precisions=tuple(p for p in ("a16w8", "a16w16") if p in precisions),
        float_fallback=False,
        opset=21,
        notes=tuple(notes),
        full_offload=True,
        static_shapes=True,
        fusion_barriers=(SILU_BARRIER,),
    )


def _lpbq_changes(arch_data: dict, cases: tuple[str, str], precisions: tuple[str, ...]) -> dict:
    """Row changes for LPBQ weights: the precisions whose LPBQ case ran, in the form that ran at more of
    them (ties: the uint8 chain, which needs no EP option and is smaller); none: per-channel int4."""
    float_case, int_case = cases
    as_float = [p for p in precisions if p in _accepted(arch_data, float_case)]
    as_int = [p for p in precisions if p in _accepted(arch_data, int_case)]
    if not as_float and not as_int:
        return {}
    if len(as_int) >= len(as_float):
        return {"block_precisions": tuple(as_int), "int_block_scales": True}
    return {"block_precisions": tuple(as_float), "int_block_scales": False}


def _fp16_note(arch_data: dict) -> str | None:
    """FP16 availability, from the probe's float runs of Conv (v68 runs them in fp32: not fp16)."""
    result = arch_data["cases"].get("conv", {}).get("results", {}).get("fp16", {})
    if not result:
        return None
    if result.get("ok") and not result.get("note"):
        return "fp16: float ops run on the HTP in fp16 (enable_htp_fp16_precision); onnxq still quantizes all"
    return "fp16: the fp16 option has no effect on this arch (the probe's float Conv ran fp32-exact)"


def capabilities_version(capabilities: dict | None = None) -> str:
    return (capabilities or load_capabilities()).get("versions", {}).get("onnxruntime_qnn", "?")


def _replace(row, **changes):
    from dataclasses import replace

    return replace(row, **changes)
