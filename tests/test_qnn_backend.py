"""QNN backend: targets, probe-built tables, full-offload quantization and EPContext export on the HTP
simulator (onnxruntime-qnn's Linux x86-64 wheel). Runtime tests skip, with the reason, where it is absent."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxq import api
from onnxq.backends.capability import RowKind
from onnxq.backends.qnn import runtime, socs
from onnxq.backends.qnn.table import _accepted, build_table, load_capabilities
from onnxq.backends.registry import resolve_target
from onnxq.cli import main
from onnxq.errors import UnknownNameError

UNAVAILABLE = runtime.available()
needs_qnn = pytest.mark.skipif(UNAVAILABLE is not None, reason=f"QNN EP unavailable: {UNAVAILABLE}")


# -- targets and tables (no runtime needed) -------------------------------------------------------------
@pytest.mark.parametrize("text, name", [
    ("qnn:43", "qnn:sm8550"), ("qnn:sm8550", "qnn:sm8550"), ("qnn:SM8650", "qnn:sm8650"),
    ("qnn:v79", "qnn:sm8750"), ("qnn:v68", "qnn:sm8350"), ("qnn", "qnn:sm8550"), ("qnn:68", "qnn:sm8635"),
])
def test_target_names(text, name):
    assert resolve_target(text).name == name


@pytest.mark.parametrize("text", ["qnn:v99", "qnn:73", "qnn:sm0000", "qnn:v7"])
def test_unknown_soc_lists_known_ones(text):
    with pytest.raises(UnknownNameError) as error:
        resolve_target(text)
    assert "sm8550 (43, v73)" in str(error.value) and "v81" in str(error.value)


def test_every_arch_has_probe_data_and_a_table():
    data = load_capabilities()
    assert sorted(data["archs"]) == sorted(socs.ARCHS)
    for arch in socs.ARCHS:
        table = build_table(socs.parse_soc(arch))
        assert table.full_offload and table.static_shapes and not table.float_fallback
        assert table.default_precision == "a8w8"


@pytest.mark.parametrize("arch", socs.ARCHS)
def test_tables_contain_only_what_the_probe_saw_run(arch):
    from onnxq.backends.qnn.table import _row_specs

    data = load_capabilities()["archs"][arch]
    table = build_table(socs.parse_soc(arch))
    specs = {spec.row.name: spec for spec in _row_specs()}
    for row in table.rows:
        for case in specs[row.name].cases:
            assert set(row.precisions) <= _accepted(data, case), (arch, row.name, case)
    # W16A16 convolutions: in the table exactly where the probe saw them run accurately
    conv = next(row for row in table.rows if row.name == "conv")
    assert ("a16w16" in conv.precisions) == ("a16w16" in _accepted(data, "conv")), arch
    # Erf never ran on the HTP in the probe: no row, so a model with Erf is reported, not silently split
    assert "Erf" not in {row.ops[0] for row in table.rows}
    assert any(row.kind is RowKind.COMPUTE for row in table.rows)


def test_w16a16_convolutions_only_from_v73():
    """NOTES: W16A16 Conv/FC needs >= v73; the probe data must say the same."""
    for arch in socs.ARCHS:
        conv = next(r for r in build_table(socs.parse_soc(arch)).rows if r.name == "conv")
        assert ("a16w16" in conv.precisions) == (arch not in ("v68", "v69")), arch


# -- quantization on the simulator ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def demo_files(tmp_path_factory) -> tuple[Path, Path]:
    from tests.conftest import load_tool

    folder = tmp_path_factory.mktemp("qnn_demo")
    module = load_tool("make_demo_model")
    onnx.save(module.build(), folder / "demo.onnx")
    rng = np.random.default_rng(0)
    np.savez(folder / "calib.npz", x=rng.standard_normal((24, 3, 32, 32)).astype(np.float32))
    return folder / "demo.onnx", folder / "calib.npz"


@pytest.fixture(scope="module")
def demo_quantized(demo_files, tmp_path_factory):
    model_path, calib = demo_files
    quantized, report = api.quantize(api.load(model_path), calib, target="qnn:sm8550")
    path = tmp_path_factory.mktemp("qnn_q") / "demo_q.onnx"
    api.save(quantized, path)
    return path, report


@needs_qnn
def test_quantize_demo_runs_fully_on_htp(demo_quantized):
    path, report = demo_quantized
    assert report.placement["full_offload"], report.placement
    assert report.placement["on_target"] == report.placement["total_nodes"] > 30
    assert report.budget_met and report.error < 0.05, report.error
    assert not report.kept_float
    proto = onnx.load(path)
    onnx.checker.check_model(proto, full_check=True)
    # static shapes fixed from the calibration data (the demo's batch dim is symbolic)
    assert [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 32, 32]
    # graph input and output quantized on the HTP: the output comes out of a DequantizeLinear
    producers = {out: node.op_type for node in proto.graph.node for out in node.output}
    assert producers[proto.graph.output[0].name] == "DequantizeLinear"
    # the strict session (no CPU fallback) is the proof of full offload
    runtime.session(str(path), "43", strict=True)
    # erf-form GELU reached the HTP as Gelu (opset raised to 21 before the passes)
    ops = {node.op_type for node in proto.graph.node}
    assert "Gelu" in ops and "Erf" not in ops


def _conv_act_model(activation: str) -> onnx.ModelProto:
    rng = np.random.default_rng(1)
    w = numpy_helper.from_array(rng.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node(activation, ["c"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _qparams(proto: onnx.ModelProto, tensor: str) -> tuple[float, int]:
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    node = next(n for n in proto.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == tensor)
    return float(inits[node.input[1]]), int(inits[node.input[2]])


@needs_qnn
def test_relu_range_is_the_producers_range(tmp_path):
    """Conv → Relu: the conv output is quantized with the ReLU output's scale and zero point 0, so the
    quantizer clamps and no level is spent on negative values the ReLU drops."""
    calib = [{"x": np.random.default_rng(i).standard_normal((1, 3, 8, 8)).astype(np.float32)} for i in range(12)]
    import onnx_ir as ir

    model = ir.serde.deserialize_model(_conv_act_model("Relu"))
    quantized, report = api.quantize(model, calib, target="qnn:sm8550")
    proto = ir.to_proto(quantized)
    conv_out = next(n for n in proto.graph.node if n.op_type == "Conv").output[0]
    relu_out = next(n for n in proto.graph.node if n.op_type == "Relu").output[0]
    assert _qparams(proto, conv_out) == _qparams(proto, relu_out)
    assert _qparams(proto, conv_out)[1] == 0
    assert report.placement["full_offload"]


@needs_qnn
@pytest.mark.parametrize("precision, step", [("a8w8", 1 / 256), ("a16w8", 1 / 65536)])
def test_sigmoid_output_range_is_fixed_as_the_htp_requires(precision, step):
    """The probe saw QNN override 16-bit Sigmoid encodings with <0, 1/65536>: the table pins Sigmoid's
    output to [0, 1] and the parameters come out exactly 1/2^bits and 0."""
    import onnx_ir as ir

    sigmoid = next(r for r in resolve_target("qnn:sm8550").table().rows if r.name == "sigmoid")
    assert sigmoid.fixed_output == "unit"
    calib = [{"x": np.random.default_rng(i).standard_normal((1, 3, 8, 8)).astype(np.float32)} for i in range(12)]
    quantized, report = api.quantize(ir.serde.deserialize_model(_conv_act_model("Sigmoid")), calib,
                                     target="qnn:sm8550", precision=precision)
    proto = ir.to_proto(quantized)
    sigmoid_out = next(n for n in proto.graph.node if n.op_type == "Sigmoid").output[0]
    scale, zero = _qparams(proto, sigmoid_out)
    assert scale == np.float32(step) and zero == 0
    assert report.placement["full_offload"]


@needs_qnn
def test_fallback_moves_layers_to_16_bit_never_to_float(demo_files):
    model_path, calib = demo_files
    _, report = api.quantize(api.load(model_path), calib, target="qnn:sm8550", max_error=0.004)
    assert report.higher_precision, "a tight budget must move some layers to 16-bit"
    assert set(report.higher_precision.values()) <= {"a16w8", "a16w16"}
    assert not report.kept_float
    assert report.placement["full_offload"]


# -- export --------------------------------------------------------------------------------------------
@needs_qnn
def test_export_is_byte_identical_and_runs_back(demo_quantized, tmp_path, capsys):
    path, _ = demo_quantized
    copy = tmp_path / "elsewhere" / path.name  # the same model from another folder gives the same bytes
    copy.parent.mkdir()
    copy.write_bytes(path.read_bytes())
    for name, source in (("a", path), ("b", copy)):
        assert main(["export", str(source), "--target", "qnn:sm8550", "-o", str(tmp_path / name)]) == 0
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files == ["demo_q.encodings.json", "demo_q_ctx.onnx", "demo_q_ctx_qnn.bin", "demo_q_export.json"]
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    report = json.loads((tmp_path / "a" / "demo_q_export.json").read_text())
    assert report["runback"]["passed"] and report["runback"]["max_diff_lsb"] <= 4
    assert report["placement"]["full_offload"] and report["htp_arch"] == "v73"
    # the EPContext model loads on the simulator with CPU fallback disabled
    session = runtime.session(str(tmp_path / "a" / "demo_q_ctx.onnx"), "43", strict=True)
    assert session.run(None, {"x": np.zeros((1, 3, 32, 32), np.float32)})[0].shape == (1, 10)
    enc = json.loads((tmp_path / "a" / "demo_q.encodings.json").read_text())
    assert enc["version"] == "1.0.0" and enc["activation_encodings"] and enc["param_encodings"]
    assert any(e["enc_type"] == "PER_CHANNEL" and e["is_sym"] for e in enc["param_encodings"])
    assert "x" in {e["name"] for e in enc["activation_encodings"]}


@needs_qnn
def test_context_binaries_differ_per_arch(demo_quantized, tmp_path):
    path, _ = demo_quantized
    binaries = {}
    for arch in ("v68", "v73", "v79"):
        assert main(["-q", "export", str(path), "--target", f"qnn:{arch}", "-o", str(tmp_path / arch)]) == 0
        report = json.loads((tmp_path / arch / "demo_q_export.json").read_text())
        assert report["runback"]["passed"] and report["htp_arch"] == arch
        binaries[arch] = (tmp_path / arch / "demo_q_ctx_qnn.bin").read_bytes()
    assert len(set(binaries.values())) == 3


def _qdq_erf_model(path: Path) -> None:
    inits = [numpy_helper.from_array(np.array(0.02, np.float32), "s"),
             numpy_helper.from_array(np.array(128, np.uint8), "z")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node("Sigmoid", ["xd"], ["g"]),
             helper.make_node("QuantizeLinear", ["g", "s", "z"], ["gq"]),
             helper.make_node("DequantizeLinear", ["gq", "s", "z"], ["gd"]),
             helper.make_node("Erf", ["gd"], ["e"], name="the_erf"),
             helper.make_node("QuantizeLinear", ["e", "s", "z"], ["eq"]),
             helper.make_node("DequantizeLinear", ["eq", "s", "z"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10), path)


@needs_qnn
def test_export_names_the_op_the_target_cannot_run(tmp_path, capsys):
    model = tmp_path / "erf.onnx"
    _qdq_erf_model(model)
    code = main(["export", str(model), "--target", "qnn:sm8550", "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "qnn:sm8550 cannot run" in err and "'the_erf' (Erf)" in err and "--allow-cpu-fallback" in err
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["erf.onnx"]  # no staging left behind
    # with CPU fallback allowed the export goes through and the report lists the refused node
    assert main(["-q", "export", str(model), "--target", "qnn:sm8550", "-o", str(tmp_path / "out"),
                 "--allow-cpu-fallback"]) == 0
    report = json.loads((tmp_path / "out" / "erf_export.json").read_text())
    assert "the_erf" in report["placement"]["refused"] and not report["placement"]["full_offload"]


@needs_qnn
def test_export_refuses_float_and_dynamic_models(demo_files, tmp_path, capsys):
    model_path, _ = demo_files
    assert main(["export", str(model_path), "--target", "qnn:sm8550", "-o", str(tmp_path / "o")]) == 2
    assert "no Q/DQ nodes" in capsys.readouterr().err
    dynamic = tmp_path / "dyn.onnx"
    _qdq_erf_model(dynamic)
    proto = onnx.load(dynamic)
    proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    onnx.save(proto, dynamic)
    assert main(["export", str(dynamic), "--target", "qnn:sm8550", "-o", str(tmp_path / "o")]) == 2
    assert "needs static input shapes; input 'x' is Nx8" in capsys.readouterr().err
    assert main(["export", str(dynamic), "--target", "ort", "-o", str(tmp_path / "o")]) == 2
    assert "exportable targets: qnn" in capsys.readouterr().err


@needs_qnn
def test_quantize_cli_reports_placement(demo_files, tmp_path, capsys):
    model_path, calib = demo_files
    out, report = tmp_path / "q.onnx", tmp_path / "r.json"
    assert main(["quantize", str(model_path), "-o", str(out), "--calib", str(calib), "--target", "qnn:v79",
                 "--report", str(report)]) == 0
    data = json.loads(report.read_text())
    assert data["target"] == "qnn:sm8750" and data["placement"]["full_offload"] and data["speedup"] is None
    assert "speed-up" not in capsys.readouterr().err  # simulated: no speed claims
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == [1, 3, 32, 32]


@needs_qnn
def test_int4_weights_per_recipe_run_fully_on_htp(demo_files):
    model_path, calib = demo_files
    quantized, report = api.quantize(api.load(model_path), calib, target="qnn:sm8550", precision="a16w4")
    import onnx_ir as ir

    proto = ir.to_proto(quantized)
    int4 = [t for t in proto.graph.initializer if t.data_type == TensorProto.INT4]
    assert len(int4) >= 4  # every Conv/Gemm weight
    assert report.placement["full_offload"] and report.budget_met


@pytest.mark.parametrize("make, expect", [
    (lambda d: (d / "m.onnx").write_bytes(b"not a model"), "m.onnx"),
    (lambda d: None, "does not exist"),
    (lambda d: (_qdq_erf_model(d / "m.onnx"), (d / "out").write_text("x")), "is a file; export writes a folder"),
])
def test_export_bad_input_is_one_line_exit_2(tmp_path, capsys, make, expect):
    if UNAVAILABLE is not None and "folder" in expect:
        pytest.skip(f"QNN EP unavailable: {UNAVAILABLE}")
    make(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    code = main(["export", str(tmp_path / "m.onnx"), "--target", "qnn:sm8550", "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1 and expect in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def _yolo_head_model() -> onnx.ModelProto:
    """A YOLO-style head: boxes (0..640) and scores (0..1) concatenated into one output [1, 5, 64]."""
    rng = np.random.default_rng(5)
    inits = [numpy_helper.from_array(rng.normal(0, 0.4, (4, 8, 1)).astype(np.float32), "wb"),
             numpy_helper.from_array(rng.normal(0, 0.4, (1, 8, 1)).astype(np.float32), "ws"),
             numpy_helper.from_array(np.array(640.0, np.float32), "scale")]
    nodes = [helper.make_node("Conv", ["x", "wb"], ["b"]), helper.make_node("Sigmoid", ["b"], ["bs"]),
             helper.make_node("Mul", ["bs", "scale"], ["boxes"]),
             helper.make_node("Conv", ["x", "ws"], ["s"]), helper.make_node("Sigmoid", ["s"], ["scores"]),
             helper.make_node("Concat", ["boxes", "scores"], ["y"], axis=1, name="head_concat")]
    graph = helper.make_graph(nodes, "yolo", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5, 64])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@needs_qnn
def test_yolo_style_head_stays_on_htp_and_keeps_its_scores():
    """One 8-bit scale for boxes (0..640) and scores (0..1) would leave the scores 0 or 2.5: the Concat
    moves to 16 bits (not to float, which would leave the HTP) and the scores survive."""
    import onnx_ir as ir

    rng = np.random.default_rng(6)
    calib = [{"x": rng.standard_normal((1, 8, 64)).astype(np.float32)} for _ in range(16)]
    quantized, report = api.quantize(ir.serde.deserialize_model(_yolo_head_model()), calib, target="qnn:sm8550")
    assert report.higher_precision.get("head_concat") == "a16w8"
    assert "head_concat" not in report.kept_float and report.placement["full_offload"]
    x = {"x": rng.standard_normal((1, 8, 64)).astype(np.float32)}
    from onnxq import numerics

    reference = numerics.run_model(ir.serde.deserialize_model(_yolo_head_model()), x)["y"]
    session = runtime.session(numerics.model_bytes(quantized), "43", strict=True)
    got = session.run(None, x)[0]
    scores_error = np.abs(got[:, 4] - reference[:, 4]).max()
    assert scores_error < 0.02, scores_error  # an 8-bit shared scale would be off by up to 1.25


def _masked_attention_model() -> onnx.ModelProto:
    """Scores + (1 - mask) * finfo(float32).min → Softmax: the attention-mask idiom of BERT exports."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(16, 16)).astype(np.float32), "w"),
             numpy_helper.from_array(np.array(1.0, np.float32), "one"),
             numpy_helper.from_array(np.array(np.finfo(np.float32).min, np.float32), "big")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["s"]), helper.make_node("Sub", ["one", "mask"], ["inv"]),
             helper.make_node("Mul", ["inv", "big"], ["b"]), helper.make_node("Add", ["s", "b"], ["l"]),
             helper.make_node("Softmax", ["l"], ["y"], axis=-1)]
    graph = helper.make_graph(nodes, "masked", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16]),
                                                helper.make_tensor_value_info("mask", TensorProto.FLOAT, [1, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 16])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)], ir_version=8)


@needs_qnn
def test_attention_mask_sentinel_does_not_flatten_the_softmax():
    """A -3.4e38 mask used to set the scores' scale to 1e36: every score rounded to 0, Softmax uniform."""
    import onnx_ir as ir

    rng = np.random.default_rng(1)
    calib = []
    for _ in range(24):
        mask = np.ones((1, 16), np.float32)
        mask[0, rng.integers(8, 16):] = 0
        calib.append({"x": rng.normal(size=(1, 8, 16)).astype(np.float32), "mask": mask})
    quantized, report = api.quantize(ir.serde.deserialize_model(_masked_attention_model()), calib,
                                     target="qnn:sm8550")
    assert report.budget_met and report.error < 0.1 and report.placement["full_offload"], report.error  # was 0.92
    from onnxq import numerics

    mask = np.ones((1, 16), np.float32)
    mask[0, 10:] = 0
    probabilities = numerics.run_model(quantized, {"x": rng.normal(size=(1, 8, 16)).astype(np.float32),
                                                   "mask": mask})["y"]
    assert probabilities[..., 10:].max() < 0.01  # masked keys get no attention


def test_runback_steps_are_8_bit_steps_of_the_output_range():
    """A 16-bit output is held to the absolute accuracy of an 8-bit one: its step counts 65535/255 times."""
    from onnx import helper, numpy_helper

    from onnxq.backends.qnn.export import _output_steps

    def model(zero_dtype):
        inits = [numpy_helper.from_array(np.array(0.01, np.float32), "s"),
                 numpy_helper.from_array(np.array(0, zero_dtype), "z")]
        graph = helper.make_graph([helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
                                   helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])], "g",
                                  [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
                                  [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])], inits)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])

    assert _output_steps(model(np.uint8)) == {"y": pytest.approx(0.01)}
    assert _output_steps(model(np.uint16)) == {"y": pytest.approx(0.01 * 65535 / 255)}
