"""The same input and options give byte-identical output files: within one process, across processes
(with different hash seeds, so set/dict-of-str iteration order and id()-based naming would show), with
embedded weights and with ``--external-data`` (the .onnx and the .data file both compared)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from onnxq.cli import main
from strategies import default_pipeline

VARIANTS = {"embedded": [], "external-data": ["--external-data"]}


def _inputs(tmp_path: Path, demo_proto: onnx.ModelProto) -> dict[str, Path]:
    """The demo model (every default pass fires on it), embedded and with its weights in a data file."""
    folder = tmp_path / "inputs"
    folder.mkdir()
    embedded = folder / "demo.onnx"
    onnx.save(demo_proto, embedded)
    external = folder / "demo_ext.onnx"
    onnx.save(
        demo_proto, external, save_as_external_data=True, location="demo_ext.onnx.data", size_threshold=0
    )
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
