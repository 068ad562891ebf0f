"""tools/qnn_android_build.py: one command from ONNX + calibration data to a context binary and a report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxq.backends.qnn import runtime
from tests.conftest import load_tool

UNAVAILABLE = runtime.available()
pytestmark = pytest.mark.skipif(UNAVAILABLE is not None, reason=f"QNN EP unavailable: {UNAVAILABLE}")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("android")
    onnx.save(load_tool("make_demo_model").build(), folder / "demo.onnx")
    np.savez(folder / "calib.npz", x=np.random.default_rng(0).standard_normal((24, 3, 32, 32)).astype(np.float32))
    return folder / "demo.onnx", folder / "calib.npz"


def test_build_writes_a_verified_deterministic_bundle(inputs, tmp_path, capsys):
    model, calib = inputs
    tool = load_tool("qnn_android_build")
    for name in ("a", "b"):
        assert tool.main([str(model), "--calib", str(calib), "--soc", "v79", "-o", str(tmp_path / name)]) == 0
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files == ["demo.build.md", "demo.qdq.encodings.json", "demo.qdq.onnx", "demo.qdq_ctx.onnx",
                     "demo.qdq_ctx_qnn.bin", "demo.qdq_export.json", "demo.quant.json"]
    for name in files:  # the same input gives the same bytes, binary included
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    quant = json.loads((tmp_path / "a" / "demo.quant.json").read_text())
    assert quant["budget_met"] and quant["placement"]["full_offload"] and quant["target"] == "qnn:sm8750"
    export = json.loads((tmp_path / "a" / "demo.qdq_export.json").read_text())
    assert export["htp_arch"] == "v79" and export["runback"]["passed"]
    report = (tmp_path / "a" / "demo.build.md").read_text()
    assert "HTP v79" in report and "nodes on the HTP: " in report and "— met" in report


def test_build_bad_soc_is_one_line_exit_2(inputs, tmp_path, capsys):
    model, calib = inputs
    code = load_tool("qnn_android_build").main([str(model), "--calib", str(calib), "--soc", "sm9999",
                                                "-o", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "unknown qnn SoC or HTP arch 'sm9999'" in err
    assert not (tmp_path / "o").exists()
