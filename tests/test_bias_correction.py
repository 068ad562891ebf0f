"""Bias correction: per-channel input means are streamed exactly, the shift formula matches what the
runtime computes, and the correction removes the mean error that rounded edge-detector kernels cause."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxq import numerics
from onnxq.backends.registry import resolve_target
from onnxq.calibration import collect_statistics
from onnxq.calibration.observers import ChannelMeanObserver
from onnxq.quant import bias_correction, metrics
from onnxq.quant.annotate import annotate
from onnxq.quant.engine import build_qdq_model
from onnxq.quant.recipe import CLASSIFIER_MAX_ERROR, DEFAULT_MAX_ERROR, default_budget

TABLE = resolve_target("ort").table()


def test_channel_mean_observer_streams_like_one_shot_and_skips_nonfinite():
    rng = np.random.default_rng(0)
    batches = [rng.normal(3.0, 2.0, (1, 5, 4, 7 + i)).astype(np.float32) for i in range(6)]
    batches[2][0, 1, 0, 0] = np.nan
    batches[3][0, 4, 1, 1] = -np.inf
    observer = ChannelMeanObserver(axis=1)
    for batch in batches:
        observer.update(batch)
    flat = [np.moveaxis(b, 1, 0).reshape(5, -1) for b in batches]
    joined = np.concatenate(flat, axis=1).astype(np.float64)
    expected = np.nanmean(np.where(np.isfinite(joined), joined, np.nan), axis=1)
    np.testing.assert_allclose(observer.mean, expected, rtol=1e-12)
    halves = ChannelMeanObserver(1), ChannelMeanObserver(1)
    for i, batch in enumerate(batches):
        halves[i % 2].update(batch)
    halves[0].merge(halves[1])
    np.testing.assert_allclose(halves[0].mean, expected, rtol=1e-12)
    with pytest.raises(ValueError, match="channel"):
        observer.update(np.zeros((1, 6, 2, 2), np.float32))


def _layer_model(op: str, weight: np.ndarray, bias: np.ndarray, in_shape, attrs) -> onnx.ModelProto:
    node = helper.make_node(op, ["x", "w", "b"], ["y"], **attrs)
    graph = helper.make_graph(
        [node], "layer", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


@pytest.mark.parametrize(
    "op, w_shape, in_shape, attrs",
    [("Conv", (6, 4, 3, 3), (1, 4, 9, 9), {}),
     ("Conv", (6, 2, 3, 3), (1, 4, 9, 9), {"group": 2, "strides": [2, 2], "dilations": [2, 2]}),
     ("Conv", (8, 1, 5, 5), (1, 8, 9, 9), {"group": 8}),
     ("Gemm", (5, 7), (3, 7), {"transB": 1, "alpha": 0.5, "beta": 2.0}),
     ("Gemm", (7, 5), (3, 7), {"alpha": 1.5})],
)
def test_output_shift_is_the_layers_response_to_its_mean_input(op, w_shape, in_shape, attrs):
    """What ORT computes with the weight delta on a constant input equal to the channel means, seen
    through beta·bias, is exactly the shift the module subtracts."""
    rng = np.random.default_rng(1)
    weight = rng.normal(0, 1, w_shape).astype(np.float32)
    rounded = (weight + rng.normal(0, 0.05, w_shape)).astype(np.float32)
    mean = rng.uniform(-2, 3, in_shape[1]).astype(np.float32)
    x = np.broadcast_to(mean.reshape((1, -1) + (1,) * (len(in_shape) - 2)), in_shape).astype(np.float32)
    outputs = w_shape[0] if op == "Conv" or attrs.get("transB") else w_shape[1]
    zero_bias = np.zeros(outputs, np.float32)
    exact = numerics.run_model(_layer_model(op, rounded, zero_bias, in_shape, attrs).SerializeToString(), {"x": x})["y"]
    base = numerics.run_model(_layer_model(op, weight, zero_bias, in_shape, attrs).SerializeToString(), {"x": x})["y"]
    response = (exact - base).reshape(in_shape[0], outputs, -1)[0, :, 0]  # a pixel away from borders
    node = ir.serde.deserialize_model(_layer_model(op, weight, zero_bias, in_shape, attrs)).graph.node(0)
    assert bias_correction.corrects(node, 1)
    shift = bias_correction.output_shift(node, weight, rounded, mean)
    beta = attrs.get("beta", 1.0)
    np.testing.assert_allclose(beta * shift, response, rtol=1e-4, atol=1e-4)


def _one_shot_shift(op: str, weight, rounded, mean, attrs) -> np.ndarray:
    """The formula on whole float64 arrays (what ``output_shift`` computed before it worked in blocks)."""
    delta = rounded.astype(np.float64) - weight.astype(np.float64)
    mean = mean.astype(np.float64)
    if op == "Gemm":
        by_output = delta if attrs.get("transB") else delta.T
        return attrs.get("alpha", 1.0) / attrs.get("beta", 1.0) * (by_output @ mean)
    groups = attrs.get("group", 1)
    tap_sums = delta.reshape(delta.shape[0], delta.shape[1], -1).sum(axis=2)
    group_of = np.arange(delta.shape[0]) // (delta.shape[0] // groups)
    return (tap_sums * mean.reshape(groups, -1)[group_of]).sum(axis=1)


@pytest.mark.parametrize(
    "op, w_shape, attrs",
    [("Conv", (24, 4, 3, 3), {}), ("Conv", (12, 2, 3, 3), {"group": 3}),
     ("Conv", (16, 1, 5, 5), {"group": 16}),
     ("Gemm", (37, 11), {"transB": 1, "alpha": 0.5, "beta": 2.0}), ("Gemm", (11, 37), {"alpha": 1.5})],
)
def test_output_shift_in_blocks_equals_the_whole_formula(op, w_shape, attrs, monkeypatch):
    """Blocks of a few output channels (one block, and many: ``CHUNK_ELEMENTS`` shrunk to 40) give the
    one-shot formula's shift."""
    rng = np.random.default_rng(2)
    weight = rng.normal(0, 1, w_shape).astype(np.float32)
    rounded = (weight + rng.normal(0, 0.05, w_shape)).astype(np.float32)
    if op == "Conv":
        inputs = w_shape[1] * attrs.get("group", 1)
        in_shape = (1, inputs, 9, 9)
    else:
        inputs = w_shape[1] if attrs.get("transB") else w_shape[0]
        in_shape = (3, inputs)
    mean = rng.uniform(-2, 3, inputs).astype(np.float32)
    model = _layer_model(op, weight, np.zeros(1, np.float32), in_shape, attrs)
    node = ir.serde.deserialize_model(model).graph.node(0)
    expected = _one_shot_shift(op, weight, rounded, mean, attrs)
    whole = bias_correction.output_shift(node, weight, rounded, mean)
    monkeypatch.setattr(bias_correction, "CHUNK_ELEMENTS", 40)
    blocks = bias_correction.output_shift(node, weight, rounded, mean)
    np.testing.assert_allclose(whole, expected, rtol=1e-12)
    np.testing.assert_allclose(blocks, expected, rtol=1e-12)


def test_output_shift_of_a_classifier_weight_needs_no_whole_float64_copy():
    """EfficientNet-Lite0's 1280x1000 classifier: three float64 copies of the weight at once were +30 MiB of
    a quantize peak; blocks of ``CHUNK_ELEMENTS`` keep the temporaries to a few MiB."""
    import tracemalloc

    rng = np.random.default_rng(4)
    weight = rng.standard_normal((1000, 1280)).astype(np.float32)
    rounded = weight + np.float32(0.01)
    mean = rng.random(1280).astype(np.float32)
    node = ir.serde.deserialize_model(
        _layer_model("Gemm", weight, np.zeros(1000, np.float32), (1, 1280), {"transB": 1})).graph.node(0)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        shift = bias_correction.output_shift(node, weight, rounded, mean)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert shift.shape == (1000,)
    assert peak < 6 * 2**20, f"{peak / 2**20:.1f} MiB of temporaries"


def _edge_model(rng) -> tuple[ir.Model, np.ndarray]:
    """Depthwise 3x3 "derivative" kernels (large taps that nearly cancel) on inputs with a large mean; no
    padding, so every output pixel sees all taps (at a zero-padded border the shift is smaller)."""
    channels = 8
    taps = rng.normal(0, 6.0, (channels, 9))
    taps -= taps.mean(axis=1, keepdims=True)  # DC gain ~0, as an edge detector
    weight = taps.reshape(channels, 1, 3, 3).astype(np.float32)
    bias = rng.normal(0, 0.5, channels).astype(np.float32)
    w2 = rng.normal(0, 0.5, (4, channels, 1, 1)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["c"], group=channels),
         helper.make_node("Relu", ["c"], ["r"]),
         helper.make_node("Conv", ["r", "w2"], ["y"])],
        "edges", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 14, 14])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b"),
         numpy_helper.from_array(w2, "w2")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    return ir.serde.deserialize_model(proto), weight


def _samples(rng, n):
    # smooth images with a large positive mean: what a depthwise layer sees after a ReLU
    base = rng.uniform(4.0, 8.0, (n, 1, 8, 1, 1)).astype(np.float32)
    return [{"x": (base[i] + rng.normal(0, 0.3, (1, 8, 16, 16))).astype(np.float32)} for i in range(n)]


def test_bias_correction_removes_the_mean_shift_of_rounded_edge_kernels():
    rng = np.random.default_rng(2)
    model, _ = _edge_model(rng)
    calib, held = _samples(rng, 16), _samples(rng, 8)
    reference = [numerics.run_model(model, s) for s in held]
    plan = annotate(model, TABLE)
    means = bias_correction.mean_requests(plan)
    assert means == {"x": 1}
    stats = collect_statistics(model, sorted(plan.activation_specs()), calib, channel_means=means)
    expected_mean = np.mean([s["x"].mean(axis=(0, 2, 3)) for s in calib], axis=0)
    np.testing.assert_allclose(stats["x"].channel_mean, expected_mean, rtol=1e-6)

    errors = {}
    for corrected in (False, True):
        candidate = model.clone()
        plan = annotate(candidate, TABLE)
        build_qdq_model(candidate, plan, stats, method="minmax", percentile=100.0, bias_correction=corrected)
        proto = ir.to_proto(candidate)
        onnx.checker.check_model(proto, full_check=True)
        got = [numerics.run_model(proto.SerializeToString(), s) for s in held]
        shift = np.mean([g["y"] - r["y"] for g, r in zip(got, reference, strict=True)], axis=(0, 1, 3, 4))
        errors[corrected] = (metrics.output_errors(reference, got)["y"], float(np.abs(shift).max()))
    # the rounding of the kernels shifts each channel by ΔW·μ: the correction removes most of that
    # systematic part (what is left comes from activation rounding), and the error drops with it
    assert errors[True][1] < 0.25 * errors[False][1], errors
    assert errors[True][0] < 0.6 * errors[False][0], errors


@pytest.mark.parametrize(
    "outputs, expected",
    [([((None, 1000), "Gemm")], CLASSIFIER_MAX_ERROR), ([((1, 4), "MatMul")], CLASSIFIER_MAX_ERROR),
     ([((1, 384), "Div")], DEFAULT_MAX_ERROR),  # a normalised sentence embedding
     ([((None, 1), "Gemm")], DEFAULT_MAX_ERROR), ([((None, None), "Gemm")], DEFAULT_MAX_ERROR),
     ([((1, 84, 2100), "Concat")], DEFAULT_MAX_ERROR), ([((None, None, 6625), "MatMul")], DEFAULT_MAX_ERROR),
     ([(None, "Gemm"), ((1, 128, 384), "Add"), ((None, 10), "Gemm")], CLASSIFIER_MAX_ERROR), ([], DEFAULT_MAX_ERROR)],
)
def test_default_budget_is_tighter_for_classifier_outputs(outputs, expected):
    assert default_budget(outputs) == expected


@pytest.mark.parametrize("tail, expected", [("Softmax", CLASSIFIER_MAX_ERROR), ("Div", DEFAULT_MAX_ERROR)])
def test_quantize_picks_the_budget_from_the_graph(tail, expected):
    """[N, 5] from Gemm → Softmax is a classifier's; [N, 5] from Gemm → Div (a normalised embedding) is not."""
    import onnxq

    rng = np.random.default_rng(3)
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["g"], transB=1)]
    if tail == "Softmax":
        nodes.append(helper.make_node("Softmax", ["g"], ["y"], axis=-1))
    else:
        nodes.append(helper.make_node("Div", ["g", "c"], ["y"]))
    graph = helper.make_graph(
        nodes, "head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 5])],
        [numpy_helper.from_array(rng.normal(0, 0.3, (5, 16)).astype(np.float32), "w"),
         numpy_helper.from_array(np.zeros(5, np.float32), "b"), numpy_helper.from_array(np.float32(3.0), "c")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    samples = [{"x": rng.normal(0, 1, (1, 16)).astype(np.float32)} for _ in range(12)]
    _, report = onnxq.quantize(ir.serde.deserialize_model(proto), samples)
    assert report.max_error == expected


def test_cli_flag_turns_bias_correction_off_and_the_report_says_so(tmp_path, demo_path):
    import json

    from conftest import load_tool

    from onnxq.cli import main

    calib = tmp_path / "calib.npz"
    np.savez(calib, **load_tool("make_demo_model").calibration_data(samples=40, seed=1))
    reports = {}
    for flag in ([], ["--no-bias-correction"]):
        out, report = tmp_path / f"q{len(flag)}.onnx", tmp_path / f"r{len(flag)}.json"
        assert main(["-q", "quantize", str(demo_path), "-o", str(out), "--calib", str(calib), "--max-error", "1",
                     "--report", str(report), *flag]) == 0
        reports[bool(flag)] = (json.loads(report.read_text()), out.read_bytes())
    assert reports[False][0]["bias_correction"] is True and reports[True][0]["bias_correction"] is False
    assert reports[False][1] != reports[True][1]  # the demo's Convs have biases: the corrected ones differ
