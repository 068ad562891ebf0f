"""LPBQ (int4 weights per block, block scales k·c) for the QNN target: the spec, the quantization maths, the
probe-driven table, Q/DQ insertion in both forms, AIMET encodings, and the real HTP simulator with CPU
fallback disabled. Runtime tests skip, with the reason, where onnxruntime-qnn is unavailable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxq import api
from onnxq.backends.qnn import encodings, runtime, socs
from onnxq.backends.qnn.table import BLOCK16_CASE, _accepted, _row_specs, build_table, load_capabilities
from onnxq.quant import qparams
from onnxq.quant.annotate import annotate
from onnxq.quant.spec import Granularity, QDType, QuantSpec, weight_spec

UNAVAILABLE = runtime.available()
needs_qnn = pytest.mark.skipif(UNAVAILABLE is not None, reason=f"QNN EP unavailable: {UNAVAILABLE}")
ROOT = Path(__file__).resolve().parents[1]


def _lpbq_spec(block_axis=1, channel_axis=0, block=32, **kwargs) -> QuantSpec:
    return weight_spec("int4", block_axis, block_size=block, channel_axis=channel_axis, block_scale_bits=4,
                       **kwargs)


# -- spec and maths -------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, message", [
    (dict(granularity=Granularity.PER_CHANNEL, axis=0, symmetric=True, block_scale_bits=4), "per-block"),
    (dict(granularity=Granularity.PER_BLOCK, axis=1, block_size=32, block_scale_bits=4), "symmetric"),
    (dict(granularity=Granularity.PER_BLOCK, axis=1, block_size=32, symmetric=True, block_scale_bits=4),
     "channel_axis"),
    (dict(granularity=Granularity.PER_BLOCK, axis=1, block_size=32, symmetric=True, channel_axis=1,
          block_scale_bits=4), "channel_axis other than"),
    (dict(granularity=Granularity.PER_BLOCK, axis=1, block_size=32, symmetric=True, channel_axis=0,
          block_scale_bits=8), "1..7"),
    (dict(granularity=Granularity.PER_BLOCK, axis=1, block_size=32, symmetric=True, int_block_scales=True),
     "needs block_scale_bits"),
])
def test_lpbq_spec_refuses_what_it_cannot_mean(kwargs, message):
    with pytest.raises(ValueError, match=message):
        QuantSpec(QDType.INT4, **kwargs)


def test_lpbq_block_scales_are_integers_times_a_channel_scale():
    """k in [1, 16] with 16 in every channel, so the float block scales alone give back c = max / 16 and k
    (what the QNN EP's conversion computes); the weights stay within int4."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((32, 1, 128)).astype(np.float32).transpose(0, 2, 1)[..., None]  # [32, 128, 1, 1]
    lpbq = qparams.quantize_weight_lpbq(w, _lpbq_spec())
    assert lpbq.q.shape == w.shape and lpbq.block_ints.shape == (32, 4, 1, 1)
    assert lpbq.channel_scale.shape == (32,)
    assert lpbq.block_ints.dtype == np.uint8 and lpbq.block_ints.min() >= 1
    assert np.all(lpbq.block_ints.reshape(32, 4).max(axis=1) == 16)
    assert -8 <= lpbq.q.astype(np.int8).min() and lpbq.q.astype(np.int8).max() <= 7
    scales = lpbq.block_scales.reshape(32, 4)
    channel = scales.max(axis=1) / 16
    assert np.array_equal(channel, lpbq.channel_scale)
    assert np.array_equal(np.round(scales / channel[:, None]), lpbq.block_ints.reshape(32, 4))
    # the same numbers come back from quantize_weight (the float form's DequantizeLinear inputs)
    q, scale, zero = qparams.quantize_weight(w, _lpbq_spec())
    assert np.array_equal(scale, lpbq.block_scales) and np.all(zero.astype(np.int8) == 0)


def _outlier_weight() -> np.ndarray:
    """[64, 256] Gaussian weights where two blocks of 32 input channels per output channel are 4-10x larger
    (the outlier features transformers and BN-folded convolutions have)."""
    rng = np.random.default_rng(7)
    w = rng.standard_normal((64, 256)).astype(np.float32) * 0.05
    for row in range(64):
        for block in rng.choice(8, 2, replace=False):
            w[row, block * 32:(block + 1) * 32] *= rng.uniform(4, 10)
    return w


def _relative_error(w: np.ndarray, back: np.ndarray) -> float:
    return float(np.linalg.norm(back - w) / np.linalg.norm(w))


def test_lpbq_error_is_lower_than_per_channel_int4_on_outlier_blocks():
    w = _outlier_weight()
    lpbq = qparams.quantize_weight_lpbq(w, _lpbq_spec())
    lpbq_error = _relative_error(w, lpbq.q.astype(np.float32) * np.repeat(lpbq.block_scales, 32, axis=1))
    q, scale, zero = qparams.quantize_weight(w, weight_spec("int4", 0))
    per_channel_error = _relative_error(w, qparams.dequantize(q, scale, zero, axis=0))
    # measured: 0.0881 vs 0.1952 (k = round(s_b / c) without the search: 0.0959, k = ceil: 0.0991)
    assert lpbq_error < 0.09 and per_channel_error > 0.19, (lpbq_error, per_channel_error)
    assert lpbq_error < 0.5 * per_channel_error


# -- the table --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", socs.ARCHS)
def test_table_offers_lpbq_exactly_where_the_probe_ran_it(arch):
    data = load_capabilities()["archs"][arch]
    table = build_table(socs.parse_soc(arch))
    specs = {spec.row.name: spec for spec in _row_specs()}
    for row in table.rows:
        spec = specs[row.name]
        if spec.lpbq_cases is None:
            assert not row.block_precisions
            continue
        case = spec.lpbq_cases[1] if row.int_block_scales else spec.lpbq_cases[0]
        ran = [p for p in row.precisions if p in _accepted(data, case)]
        assert list(row.block_precisions) == ran, (arch, row.name)
        other = spec.lpbq_cases[0] if row.int_block_scales else spec.lpbq_cases[1]
        assert len([p for p in row.precisions if p in _accepted(data, other)]) <= len(ran)
    for name, precision in table.precisions.items():
        if any(name in row.block_precisions for row in table.rows):
            assert precision.weight_block_scale_bits == 4 and precision.weight_block_size == 64
            assert precision.weight_min_block_size == (16 if name in _accepted(data, BLOCK16_CASE) else 32)
        else:
            assert precision.weight_block_size is None


def test_what_the_probe_saw_on_v73():
    """Recorded facts (onnxruntime-qnn 2.7): the EP runs LPBQ Conv/Gemm only from float block scales with
    16-bit activations, MatMul also through the uint8 chain at 8 bits; blocks of 16 go wrong from v69."""
    rows = {row.name: row for row in build_table(socs.parse_soc("v73")).rows}
    assert rows["conv"].block_precisions == ("a16w4",) and not rows["conv"].int_block_scales
    assert rows["gemm"].block_precisions == ("a16w4",) and not rows["gemm"].int_block_scales
    assert rows["matmul"].block_precisions == ("a8w4", "a16w4") and rows["matmul"].int_block_scales
    assert not rows["convtranspose"].block_precisions
    assert build_table(socs.parse_soc("v73")).precisions["a16w4"].weight_min_block_size == 32


def _conv_model(kernels: list[tuple[int, int, int, int]]) -> onnx.ModelProto:
    """A chain of Convs [(out, in, k, group)], input [1, in0, 8, 8]."""
    rng = np.random.default_rng(2)
    nodes, inits, name = [], [], "x"
    for i, (out, inp, k, group) in enumerate(kernels):
        inits.append(numpy_helper.from_array(rng.normal(0, 0.3, (out, inp // group, k, k)).astype(np.float32),
                                             f"w{i}"))
        nodes.append(helper.make_node("Conv", [name, f"w{i}"], [f"c{i}"], name=f"conv{i}", group=group,
                                      pads=[k // 2] * 4))
        name = f"c{i}"
    graph = helper.make_graph(nodes, "convs", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                             [1, kernels[0][1], 8, 8])],
                              [helper.make_tensor_value_info(name, TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


def test_annotation_blocks_only_weights_the_htp_takes_as_lpbq():
    """v73 a16w4: 1x1 Convs whose input channels make two blocks of 64 or 32 or more are LPBQ; 48 input
    channels (no block of 32 fits twice), 3x3 and depthwise Convs stay int4 per channel."""
    model = ir.serde.deserialize_model(_conv_model([(64, 128, 1, 1), (96, 64, 1, 1), (48, 96, 1, 1),
                                                    (48, 48, 3, 48), (64, 48, 1, 1), (32, 64, 3, 1)]))
    plan = annotate(model, build_table(socs.parse_soc("v73")), precision="a16w4")
    specs = {use.node.name: use.spec for use in plan.weights()}
    assert [(specs[f"conv{i}"].block_size, specs[f"conv{i}"].channel_axis) for i in range(3)] == \
           [(64, 0), (32, 0), (32, 0)]
    assert all(specs[f"conv{i}"].block_scale_bits == 4 and not specs[f"conv{i}"].int_block_scales
               for i in range(3))
    for i in (3, 4, 5):
        assert specs[f"conv{i}"].granularity is Granularity.PER_CHANNEL and specs[f"conv{i}"].axis == 0
        assert specs[f"conv{i}"].dtype is QDType.INT4
    a8 = annotate(ir.serde.deserialize_model(_conv_model([(64, 128, 1, 1)])),
                  build_table(socs.parse_soc("v73")), precision="a8w4")
    assert a8.weights()[0].spec.granularity is Granularity.PER_CHANNEL  # no 8-bit LPBQ Conv on the HTP


# -- quantization on the simulator ------------------------------------------------------------------------
def _lpbq_model(op: str) -> tuple[onnx.ModelProto, list[dict]]:
    """Conv 1x1 (96 -> 64, bias), Gemm (96 -> 64, transB, bias) or MatMul ([1, 8, 96] x [96, 64]), weights
    with outlier input blocks; and calibration data."""
    rng = np.random.default_rng(4)
    w = (rng.normal(0, 0.1, (64, 96)) * np.repeat(rng.uniform(0.3, 4, 3), 32)).astype(np.float32)
    b = numpy_helper.from_array(rng.normal(0, 0.1, 64).astype(np.float32), "b")
    if op == "Conv":
        shape, inits = [1, 96, 4, 4], [numpy_helper.from_array(w[:, :, None, None], "w"), b]
        node = helper.make_node("Conv", ["x", "w", "b"], ["y"], name="op")
    elif op == "Gemm":
        shape, inits = [1, 96], [numpy_helper.from_array(w, "w"), b]
        node = helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="op", transB=1)
    else:
        shape, inits = [1, 8, 96], [numpy_helper.from_array(np.ascontiguousarray(w.T), "w")]
        node = helper.make_node("MatMul", ["x", "w"], ["y"], name="op")
    graph = helper.make_graph([node], op.lower(),
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    calib = [{"x": rng.standard_normal(shape).astype(np.float32)} for _ in range(12)]
    return model, calib


def _quantize(op: str, precision: str) -> tuple[onnx.ModelProto, list[dict]]:
    model, calib = _lpbq_model(op)
    quantized, report = api.quantize(ir.serde.deserialize_model(model), calib, target="qnn:sm8550",
                                     precision=precision, max_error=10.0)  # no fall-back: every layer at w4
    assert not report.higher_precision
    return ir.to_proto(quantized), calib


def _output_step(proto: onnx.ModelProto) -> float:
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    dq = next(n for n in proto.graph.node if n.output[0] == proto.graph.output[0].name)
    return float(inits[dq.input[1]])


def _weight_dq(proto: onnx.ModelProto) -> tuple[onnx.NodeProto, dict]:
    dq = next(n for n in proto.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == "w_quantized")
    return dq, {a.name: helper.get_attribute_value(a) for a in dq.attribute}


@needs_qnn
@pytest.mark.parametrize("op, precision, form, tolerance", [
    ("Conv", "a16w4", "float", 2.0), ("MatMul", "a16w4", "uint8", 2.0), ("MatMul", "a8w4", "uint8", 2.0),
    ("Gemm", "a16w4", "float", 32.0),  # probe: 14-15 16-bit steps, an eighth of an 8-bit step
])
def test_lpbq_model_runs_on_the_htp_without_cpu_fallback(op, precision, form, tolerance):
    proto, calib = _quantize(op, precision)
    onnx.checker.check_model(proto, full_check=True)
    dq, attrs = _weight_dq(proto)
    assert attrs["block_size"] == 32 and attrs["axis"] == (0 if op == "MatMul" else 1)
    producers = {out: node for node in proto.graph.node for out in node.output}
    inits = {t.name: t for t in proto.graph.initializer}
    if form == "uint8":  # k (uint8) -> DequantizeLinear by c -> the weight DequantizeLinear's scale
        assert inits[producers[dq.input[1]].input[0]].data_type == TensorProto.UINT8
    else:
        assert inits[dq.input[1]].data_type == TensorProto.FLOAT
    assert inits[dq.input[0]].data_type == inits[dq.input[2]].data_type == TensorProto.INT4
    data = proto.SerializeToString()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    cpu = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    ort.InferenceSession(data, providers=["CPUExecutionProvider"])  # and with ORT's default optimizations
    htp = runtime.session(data, "43", strict=True)  # fails unless every node runs on the HTP
    step = _output_step(proto)
    worst = max(float(np.abs(htp.run(None, feeds)[0] - cpu.run(None, feeds)[0]).max()) / step
                for feeds in calib)
    print(f"{op} {precision}: HTP vs CPU {worst:.2f} output steps")
    assert worst <= tolerance + 0.01, worst  # + float rounding of the step


def test_encodings_write_lpbq_in_both_forms():
    """AIMET 1.0.0 LPBQ entries: per-channel float scale, per-block integer scales channel-major."""
    for op, precision in (("Conv", "a16w4"), ("MatMul", "a8w4")):
        proto, _ = _quantize(op, precision)
        entry = next(e for e in encodings.encodings_from_qdq(proto)["param_encodings"] if e["name"] == "w")
        fields = ("enc_type", "dtype", "bw", "compressed_bw", "is_sym", "block_size")
        assert {k: entry[k] for k in fields} == {
            "enc_type": "LPBQ", "dtype": "INT", "bw": 8, "compressed_bw": 4, "is_sym": True, "block_size": 32}
        assert len(entry["scale"]) == len(entry["offset"]) == 64 and set(entry["offset"]) == {-128}
        ints = np.array(entry["per_block_int_scale"]).reshape(64, 3)
        assert ints.min() >= 1 and np.all(ints.max(axis=1) == 16)
        # the values: the DequantizeLinear's block scales are k·c, block scales laid out per the weight
        inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
        dq, _ = _weight_dq(proto)
        producers = {out: node for node in proto.graph.node for out in node.output}
        if dq.input[1] in inits:
            block_scales = inits[dq.input[1]].reshape(64, 3)
        else:
            scale_dq = producers[dq.input[1]]
            block_scales = (inits[scale_dq.input[0]].astype(np.float32) * inits[scale_dq.input[1]]).T
        assert np.allclose(block_scales, ints * np.array(entry["scale"])[:, None], rtol=1e-6)
        assert not any(e["name"].endswith("_block_scale_ints") for e in encodings.encodings_from_qdq(proto)[
            "param_encodings"])


@needs_qnn
def test_export_writes_lpbq_encodings(tmp_path):
    from onnxq.cli import main

    proto, _ = _quantize("Conv", "a16w4")
    onnx.save(proto, tmp_path / "conv.onnx")
    argv = ["export", str(tmp_path / "conv.onnx"), "--target", "qnn:sm8550", "-o", str(tmp_path / "out")]
    assert main(argv) == 0
    import json

    report = json.loads((tmp_path / "out" / "conv_export.json").read_text())
    assert report["runback"]["passed"] and report["placement"]["full_offload"]
    enc = json.loads((tmp_path / "out" / "conv.encodings.json").read_text())
    weight = next(e for e in enc["param_encodings"] if e["name"] == "w")
    assert weight["enc_type"] == "LPBQ" and len(weight["per_block_int_scale"]) == 64 * 3
    assert next(e for e in enc["param_encodings"] if e["name"] == "b")["enc_type"] == "PER_CHANNEL"


@needs_qnn
@pytest.mark.slow
def test_mobilenet_a16w4_runs_fully_on_htp_with_lpbq(tmp_path):
    """The zoo's MobileNet at a16w4 on sm8550: every node on the HTP, its 1x1 Convs (64 or 32 input channels
    per block) and classifier LPBQ. See README (QNN) for the error and size against a16w8."""
    model = ROOT / ".cache/models/mobilenet_v2ish.onnx"
    calib = model.with_name("mobilenet_v2ish.calib.npz")
    if not model.exists() or not calib.exists():
        pytest.skip("build the zoo first: python -m models build mobilenet_v2ish")
    quantized, report = api.quantize(api.load(model), calib, target="qnn:sm8550", precision="a16w4",
                                     max_error=10.0)
    assert report.placement["full_offload"], report.placement
    proto = ir.to_proto(quantized)
    blocked = [n for n in proto.graph.node if n.op_type == "DequantizeLinear"
               and any(a.name == "block_size" for a in n.attribute)]
    assert len(blocked) >= 6
    runtime.session(proto.SerializeToString(), "43", strict=True)
