"""The same input and options give byte-identical output files: within one process, across processes
(with different hash seeds, so set/dict-of-str iteration order and id()-based naming would show).

``optimize``: with embedded weights and with ``--external-data`` (the .onnx and the .data file both
compared). ``quantize`` (ORT target, demo model and its calibration data): default options, a non-default
calibration method, and a budget tight enough that verify-and-fall-back moves layers back to float; the
``--report`` JSON is compared too, less ``speedup`` (a latency measured on this machine, so it legitimately
differs from run to run; every other field is computed from the data)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxq.cli import main
from conftest import load_tool
from strategies import default_pipeline

VARIANTS = {"embedded": [], "external-data": ["--external-data"]}


def _inputs(tmp_path: Path, demo_proto: onnx.ModelProto) -> dict[str, Path]:
    """The demo model (every default pass fires on it), embedded and with its weights in a data file."""
    folder = tmp_path / "inputs"
    folder.mkdir()
    embedded = folder / "demo.onnx"
    onnx.save(demo_proto, embedded)
    external = folder / "demo_ext.onnx"
    copy = onnx.ModelProto()
    copy.CopyFrom(demo_proto)  # saving as external data rewrites the proto it is given; the fixture is shared
    onnx.save(copy, external, save_as_external_data=True, location="demo_ext.onnx.data", size_threshold=0)
    return {"embedded": embedded, "external-data": external}


def _argv(model: Path, out: Path, variant: str) -> list[str]:
    return ["-q", "optimize", str(model), "-o", str(out), "--passes", default_pipeline(), *VARIANTS[variant]]


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _run_in_subprocess(argvs: list[list[str]], hash_seed: str) -> None:
    code = f"import sys; from onnxq.cli import main; sys.exit(max(main(a) for a in {argvs!r}))"
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def outputs(tmp_path_factory, demo_proto: onnx.ModelProto) -> dict[str, dict[str, dict[str, bytes]]]:
    """variant -> run name -> {file name: bytes}; runs: two in this process, one in each of two processes."""
    tmp_path = tmp_path_factory.mktemp("determinism")
    inputs = _inputs(tmp_path, demo_proto)
    runs = ["process-a", "process-b", "in-process-1", "in-process-2"]
    folders = {(v, r): tmp_path / v / r for v in VARIANTS for r in runs}
    for folder in folders.values():
        folder.mkdir(parents=True)
    for run, seed in (("process-a", "1"), ("process-b", "2")):
        _run_in_subprocess([_argv(inputs[v], folders[v, run] / "out.onnx", v) for v in VARIANTS], seed)
    for variant in VARIANTS:
        for run in ("in-process-1", "in-process-2"):
            assert main(_argv(inputs[variant], folders[variant, run] / "out.onnx", variant)) == 0
    return {v: {r: _files(folders[v, r]) for r in runs} for v in VARIANTS}


@pytest.mark.parametrize("variant", VARIANTS)
def test_two_runs_in_one_process_write_identical_bytes(outputs, variant: str):
    runs = outputs[variant]
    assert runs["in-process-1"] == runs["in-process-2"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_two_processes_with_different_hash_seeds_write_identical_bytes(outputs, variant: str):
    runs = outputs[variant]
    assert runs["process-a"] == runs["process-b"] == runs["in-process-1"]


def test_external_data_run_writes_a_fresh_data_file(outputs):
    files = outputs["external-data"]["in-process-1"]
    assert sorted(files) == ["out.onnx", "out.onnx.data"] and len(files["out.onnx.data"]) > 0
    assert sorted(outputs["embedded"]["in-process-1"]) == ["out.onnx"]


def test_the_pipeline_rewrote_the_model(outputs, demo_proto: onnx.ModelProto):
    """Guard against a vacuous pass: the compared outputs are optimized models, not copies."""
    out = onnx.load_from_string(outputs["embedded"]["in-process-1"]["out.onnx"])
    assert len(out.graph.node) < len(demo_proto.graph.node) - 10


# --- quantize -----------------------------------------------------------------------------------------

QUANT_VARIANTS = {
    "default": [],
    "entropy": ["--method", "entropy"],
    # Tight enough that fall-back moves some layers to float (with a bisection step), not all of them.
    "fallback": ["--method", "mse", "--max-error", "0.01"],
}
#: Report fields that depend on the machine and the moment, not on the inputs.
RUN_DEPENDENT = {"speedup"}


def _quantize_argv(model: Path, calib: Path, folder: Path, variant: str) -> list[str]:
    out, report = folder / "out.onnx", folder / "report.json"
    return ["-q", "quantize", str(model), "-o", str(out), "--calib", str(calib), "--report", str(report),
            *QUANT_VARIANTS[variant]]


@pytest.fixture(scope="module")
def quantized(tmp_path_factory, demo_proto: onnx.ModelProto) -> dict[str, dict[str, dict[str, bytes]]]:
    """variant -> run name -> {file name: bytes} (out.onnx, report.json); runs as in ``outputs``."""
    tmp_path = tmp_path_factory.mktemp("quantize-determinism")
    model, calib = tmp_path / "demo.onnx", tmp_path / "demo.calib.npz"
    onnx.save(demo_proto, model)
    np.savez(calib, **load_tool("make_demo_model").calibration_data())
    runs = ["process-a", "process-b", "in-process-1", "in-process-2"]
    folders = {(v, r): tmp_path / v / r for v in QUANT_VARIANTS for r in runs}
    for folder in folders.values():
        folder.mkdir(parents=True)
    for run, seed in (("process-a", "3"), ("process-b", "4")):
        _run_in_subprocess([_quantize_argv(model, calib, folders[v, run], v) for v in QUANT_VARIANTS], seed)
    for variant in QUANT_VARIANTS:
        for run in ("in-process-1", "in-process-2"):
            err = io.StringIO()
            with contextlib.redirect_stderr(err):
                code = main(_quantize_argv(model, calib, folders[variant, run], variant))
            assert code == 0, err.getvalue()
    return {v: {r: _files(folders[v, r]) for r in runs} for v in QUANT_VARIANTS}


def _model_bytes(runs: dict[str, dict[str, bytes]]) -> dict[str, bytes]:
    return {run: files["out.onnx"] for run, files in runs.items()}


def _stable_report(files: dict[str, bytes]) -> dict:
    report = json.loads(files["report.json"])
    return {key: value for key, value in report.items() if key not in RUN_DEPENDENT}


@pytest.mark.parametrize("variant", QUANT_VARIANTS)
def test_quantize_twice_in_one_process_writes_identical_bytes(quantized, variant: str):
    models = _model_bytes(quantized[variant])
    assert models["in-process-1"] == models["in-process-2"]


@pytest.mark.parametrize("variant", QUANT_VARIANTS)
def test_quantize_in_two_processes_with_different_hash_seeds_writes_identical_bytes(quantized, variant: str):
    models = _model_bytes(quantized[variant])
    assert models["process-a"] == models["process-b"] == models["in-process-1"]


@pytest.mark.parametrize("variant", QUANT_VARIANTS)
def test_quantize_report_is_identical_but_for_the_measured_speedup(quantized, variant: str):
    runs = quantized[variant]
    assert sorted(runs["in-process-1"]) == ["out.onnx", "report.json"]
    reports = {run: _stable_report(files) for run, files in runs.items()}
    assert all(report == reports["in-process-1"] for report in reports.values()), reports
    for files in runs.values():
        speedup = json.loads(files["report.json"])["speedup"]
        assert isinstance(speedup, float) and speedup > 0


def test_quantize_variants_did_what_they_say(quantized):
    """Guard against vacuous comparisons: the variants really differ, and fall-back really moved layers."""
    reports = {v: _stable_report(runs["in-process-1"]) for v, runs in quantized.items()}
    assert [reports[v]["method"] for v in QUANT_VARIANTS] == ["minmax", "entropy", "mse"]
    assert len({runs["in-process-1"]["out.onnx"] for runs in quantized.values()}) == len(QUANT_VARIANTS)
    default = reports["default"]
    assert default["kept_float"] == {} and default["budget_met"] and default["max_error"] == 0.03  # a classifier
    fallback = reports["fallback"]
    moved = [node for node, why in fallback["kept_float"].items() if "fall-back" in why]
    assert fallback["budget_met"] and moved and fallback["layers"] and len(fallback["rounds"]) > 1, fallback
