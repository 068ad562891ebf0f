"""tools.qnn_probe: the case models are valid, the capability file is complete, and live re-probes on
the QNN HTP simulator agree with it. The live tests skip, with the reason, where onnxruntime-qnn is
unavailable."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import onnx
import pytest

from onnxq.backends.qnn import runtime
from tools.qnn_probe import ARCHS, CASES, PRECISIONS, build_case, differences, main, probe_case
from tools.qnn_probe_build import fixed_qparams
from tools.qnn_probe_cases import case_precisions

CAPABILITIES = Path(__file__).resolve().parents[1] / "backends" / "qnn" / "capabilities.json"
UNAVAILABLE = runtime.available()
live = pytest.mark.skipif(UNAVAILABLE is not None, reason=f"QNN HTP simulator unavailable: {UNAVAILABLE}")


@pytest.fixture(scope="module")
def capabilities() -> dict:
    return json.loads(CAPABILITIES.read_text())


def test_file_covers_every_arch_case_and_precision(capabilities):
    assert capabilities["schema"] == 1
    assert set(capabilities["versions"]) == {"onnxruntime", "onnxruntime_qnn"}
    assert list(capabilities["archs"]) == ["v68", "v69", "v73", "v75", "v79", "v81"]
    for arch, entry in capabilities["archs"].items():
        assert entry["soc_model"] == ARCHS[arch]
        assert isinstance(entry["soc_matches_arch"], bool)
        assert set(entry["cases"]) == set(CASES), arch
        for key, case in entry["cases"].items():
            assert (case["op"], case["variant"]) == (CASES[key].op, CASES[key].variant)
            assert set(case["results"]) == {"a8w8", "a16w8", "a16w16", "a8w4", "a16w4", "fp16"}
            for result in case["results"].values():
                assert ("reason" in result) != result["ok"], (arch, key, result)


def test_file_is_written_deterministically(capabilities):
    assert CAPABILITIES.read_text() == json.dumps(capabilities, sort_keys=True, indent=1) + "\n"


@pytest.mark.parametrize("key", list(CASES))
def test_case_models_pass_checker_with_qdq_on_every_float_io(key):
    assert set(case_precisions(key)) <= set(PRECISIONS)
    for precision in case_precisions(key):
        model = build_case(key, precision).model
        onnx.checker.check_model(model, full_check=True)
        assert (model.ir_version, model.opset_import[0].version) == (10, 21)
        if precision == "fp16":
            assert not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)
            continue
        consumers = {i: n.op_type for n in model.graph.node for i in n.input}
        producers = {o: n.op_type for n in model.graph.node for o in n.output}
        for graph_input in model.graph.input:
            if graph_input.type.tensor_type.elem_type == onnx.TensorProto.FLOAT:
                assert consumers[graph_input.name] == "QuantizeLinear", (key, precision, graph_input.name)
        for graph_output in model.graph.output:
            assert producers[graph_output.name] == "DequantizeLinear", (key, precision, graph_output.name)


def test_fixed_output_encodings():
    assert fixed_qparams("unit", 8) == (1 / 256, 0)
    assert fixed_qparams("tanh", 16) == (2 / 65536, 32768)


LIVE = [
    ("conv", "a8w8", "v73"),
    ("conv", "a16w16", "v68"),
    ("conv", "a16w16", "v73"),
    ("sigmoid_fixed", "a16w8", "v73"),
    ("sigmoid_calibrated", "a16w8", "v73"),
    ("matmul_act", "a8w8", "v68"),
    ("matmul_act", "a16w8", "v73"),
]


@live
@pytest.mark.parametrize(("key", "precision", "arch"), LIVE)
def test_live_probe_matches_file(capabilities, key, precision, arch):
    now = probe_case(key, precision, arch)
    was = capabilities["archs"][arch]["cases"][key]["results"][precision]
    assert differences(f"{arch} {key} {precision}", was, now) == []


@live
def test_live_expectations():
    assert probe_case("conv", "a8w8", "v73") == {"ok": True, "err_lsb": 1.0, "err_lsb_io_cpu": 1.0}
    refused = probe_case("conv", "a16w16", "v68")
    assert not refused["ok"] and "Conv" in refused["reason"]
    assert probe_case("conv", "a16w16", "v73")["ok"]


def test_lpbq_case_models_carry_lpbq_weights():
    """Float form: a blocked int4 DQ whose float scales are k·c (k in 1..16, 16 in every channel); integer
    form: uint8 k through a per-channel DQ into the blocked DQ's scale. Other precisions: not applicable."""
    import numpy as np
    from onnx import numpy_helper

    model = build_case("conv_lpbq", "a16w4").model
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    dq = next(n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == "c1_q")
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in dq.attribute}
    assert attrs == {"axis": 1, "block_size": 32}
    scales = inits[dq.input[1]].reshape(64, 3)
    channel = scales.max(axis=1) / 16
    ints = scales / channel[:, None]
    assert np.allclose(ints, np.round(ints), atol=1e-4) and ints.min() > 0.99
    assert np.all(ints.max(axis=1) == 16)
    model = build_case("matmul_lpbq_int", "a8w4").model
    producers = {o: n for n in model.graph.node for o in n.output}
    weight_dq = next(n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == "c1_q")
    scale_dq = producers[weight_dq.input[1]]
    assert scale_dq.op_type == "DequantizeLinear"
    assert inits_dtype(model, scale_dq.input[0]) == onnx.TensorProto.UINT8
    assert inits_dtype(model, weight_dq.input[2]) == onnx.TensorProto.INT4
    with pytest.raises(KeyError, match="a8w4, a16w4"):
        build_case("conv_lpbq", "a8w8")


def inits_dtype(model, name):
    return next(t.data_type for t in model.graph.initializer if t.name == name)


def test_lpbq_file_records_not_applicable_precisions(capabilities):
    for entry in capabilities["archs"].values():
        for key, case in entry["cases"].items():
            if "lpbq" in key:
                for precision in set(PRECISIONS) - set(case_precisions(key)):
                    assert case["results"][precision]["derived"] and not case["results"][precision]["ok"]


@live
@pytest.mark.parametrize(("key", "precision", "arch"), [
    ("conv_lpbq", "a16w4", "v73"), ("matmul_lpbq_int", "a8w4", "v68"), ("gemm_lpbq", "a16w4", "v68"),
])
def test_live_lpbq_probe_matches_file(capabilities, key, precision, arch):
    now = probe_case(key, precision, arch)
    was = capabilities["archs"][arch]["cases"][key]["results"][precision]
    assert differences(f"{arch} {key} {precision}", was, now) == []


@live
def test_check_mode_reports_mismatches(tmp_path, capabilities, capsys):
    argv = ["--arch", "v73", "--case", "matmul_act", "--jobs", "1", "--no-epcontext", "--check"]
    assert main([*argv, str(CAPABILITIES)]) == 0
    tampered = copy.deepcopy(capabilities)
    tampered["archs"]["v73"]["cases"]["matmul_act"]["results"]["a8w8"] = {"ok": False, "reason": "test"}
    path = tmp_path / "tampered.json"
    path.write_text(json.dumps(tampered))
    assert main([*argv, str(path)]) == 1
    assert "v73 matmul_act a8w8: ok False in the file, True now" in capsys.readouterr().out
