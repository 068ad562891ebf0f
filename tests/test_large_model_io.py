"""Large-model mechanics at small scale: fresh external data, protected inputs, lazy loading, bounded RSS.

The real > 2 GB run (``tools/bench_large_model.py``) is the ``slow`` test at the end.
"""

from __future__ import annotations

import gc
import hashlib
import os
import sys
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest
from conftest import load_tool

import onnxq
from onnxq import model_io, numerics
from onnxq.errors import OutputPathError

bench = load_tool("bench_large_model")
MIB = 1 << 20


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def mlp_50mb(tmp_path_factory) -> Path:
    """3 layers of 2048² float32 weights (48 MiB) in one external file; layer 2 is MatMul + BatchNorm."""
    return bench.write_mlp_model(tmp_path_factory.mktemp("in"), layers=3, hidden=2048, bn_every=3)


def test_generated_model_is_external_aligned_and_valid(mlp_50mb: Path):
    loaded = model_io.load_model(mlp_50mb)
    weights = [v.const_value for v in loaded.model.graph.initializers.values()]
    assert all(isinstance(t, ir.ExternalTensor) for t in weights)
    assert all(t.offset % bench.ALIGNMENT == 0 for t in weights)
    assert loaded.data_files == [mlp_50mb.with_name("mlp.onnx.data").resolve()]
    assert sum(t.nbytes for t in weights) > 48 * MIB
    ops = [n.op_type for n in loaded.model.graph]
    assert {"BatchNormalization", "Identity", "Reshape", "Constant", "MatMul", "Add"} <= set(ops)


def test_optimize_and_save_writes_a_fresh_data_file_and_leaves_the_input_alone(
    mlp_50mb: Path, tmp_path: Path
):
    before = _digest(mlp_50mb.parent)
    loaded = model_io.load_model(mlp_50mb)
    model, report = onnxq.optimize(loaded.model, "default")
    assert report.total_rewrites > 0
    assert not any(n.op_type in ("BatchNormalization", "Identity", "Dropout") for n in model.graph)
    out = tmp_path / "opt.onnx"
    protected = [loaded.path, *loaded.data_files]
    model_io.save_model(model, out, protected=protected, external_data=True)
    data = tmp_path / "opt.onnx.data"
    first = data.read_bytes()
    assert not os.path.samefile(data, loaded.data_files[0])
    assert sorted(os.listdir(tmp_path)) == ["opt.onnx", "opt.onnx.data"]  # no staging folder left behind
    # Saving again replaces the data file instead of appending to it: same bytes, same size.
    model_io.save_model(model, out, protected=protected, external_data=True)
    assert data.read_bytes() == first
    assert sorted(os.listdir(tmp_path)) == ["opt.onnx", "opt.onnx.data"]
    assert _digest(mlp_50mb.parent) == before
    feeds = {"x": np.random.default_rng(0).standard_normal((2, 2048)).astype(np.float32)}
    expected = numerics.run_model(str(mlp_50mb), feeds)["y"]
    actual = numerics.run_model(str(out), feeds)["y"]
    assert numerics.relative_error(expected, actual) < 1e-5


def test_output_whose_data_file_is_the_inputs_data_is_refused(tmp_path: Path):
    # The input keeps its weights in "opt.onnx.data": exactly where an output "opt.onnx" would put its own.
    source = bench.write_mlp_model(tmp_path, layers=2, hidden=64, name="in.onnx", data_name="opt.onnx.data")
    before = _digest(tmp_path)
    loaded = model_io.load_model(source)
    with pytest.raises(OutputPathError, match="would overwrite the input's data"):
        model_io.save_model(
            loaded.model,
            tmp_path / "opt.onnx",
            protected=[loaded.path, *loaded.data_files],
            external_data=True,
        )
    assert _digest(tmp_path) == before


def test_lazy_load_does_not_read_the_weights(tmp_path: Path):
    psutil = pytest.importorskip("psutil")
    source = bench.write_mlp_model(tmp_path, layers=4, hidden=3584, bn_every=100)  # 196 MiB of weights
    process = psutil.Process()
    model_io.load_model(source)  # warm-up: imports and caches are not what this measures
    gc.collect()
    before = process.memory_info().rss
    loaded = model_io.load_model(source)
    growth = process.memory_info().rss - before
    weights = sum(v.const_value.nbytes for v in loaded.model.graph.initializers.values())
    assert weights > 190 * MIB
    assert growth < 50 * MIB, (
        f"loading grew RSS by {growth / MIB:.0f} MiB for {weights / MIB:.0f} MiB of weights"
    )


def test_external_data_save_and_validation_do_not_load_the_weights(tmp_path: Path):
    """With external data, writing (copy_file_range) and validating (ORT maps the file, no prepacking) cost
    far less than the weights. Measured in a child process: each phase's peak is the kernel's high-water mark.
    """
    source = bench.write_mlp_model(tmp_path / "in", layers=4, hidden=3584, bn_every=100)
    out = tmp_path / "out" / "opt.onnx"
    out.parent.mkdir()
    child = bench.run_child(
        [
            sys.executable,
            str(bench.Path(bench.__file__)),
            "--child",
            "onnxq-phases",
            str(source),
            str(out),
            "cleanup",
            "true",
        ],
        log=tmp_path / "child.log",
    )
    phases = {p["phase"]: p for p in child["report"]["phases"]}
    base = phases["load (lazy)"]["peak_rss_mib"]
    save = phases["save (total, nested phases below)"]["peak_rss_mib"]
    assert out.with_name("opt.onnx.data").stat().st_size > 190 * MIB
    assert save - base < 50, f"saving a 196 MiB model raised peak RSS from {base} to {save} MiB"


def test_benchmarks_section_is_replaced_between_markers(tmp_path: Path):
    md = tmp_path / "BENCHMARKS.md"
    md.write_text("# onnxq benchmarks\n\n## Other\n\nkeep me\n")
    result = {
        "date": "2026-01-01",
        "command": "cmd",
        "load_average_1min_at_start": 0.1,
        "versions": {"onnx": "1"},
        "machine": {"cpus": 2, "arch": "x86_64", "cpu": "cpu", "memory_gib": 24},
        "model": {
            "layers": 2,
            "hidden": 8,
            "bn_every": 2,
            "folded_weights": 1,
            "rewritten_mib": 0,
            "external_data_bytes": 10,
        },
        "passes": "default",
        "passes_left_out": {},
        "onnxq": {"wall_s": 1, "wall_incl_sync_s": 1, "peak_rss_mib": 100, "output_bytes": 1, "runs": [{}]},
        "ort_basic": {
            "wall_s": 2,
            "wall_incl_sync_s": 2,
            "peak_rss_mib": 200,
            "output_bytes": 1,
            "session_s": 1,
        },
        "ratio": {
            "time_onnxq_over_ort": 0.5,
            "time_incl_sync_onnxq_over_ort": 0.5,
            "rss_onnxq_over_ort": 0.5,
        },
        "under_1_gib": True,
        "sweep": [],
        "onnxq_phases": {"peak_rss_mib": 100, "wall_s": 1, "phases": [], "passes": []},
        "check": {
            "inputs_unchanged": True,
            "load_rss_growth_mib": 1,
            "initializers_external": True,
            "ops": {},
            "batch": 4,
            "relative_error": 0.0,
            "peak_rss_mib": 300,
            "wall_s": 1,
        },
    }
    bench.update_benchmarks_md(md, result)
    bench.update_benchmarks_md(md, {**result, "date": "2026-02-02"})
    text = md.read_text()
    assert text.count(bench.BEGIN) == 1 and text.count(bench.END) == 1
    assert "keep me" in text and "2026-02-02" in text and "2026-01-01" not in text


@pytest.mark.slow
def test_model_over_2gb_optimizes_under_1gib(tmp_path: Path):
    json_path = tmp_path / "large.json"
    code = bench.main(["--workdir", str(tmp_path / "work"), "--repeat", "1", "--json", str(json_path)])
    result = bench.json.loads(json_path.read_text())
    assert result["model"]["external_data_bytes"] > 2_000_000_000
    assert result["check"]["inputs_unchanged"] and result["check"]["initializers_external"]
    assert result["check"]["relative_error"] < 1e-4
    assert result["onnxq"]["peak_rss_mib"] < 1024 and code == 0
