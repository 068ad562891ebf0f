"""End-to-end post-training quantization on the ORT target: budget, fall-back, recipe, report, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxq
from onnxq import numerics
from onnxq.cli import main
from onnxq.errors import OptionError, UnknownNameError
from onnxq.quant.recipe import CLASSIFIER_MAX_ERROR, Recipe

from conftest import load_tool

DEMO = load_tool("make_demo_model")


@pytest.fixture(scope="module")
def calib() -> dict[str, np.ndarray]:
    return DEMO.calibration_data(samples=40, seed=1)


def _model() -> ir.Model:
    return ir.serde.deserialize_model(DEMO.build())


def _ops(model: ir.Model) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in model.graph:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def test_quantize_meets_default_budget_and_records_it(calib):
    model, report = onnxq.quantize(_model(), calib, target="ort")
    # the demo's output is [N, 10] class logits: a classifier's default budget
    assert report.max_error == CLASSIFIER_MAX_ERROR
    assert report.budget_met and 0 < report.error <= CLASSIFIER_MAX_ERROR
    assert report.holdout_samples == 10 and report.calibration_samples == 30
    ops = _ops(model)
    assert ops["QuantizeLinear"] >= 4 and ops["DequantizeLinear"] >= 8 and ops.get("BatchNormalization", 0) == 0
    assert set(report.layers.values()) <= {"a8w8", "dynamic"} and len(report.layers) >= 4
    assert sum(p == "a8w8" for p in report.layers.values()) >= 3
    proto = ir.to_proto(model)
    onnx.checker.check_model(proto, full_check=True)
    record = json.loads(model.metadata_props["onnxq.quantization"])
    assert record["target"] == "ort:x86" and record["budget_met"] is True
    weights = [t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert weights, "weights are stored as int8"


def test_fall_back_reaches_a_tight_budget(calib):
    model, report = onnxq.quantize(_model(), calib, max_error=0.004)
    assert report.budget_met and report.error <= 0.004
    assert len(report.rounds) > 1 and report.rounds[0].error > 0.004
    moved = [name for name, why in report.kept_float.items() if "fall-back" in why]
    assert moved and all(name not in report.layers for name in moved)


def test_no_fallback_reports_the_miss(calib):
    model, report = onnxq.quantize(_model(), calib, max_error=0.001, fallback=False)
    assert len(report.rounds) == 1 and not report.budget_met and report.error > 0.001


def test_recipe_exclusions_and_calibration_reader(tmp_path: Path, calib):
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{"x": calib["x"][i]} for i in range(len(calib["x"]))])

        def get_next(self):
            return next(self.items, None)

    recipe_file = tmp_path / "recipe.toml"
    recipe_file.write_text('method = "percentile"\npercentile = 99.99\nexclude = ["Gemm"]\nholdout = 6\n')
    recipe = Recipe.from_toml(recipe_file)
    model, report = onnxq.quantize(_model(), Reader(), recipe=recipe)
    assert report.method == "percentile" and report.holdout_samples == 6
    gemms = [name for name, why in report.kept_float.items() if why == "excluded by the recipe"]
    assert len(gemms) == 2 and not any(n in report.layers for n in gemms)


@pytest.mark.parametrize(
    "text, message",
    [('method = "kl"', "unknown calibration method 'kl'"), ("nosuch = 1", "unknown keys ['nosuch']"),
     ("max_error = -1", "max_error must be positive"), ("method = ", "not valid TOML")],
)
def test_bad_recipes_are_clear(tmp_path: Path, text, message):
    path = tmp_path / "r.toml"
    path.write_text(text)
    with pytest.raises(OptionError, match=message.replace("[", r"\[").replace("]", r"\]")):
        Recipe.from_toml(path)


def test_speed_is_timed_on_single_threaded_sessions():
    """Interleaved timing is only fair without thread pools (their idle threads spin on the other session's
    cores); the ORT timing session has one intra-op thread and the deployed session's full optimizations."""
    import onnxruntime as ort

    from onnxq.backends.base import TIMING_THREADS
    from onnxq.backends.registry import resolve_target

    target = resolve_target("ort")
    timed = target.timing_session(DEMO.build().SerializeToString())
    options = timed.get_session_options()
    assert TIMING_THREADS == 1 and options.intra_op_num_threads == 1
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert target.session(DEMO.build().SerializeToString()).get_session_options().intra_op_num_threads == 0


def test_unknown_precision_lists_choices(calib):
    with pytest.raises(UnknownNameError, match="known: a16w8, a8w8"):
        onnxq.quantize(_model(), calib, precision="a4w4")


def test_cli_quantize_report_inspect_compare(tmp_path: Path, capsys, calib):
    source = tmp_path / "demo.onnx"
    onnx.save(DEMO.build(), source)
    data = tmp_path / "calib.npz"
    np.savez(data, **calib)
    out, report_path = tmp_path / "q.onnx", tmp_path / "report.json"
    assert main(["quantize", str(source), "-o", str(out), "--calib", str(data), "--report", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    assert report["budget_met"] and report["speedup"] > 0 and report["target"] == "ort:x86"
    err = capsys.readouterr().err
    assert "within budget" in err and "speed-up over FP32 on this machine, one thread" in err
    assert main(["inspect", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["quantization_record"]["budget_met"] is True
    assert {op["weight"] for op in summary["quantized_ops"]} <= {"int8", "-"}
    assert any(op["activation"] == "uint8" for op in summary["quantized_ops"])
    assert main(["compare", str(source), str(out), "--data", str(data), "--json"]) == 0
    comparison = json.loads(capsys.readouterr().out)
    logits = comparison["outputs"][0]
    assert logits["name"] == "logits" and logits["relative_l2"] < 0.1 and logits["top1_agreement"] >= 0.9
    assert comparison["speedup"] > 0


def test_cli_targets_lists_and_describes(capsys):
    assert main(["targets"]) == 0
    assert "ort:x86" in capsys.readouterr().out
    assert main(["targets", "ort"]) == 0
    out = capsys.readouterr().out
    assert "conv+relu" in out and "a8w8 (default)" in out
    assert main(["targets", "tensorrt:sm89"]) == 2


def _gemm_model(form: str, bias_shape: tuple[int, ...]) -> onnx.ModelProto:
    """y = Relu(x @ w + b) on x: [2, 4], written as MatMul + Add (fused to Gemm by the passes) or as Gemm."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 4)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.uniform(0.1, 0.5, bias_shape).astype(np.float32), "b")
    if form == "gemm":
        nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["a"])]
    else:
        nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["a"])]
    nodes.append(helper.make_node("Relu", ["a"], ["y"]))
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 4])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 4])
    graph = helper.make_graph(nodes, "g", [x], [y], [w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def _bias_case(form: str, shape: tuple[int, ...], bug: str = "", raises=None):
    marks = [pytest.mark.xfail(strict=True, reason=bug, raises=raises)] if bug else []
    return pytest.param(form, shape, marks=marks, id=f"{form}-{'x'.join(map(str, shape)) or 'scalar'}")


@pytest.mark.parametrize("form, bias_shape", [
    _bias_case("gemm", (4,)),
    _bias_case("gemm", (1, 4)),
    _bias_case("matmul-add", (4,)),
    _bias_case("matmul-add", (1, 4)),
    _bias_case("gemm", ()),
    _bias_case("gemm", (1,)),
    _bias_case("matmul-add", ()),
    _bias_case("matmul-add", (1,)),
    _bias_case("gemm", (2, 4)),
    _bias_case("matmul-add", (2, 4)),
])
def test_gemm_bias_of_any_valid_shape_quantizes(form: str, bias_shape: tuple[int, ...]):
    """Gemm's C broadcasts to [M, N] from any of these shapes; the quantized model must stay valid."""
    source = _gemm_model(form, bias_shape)
    rng = np.random.default_rng(1)
    samples = [{"x": rng.standard_normal((2, 4)).astype(np.float32)} for _ in range(8)]
    model, report = onnxq.quantize(ir.serde.deserialize_model(source), samples)
    assert report.layers, "the Gemm was quantized, so its bias went through the bias path"
    onnx.checker.check_model(ir.to_proto(model), full_check=True)
    assert report.budget_met


def test_cli_quantizes_a_model_with_external_data(tmp_path: Path, calib, capsys):
    source = tmp_path / "demo.onnx"
    onnx.save(DEMO.build(), source, save_as_external_data=True, location="demo.onnx.data", size_threshold=0)
    data = tmp_path / "calib.npz"
    np.savez(data, **calib)
    out = tmp_path / "q.onnx"
    code = main(["-q", "quantize", str(source), "-o", str(out), "--calib", str(data)])
    assert code == 0, capsys.readouterr().err
    onnx.checker.check_model(str(out), full_check=True)


def test_nan_weight_is_a_clean_error_and_nothing_is_written(tmp_path: Path, calib, capsys):
    proto = DEMO.build()
    weight = next(t for t in proto.graph.initializer if t.name == "conv2.w")
    array = numpy_helper.to_array(weight).copy()
    array.flat[3] = np.nan
    weight.CopyFrom(numpy_helper.from_array(array, "conv2.w"))
    source = tmp_path / "nan.onnx"
    onnx.save(proto, source)
    data = tmp_path / "calib.npz"
    np.savez(data, **calib)
    out = tmp_path / "q.onnx"
    code = main(["quantize", str(source), "-o", str(out), "--calib", str(data)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "holds 1 NaN/Inf values and cannot be quantized" in err and "exclude" in err
    assert not out.exists()


def _dense_model() -> onnx.ModelProto:
    """x[2,16] → Gemm(transB, bias) → Relu → MatMul → y: the two dynamic forms, output a graph output."""
    rng = np.random.default_rng(3)
    w1 = numpy_helper.from_array(rng.standard_normal((32, 16)).astype(np.float32) * 0.3, "w1")  # [N, K]
    b1 = numpy_helper.from_array(rng.standard_normal(32).astype(np.float32) * 0.1, "b1")
    w2 = numpy_helper.from_array(rng.standard_normal((32, 8)).astype(np.float32) * 0.3, "w2")
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1, name="fc1"),
             helper.make_node("Relu", ["h"], ["r"], name="act"),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2")]
    graph = helper.make_graph(nodes, "dense", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 16])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 8])], [w1, b1, w2])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def test_dynamic_precision_quantizes_products_at_run_time():
    rng = np.random.default_rng(4)
    samples = [{"x": rng.standard_normal((2, 16)).astype(np.float32)} for _ in range(12)]
    model, report = onnxq.quantize(ir.serde.deserialize_model(_dense_model()), samples, precision="dynamic")
    proto = ir.to_proto(model)
    onnx.checker.check_model(proto, full_check=True)
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("DynamicQuantizeLinear") == 2 and ops.count("MatMulInteger") == 2
    assert "QuantizeLinear" not in ops and "Gemm" not in ops and "MatMul" not in ops
    assert report.layers == {"fc1": "dynamic", "fc2": "dynamic"} and report.budget_met
    weights = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    assert [a.shape for a in weights.values() if a.dtype == np.int8] == [(16, 32), (32, 8)]  # transB undone
    assert proto.graph.output[0].name == "y"
    x = {"x": rng.standard_normal((2, 16)).astype(np.float32)}
    reference = numerics.run_model(ir.serde.deserialize_model(_dense_model()), x)["y"]
    for optimize in (False, True):  # plain ops, and ORT's fused DynamicQuantizeMatMul
        got = numerics.make_session(numerics.model_bytes(model), optimize=optimize).run(None, x)[0]
        assert np.linalg.norm(got - reference) / np.linalg.norm(reference) < 0.03


def test_dynamic_precision_leaves_convolutions_and_neighbours_float(demo_path: Path, calib):
    samples = [{"x": calib["x"][i]} for i in range(4)]
    model, report = onnxq.quantize(onnxq.load(demo_path), samples, precision="dynamic", holdout=0)
    proto = ir.to_proto(model)
    ops = {n.op_type for n in proto.graph.node}
    assert "QuantizeLinear" not in ops and "MatMulInteger" in ops and "Conv" in ops
    assert any("no dynamic kernel for Conv" in why for why in report.kept_float.values())


def test_cli_over_budget_writes_the_model_but_exits_1(tmp_path: Path, calib, capsys):
    source = tmp_path / "demo.onnx"
    onnx.save(DEMO.build(), source)
    data = tmp_path / "calib.npz"
    np.savez(data, **calib)
    out, report = tmp_path / "q.onnx", tmp_path / "r.json"
    code = main(["quantize", str(source), "-o", str(out), "--calib", str(data), "--no-fallback",
                 "--max-error", "1e-6", "--report", str(report)])
    err = capsys.readouterr().err
    assert code == 1 and "accuracy budget 1e-06 not met" in err.splitlines()[-1]
    assert out.exists() and not json.loads(report.read_text())["budget_met"]


def test_fall_back_on_ort_tries_run_time_ranges_before_float():
    """One calibration sample 100x louder than the rest stretches every static range: the fall-back moves the
    MatMul/Gemm layers to dynamic quantization (int8 speed, ranges measured per call), not to float."""
    rng = np.random.default_rng(5)
    samples = [{"x": rng.standard_normal((2, 16)).astype(np.float32)} for _ in range(16)]
    samples[0]["x"] *= 100.0  # calibration, not held back
    model, report = onnxq.quantize(ir.serde.deserialize_model(_dense_model()), samples, holdout=4)
    assert report.rounds[0].error > 0.1 and report.budget_met and report.error <= 0.1
    assert report.higher_precision == {"fc1": "dynamic", "fc2": "dynamic"}
    assert not [why for why in report.kept_float.values() if "fall-back" in why]
    ops = [n.op_type for n in ir.to_proto(model).graph.node]
    assert ops.count("MatMulInteger") == 2 and "Gemm" not in ops and "MatMul" not in ops


def test_the_search_keeps_no_plan_alive(calib, monkeypatch):
    """A plan holds its candidate model, quantized weights and all: the search reads what it needs of the
    first round's plan and lets it go (it kept EfficientNet-Lite0's 5 MB of int8 weights for the whole
    search)."""
    import gc
    import weakref

    from onnxq.quant import fallback

    real = fallback.search
    plans, alive_later = [], []

    def search(evaluate, *args, **kwargs):
        def tracked(forced, quick):
            if plans:
                gc.collect()
                alive_later.append(plans[0]() is not None)
            plan, error = evaluate(forced, quick)
            plans.append(weakref.ref(plan))
            return plan, error

        return real(tracked, *args, **kwargs)

    monkeypatch.setattr(fallback, "search", search)
    _, report = onnxq.quantize(_model(), calib, max_error=0.004)
    assert report.budget_met and len(report.rounds) > 1
    assert len(alive_later) > 2 and not any(alive_later)


def _conv_bn_model() -> onnx.ModelProto:
    """Conv -> BatchNormalization -> Relu -> pooled logits; 256 channels, so the BN's parameters (1 KiB each)
    live in the session folder like the weights."""
    rng = np.random.default_rng(6)
    c = 256
    arrays = {"w": rng.standard_normal((c, 8, 3, 3)), "gamma": rng.random(c) + 0.5, "beta": rng.random(c),
              "mean": rng.random(c), "var": rng.random(c) + 0.5, "fc": rng.standard_normal((c, 10))}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["b"]),
             helper.make_node("Relu", ["b"], ["r"]), helper.make_node("GlobalAveragePool", ["r"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]), helper.make_node("MatMul", ["f", "fc"], ["logits"])]
    graph = helper.make_graph(nodes, "conv_bn",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
                              [numpy_helper.from_array(a.astype(np.float32), n) for n, a in arrays.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_weights_the_passes_read_are_unmapped_after_quantizing(tmp_path: Path):
    """The caller's model shares its tensors with the copy the passes rewrite: what BN folding read and
    replaced (the BN's parameters, the Conv's weight) stayed mapped, resident for the rest of the run
    (EfficientNet-Lite0: 88 tensors, 5 MiB)."""
    from onnxq.quant.quantize import quantize
    from onnxq.session_files import SessionFiles

    path = tmp_path / "conv_bn.onnx"
    onnx.save(_conv_bn_model(), path)
    rng = np.random.default_rng(7)
    samples = [{"x": rng.standard_normal((1, 8, 8, 8)).astype(np.float32)} for _ in range(12)]
    with SessionFiles() as files:
        model = files.load(path).model
        read = {name: model.graph.initializers[name].const_value
                for name in ("w", "gamma", "beta", "mean", "var")}
        assert all(files.owns(tensor) for tensor in read.values())
        quantized, report = quantize(model, samples, session_files=files)
        assert "BatchNormalization" not in [n.op_type for n in quantized.graph] and report.layers
        assert [name for name, tensor in read.items() if tensor.raw is not None] == []


def test_an_offline_optimized_copy_runs_as_the_original(tmp_path: Path, calib):
    """``optimize_for_timing`` writes the graph ORT runs (its optimizations done, weights external); loaded
    with optimizations off, as ORT's offline mode asks, it computes the original's numbers bit for bit."""
    import onnxruntime as ort

    from onnxq.backends.registry import resolve_target

    backend = resolve_target("ort").backend
    source = tmp_path / "demo.onnx"
    onnx.save(DEMO.build(), source)
    written = backend.optimize_for_timing(str(source), str(tmp_path / "optimized.onnx"))
    assert written == str(tmp_path / "optimized.onnx") and (tmp_path / "optimized.data").is_file()
    original = backend.timing_session(str(source))
    optimized = backend.timing_session(written, optimized=True)
    options = optimized.get_session_options()
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    assert options.intra_op_num_threads == 1
    assert len(onnx.load(written, load_external_data=False).graph.node) < len(DEMO.build().graph.node)
    feeds = {"x": calib["x"][0]}
    expected = backend.run(original, feeds)["logits"]
    np.testing.assert_array_equal(backend.run(optimized, feeds)["logits"], expected)
    assert backend.optimize_for_timing(str(tmp_path / "missing.onnx"), str(tmp_path / "x.onnx")) is None


def test_the_speed_check_times_fp32_from_its_optimized_copy(tmp_path: Path, calib, monkeypatch):
    """The FP32 model is optimized and written before quantizing, while the process holds little: a session
    on it then maps its weights instead of copying them during optimization at the run's fullest
    (EfficientNet-Lite0: +49 MiB instead of +73)."""
    from onnxq.backends.base import Backend

    real, timed = Backend.timing_session, []

    def tracked(self, model, *, variant="", optimized=False):
        timed.append((Path(model).name.split("-")[0], optimized))
        return real(self, model, variant=variant, optimized=optimized)

    monkeypatch.setattr(Backend, "timing_session", tracked)
    source, data, out = tmp_path / "demo.onnx", tmp_path / "calib.npz", tmp_path / "q.onnx"
    onnx.save(DEMO.build(), source)
    np.savez(data, **calib)
    assert main(["quantize", str(source), "-o", str(out), "--calib", str(data)]) == 0
    assert timed == [("fp32", True), ("model", False), ("fp32", True)]
