"""The CLI end to end on the demo model (written like third-party exporters write models)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxq import numerics
from onnxq.cli import main


def _ops(path: Path) -> Counter:
    return Counter(node.op_type for node in onnx.load(path).graph.node)


def test_optimize_default_pipeline_on_third_party_style_model(demo_path: Path, tmp_path: Path, capsys):
    out = tmp_path / "opt.onnx"
    assert main(["optimize", str(demo_path), "-o", str(out), "--verify"]) == 0
    before, after = _ops(demo_path), _ops(out)
    assert before["BatchNormalization"] == 2 and after["BatchNormalization"] == 0
    assert after["Identity"] == 0 and after["Dropout"] == 0
    assert after["LayerNormalization"] == 1 and after["ReduceMean"] == 0  # opset raised to 17 for it
    assert after["HardSwish"] == 1 and after["Clip"] == 0
    assert after["Gemm"] == 2 and after["MatMul"] == 0
    assert after["Erf"] == 1 and after["Gelu"] == 0  # standard Gelu needs opset 20: not raised for it
    assert sum(after.values()) < sum(before.values()) - 15
    proto = onnx.load(out)
    assert {o.domain for o in proto.opset_import} == {""}  # portable: no com.microsoft
    onnx.checker.check_model(proto, full_check=True)
    feeds = {"x": np.random.default_rng(3).standard_normal((4, 3, 32, 32)).astype(np.float32)}
    ref = numerics.run_model(str(demo_path), feeds)["logits"]
    got = numerics.run_model(str(out), feeds)["logits"]
    assert numerics.relative_error(ref, got) < 1e-4
    err = capsys.readouterr().err
    assert "fold-bn" in err and "wrote" in err


def test_optimize_fixes_input_shapes(demo_path: Path, tmp_path: Path):
    out = tmp_path / "static.onnx"
    assert main(["-q", "optimize", str(demo_path), "-o", str(out), "--input-shape", "x=2x3x32x32"]) == 0
    graph = onnx.load(out).graph
    dims = [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims == [2, 3, 32, 32]
    assert [d.dim_value for d in graph.output[0].type.tensor_type.shape.dim] == [2, 10]


def test_optimize_verify_with_given_data(demo_path: Path, tmp_path: Path):
    data = tmp_path / "inputs.npz"
    np.savez(data, x=np.ones((2, 3, 32, 32), np.float32))
    assert main(["-q", "optimize", str(demo_path), "-o", str(tmp_path / "o.onnx"), "--verify-data", str(data)]) == 0


def test_quiet_prints_nothing(demo_path: Path, tmp_path: Path, capsys):
    assert main(["optimize", "--quiet", str(demo_path), "-o", str(tmp_path / "o.onnx")]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_inspect_json_reports_model_facts(demo_path: Path, capsys):
    assert main(["inspect", str(demo_path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["opsets"] == {"": 13} and data["ir_version"] == 7
    assert data["inputs"][0]["dims"] == ["N", "3", "32", "32"] and data["inputs"][0]["dynamic"] is True
    assert data["op_histogram"]["BatchNormalization"] == 2
    float_params = data["parameters"]["float"]
    assert float_params["bytes"] == 4 * float_params["count"] > 0
    assert data["quantized_ops"] == []


def test_inspect_shows_quantized_ops(tmp_path: Path, capsys):
    text = """
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[1, 3, 8, 8] x) => (float[1, 4, 8, 8] y) {
      xs = Constant <value = float {0.05}> ()
      xz = Constant <value = uint8 {128}> ()
      ws = Constant <value = float[4] {0.01, 0.02, 0.03, 0.04}> ()
      wz = Constant <value = int8[4] {0, 0, 0, 0}> ()
      wq = Constant <value = int8[4, 3, 1, 1] {1,2,3,4,5,6,7,8,9,10,11,12}> ()
      q = QuantizeLinear(x, xs, xz)
      dq = DequantizeLinear(q, xs, xz)
      w = DequantizeLinear <axis = 0> (wq, ws, wz)
      y = Conv(dq, w)
    }
    """
    path = tmp_path / "q.onnx"
    proto = onnx.parser.parse_model(text)
    onnx.save(proto, path)
    assert main(["inspect", str(path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    # Constant-node weights are not initializers: fold them first so weights are recognised.
    assert data["quantized_ops"][0]["op_type"] == "Conv"
    assert data["quantized_ops"][0]["activation"] == "uint8"
    folded = tmp_path / "qf.onnx"
    assert main(["-q", "optimize", str(path), "-o", str(folded), "--passes", "fold-constants,dce"]) == 0
    assert main(["inspect", str(folded), "--json"]) == 0
    ops = json.loads(capsys.readouterr().out)["quantized_ops"]
    assert ops == [{"node": ops[0]["node"], "op_type": "Conv", "activation": "uint8", "weight": "int8"}]
    assert main(["inspect", str(folded)]) == 0
    assert "quantized ops" in capsys.readouterr().out


def test_passes_lists_every_pass_and_pipeline(capsys):
    assert main(["passes"]) == 0
    out = capsys.readouterr().out
    for name in ("fold-bn", "fuse-layernorm", "fuse-gelu", "dce", "default", "cleanup"):
        assert name in out


def test_entry_point_exit_codes(demo_path: Path, tmp_path: Path):
    exe = Path(sys.executable).parent / "onnxq"
    if not exe.exists():
        pytest.skip("console script not installed in this environment")
    ok = subprocess.run([exe, "-q", "optimize", demo_path, "-o", tmp_path / "o.onnx"], capture_output=True)
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run([exe, "optimize", demo_path, "-o", tmp_path / "o2.onnx", "--passes", "nope"],
                         capture_output=True, text=True)
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and bad.stderr.startswith("onnxq: error: unknown pass")
    assert not (tmp_path / "o2.onnx").exists()


def test_main_leaves_the_host_logging_as_it_found_it(caplog):
    """In-process runs (pipelines, tests): a quiet run must not leave the root logger at ERROR with its own
    handler; before, a warning logged after ``main(["-q", ...])`` reached no handler of the host's."""
    import logging

    from onnxq.cli import main

    root = logging.getLogger()
    level, handlers = root.level, root.handlers[:]
    chatty = logging.getLogger("onnxscript").level
    assert main(["-q", "targets"]) == 0
    assert root.level == level and root.handlers == handlers and logging.getLogger("onnxscript").level == chatty
    logging.getLogger("onnxq.test").warning("after a quiet run")
    assert "after a quiet run" in caplog.text
