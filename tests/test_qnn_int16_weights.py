"""QNN: the HTP saturates int16 weights above 32639 (= 32767 - 128) to 32639, in Conv, depthwise Conv, Gemm
and MatMul, on every arch that runs 16-bit weights (v73, v75, v79, v81); -32768..32639 are read as written.
Found bisecting EfficientNet-Lite0 at a16w16 on the simulator: every Conv differed from the CPU EP on the
same QDQ model (depthwise ones up to 8000 16-bit steps), all of it in the channels whose symmetric weights
reach +32767. The QNN table's a16w16 precision scales int16 weights to 32639 (``weight_max_level``).
Runtime tests skip, with the reason, without onnxruntime-qnn.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper, parser

from onnxq import api
from onnxq.backends.qnn import runtime
from onnxq.backends.qnn.table import HTP_INT16_WEIGHT_MAX, PRECISIONS
from onnxq.quant import qparams
from onnxq.quant.metrics import relative_l2
from onnxq.quant.spec import weight_spec

UNAVAILABLE = runtime.available()
needs_qnn = pytest.mark.skipif(UNAVAILABLE is not None, reason=f"QNN EP unavailable: {UNAVAILABLE}")
SOC_SM8550 = "43"


def _run(proto: onnx.ModelProto, feed: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(CPU EP, HTP) outputs of the same QDQ model."""
    data = proto.SerializeToString()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    cpu = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"]).run(None, feed)[0]
    with runtime.captured_stderr():
        htp = runtime.session(data, SOC_SM8550).run(None, feed)[0]
    return cpu, htp


def _pointwise_conv(levels: list[int]) -> onnx.ModelProto:
    """x [1, 1, 2, 2] uint16 (scale 1/65535) -> 1x1 Conv to one channel per int16 weight level (scale
    1/32767, no bias) -> uint16 output in [-1, 1]: output channel c at x = 1 is levels[c] / 32767."""
    count = len(levels)
    inits = [
        numpy_helper.from_array(np.array(1 / 65535, np.float32), "s"),
        numpy_helper.from_array(np.array(0, np.uint16), "z"),
        numpy_helper.from_array(np.array(levels, np.int16).reshape(count, 1, 1, 1), "wq"),
        numpy_helper.from_array(np.full(count, 1 / 32767, np.float32), "sw"),
        numpy_helper.from_array(np.zeros(count, np.int16), "zw"),
        numpy_helper.from_array(np.array(2 / 65535, np.float32), "so"),
        numpy_helper.from_array(np.array(32768, np.uint16), "zo"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
        helper.make_node("DequantizeLinear", ["wq", "sw", "zw"], ["w"], axis=0),
        helper.make_node("Conv", ["xd", "w"], ["y"], kernel_shape=[1, 1]),
        helper.make_node("QuantizeLinear", ["y", "so", "zo"], ["yq"]),
        helper.make_node("DequantizeLinear", ["yq", "so", "zo"], ["yd"]),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2])],
                              [helper.make_tensor_value_info("yd", TensorProto.FLOAT, [1, count, 2, 2])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


def _depthwise_then_fc() -> ir.Model:
    """[1, 8, 8, 8] -> depthwise 3x3 Conv (centre taps large and positive, as after BN folding) -> Clip(0, 6)
    -> 1x1 Conv -> GlobalAveragePool -> Flatten -> Gemm: the EfficientNet-Lite layers in small."""
    proto = parser.parse_model("""
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[1, 8, 8, 8] x) => (float[1, 4] y) {
            lo = Constant <value = float {0.0}> ()
            hi = Constant <value = float {6.0}> ()
            d = Conv <group = 8, kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (x, Wd, Bd)
            r = Clip(d, lo, hi)
            p = Conv(r, Wp, Bp)
            a = GlobalAveragePool(p)
            f = Flatten(a)
            y = Gemm <transB = 1> (f, Wf, Bf)
        }""")
    rng = np.random.default_rng(3)
    depthwise = rng.uniform(-0.3, 0.3, (8, 1, 3, 3))
    depthwise[:, 0, 1, 1] = rng.uniform(1.0, 3.0, 8)
    arrays = {"Wd": depthwise, "Bd": rng.uniform(-0.5, 0.5, 8),
              "Wp": rng.standard_normal((16, 8, 1, 1)) * 0.3, "Bp": rng.uniform(-0.5, 0.5, 16),
              "Wf": rng.standard_normal((4, 16)) * 0.3, "Bf": rng.uniform(-0.5, 0.5, 4)}
    proto.graph.initializer.extend(numpy_helper.from_array(v.astype(np.float32), k) for k, v in arrays.items())
    return ir.serde.deserialize_model(proto)


def _calibration() -> list[dict[str, np.ndarray]]:
    return [{"x": np.random.default_rng(i).uniform(0.0, 2.0, (1, 8, 8, 8)).astype(np.float32)}
            for i in range(8)]


def test_a16w16_weights_are_scaled_to_the_htp_limit():
    """No onnxruntime-qnn needed: the table's a16w16 weights top out at 32639, symmetric."""
    assert PRECISIONS["a16w16"].weight_max_level == HTP_INT16_WEIGHT_MAX == 32639
    spec = weight_spec("int16", 0, max_level=HTP_INT16_WEIGHT_MAX)
    weight = np.array([[1.0, -0.5], [-2.0, 0.25], [0.0, 0.0]], np.float32)
    q, scale, _ = qparams.quantize_weight(weight, spec)
    assert q.max() == 32639 and q.min() == -32639
    np.testing.assert_allclose(scale[:2], [1.0 / 32639, 2.0 / 32639], rtol=1e-6)
    assert qparams.quantize_weight(weight, weight_spec("int16", 0))[0].max() == 32767  # the default top


@needs_qnn
def test_the_htp_saturates_int16_weights_above_32639():
    """The runtime fact ``HTP_INT16_WEIGHT_MAX`` exists for. If this fails, QNN reads the full int16 range:
    drop ``weight_max_level`` from the a16w16 precision in ``backends/qnn/table.py``."""
    levels = [32000, 32639, 32640, 32767, -32768]
    cpu, htp = _run(_pointwise_conv(levels), {"x": np.ones((1, 1, 2, 2), np.float32)})
    read = htp[0, :, 0, 0] * 32767  # the weight level the HTP used, per channel
    expected = np.array([32000, 32639, 32639, 32639, -32768])
    np.testing.assert_allclose(read, expected, atol=1.5)  # one output step is one weight level
    np.testing.assert_allclose(cpu[0, :, 0, 0] * 32767, levels, atol=1.5)
    assert abs(cpu[0, 3, 0, 0] - htp[0, 3, 0, 0]) * 65535 / 2 > 100  # 32767: 128 output steps short


@needs_qnn
def test_a16w16_model_runs_on_the_htp_as_on_the_cpu():
    quantized, _ = api.quantize(_depthwise_then_fc(), _calibration(), target="qnn:sm8550", precision="a16w16",
                                fallback=False, max_error=1.0)
    proto = ir.to_proto(quantized)
    weights = [numpy_helper.to_array(i) for i in proto.graph.initializer
               if i.data_type == TensorProto.INT16 and not i.name.endswith("zero_point")]
    assert len(weights) == 3 and max(int(w.max()) for w in weights) == HTP_INT16_WEIGHT_MAX
    feed = {"x": np.random.default_rng(99).uniform(0.0, 2.0, (1, 8, 8, 8)).astype(np.float32)}
    cpu, htp = _run(proto, feed)
    assert relative_l2(cpu, htp) < 1e-3  # 9e-5; 8.2e-3 with weights up to 32767
