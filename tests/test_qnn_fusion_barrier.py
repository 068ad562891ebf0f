"""QNN: the HTP fuses Conv + SiLU (x·Sigmoid(x)) into one kernel that computes wrong rows with 16-bit
activations (found bisecting YOLOv8n on the simulator: its 10x10 Conv+SiLU layers). The QNN table declares a
fusion barrier: the SiLU's Mul reads a converted copy of the Conv output, so the HTP runs Conv, Sigmoid and
Mul as the separate kernels the probe verified. Runtime tests skip, with the reason, without onnxruntime-qnn.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import parser

from onnxq import api
from onnxq.backends.qnn import runtime
from onnxq.quant.metrics import relative_l2

UNAVAILABLE = runtime.available()
needs_qnn = pytest.mark.skipif(UNAVAILABLE is not None, reason=f"QNN EP unavailable: {UNAVAILABLE}")
SOC_SM8550 = "43"


def _silu_model(producer: str) -> ir.Model:
    """[1, 16, 10, 10] -> ``producer`` (a 1x1 Conv to 32 channels, or an Add) -> x·Sigmoid(x)."""
    body = {"Conv": "c = Conv(x, W, B)", "Add": "c = Add(x, x)"}[producer]
    channels = 32 if producer == "Conv" else 16
    proto = parser.parse_model(f"""
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[1, 16, 10, 10] x) => (float[1, {channels}, 10, 10] y) {{
            {body}
            s = Sigmoid(c)
            y = Mul(c, s)
        }}""")
    rng = np.random.default_rng(1)
    if producer == "Conv":
        weight = (rng.standard_normal((32, 16, 1, 1)) * 0.25).astype(np.float32)
        bias = (rng.standard_normal(32) * 0.5).astype(np.float32)
        proto.graph.initializer.extend([onnx.numpy_helper.from_array(weight, "W"),
                                        onnx.numpy_helper.from_array(bias, "B")])
    return ir.serde.deserialize_model(proto)


def _calibration() -> list[dict[str, np.ndarray]]:
    return [{"x": np.random.default_rng(i).uniform(-0.3, 5.0, (1, 16, 10, 10)).astype(np.float32)}
            for i in range(8)]


def _quantize(producer: str, precision: str) -> onnx.ModelProto:
    quantized, _ = api.quantize(_silu_model(producer), _calibration(), target="qnn:sm8550",
                                precision=precision, fallback=False, max_error=1.0)
    return ir.to_proto(quantized)


def _htp_vs_cpu(proto: onnx.ModelProto) -> float:
    """Relative L2 of the HTP's output against the CPU EP's, on the same QDQ model and input."""
    data = proto.SerializeToString()
    feed = {"x": np.random.default_rng(99).uniform(-0.3, 5.0, (1, 16, 10, 10)).astype(np.float32)}
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    cpu = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"]).run(None, feed)[0]
    with runtime.captured_stderr():
        htp = runtime.session(data, SOC_SM8550).run(None, feed)[0]
    return relative_l2(cpu, htp)


def _silu_inputs(proto: onnx.ModelProto) -> tuple[str, str]:
    """(what the Sigmoid reads, what the Mul reads besides the Sigmoid's output)."""
    sigmoid = next(n for n in proto.graph.node if n.op_type == "Sigmoid")
    gate = {}
    for node in proto.graph.node:  # the Sigmoid's output reaches the Mul through its Q/DQ pair
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            gate[node.input[0]] = node.output[0]
    gated = gate[gate[sigmoid.output[0]]]
    mul = next(n for n in proto.graph.node if n.op_type == "Mul")
    return sigmoid.input[0], next(i for i in mul.input if i != gated)


@needs_qnn
def test_16bit_conv_silu_runs_on_the_htp_as_on_the_cpu():
    proto = _quantize("Conv", "a16w8")
    assert _htp_vs_cpu(proto) < 1e-3  # 0.49 without the barrier
    sigmoid_reads, mul_reads = _silu_inputs(proto)
    assert mul_reads != sigmoid_reads, "the Mul must read a converted copy (the fusion barrier)"


@needs_qnn
def test_without_the_barrier_the_htp_fuses_and_miscomputes():
    """The runtime fact the barrier exists for: the same model with the Mul reading the Conv output's own
    Q/DQ (what onnxq wrote before) is wrong on the HTP. If this fails, QNN fixed the kernel: drop
    ``SILU_BARRIER`` from ``backends/qnn/table.py``."""
    proto = _quantize("Conv", "a16w8")
    sigmoid_reads, mul_reads = _silu_inputs(proto)
    mul = next(n for n in proto.graph.node if n.op_type == "Mul")
    mul.input[list(mul.input).index(mul_reads)] = sigmoid_reads
    assert _htp_vs_cpu(proto) > 0.1


@needs_qnn
@pytest.mark.parametrize("producer, precision", [("Conv", "a8w8"), ("Add", "a16w8")])
def test_no_barrier_where_the_htp_computes_the_unit_right(producer, precision):
    """8-bit Conv+SiLU and a SiLU after a non-Conv run right fused: no extra Convert there."""
    proto = _quantize(producer, precision)
    sigmoid_reads, mul_reads = _silu_inputs(proto)
    assert mul_reads == sigmoid_reads
    assert _htp_vs_cpu(proto) < (2e-2 if precision == "a8w8" else 1e-3)
