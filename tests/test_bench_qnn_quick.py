"""The QNN benchmark's quick mode runs end to end on digits_cnn: onnxq and ORT's QNN recipe each produce a
model that the HTP simulator takes whole (strict session) and runs on 4 eval samples with fidelity numbers.

Why a test: the benchmark is only trusted if it keeps running; this takes about 10 s (plus a digits_cnn
build when the zoo folder has none). It skips, saying why, where onnxruntime-qnn is not installed or the
zoo cannot build digits_cnn.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # tools/ and models/ live at the repo root, not in the installed package
    sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="module")
def quick_result(tmp_path_factory: pytest.TempPathFactory) -> dict:
    if importlib.util.find_spec("onnxruntime_qnn") is None:
        pytest.skip("onnxruntime_qnn is not importable (pip install 'onnxq[qnn]')")
    from onnxq.backends.qnn import runtime

    if (reason := runtime.available()) is not None:
        pytest.skip(f"QNN EP unavailable: {reason}")
    from models.registry import get_spec

    missing = [name for name in get_spec("digits_cnn").needs if importlib.util.find_spec(name) is None]
    if missing:
        pytest.skip(f"the zoo cannot build digits_cnn here: missing {', '.join(missing)}")
    from tools.bench.qnn import __main__ as cli, runner

    work = tmp_path_factory.mktemp("bench-qnn")
    options = cli.options_from(cli.parse_args(["--quick", "--work-dir", str(work / "runs")]))
    assert options.models == ["digits_cnn"] and options.eval_samples == 4
    return runner.run_benchmark(options, command="python -m tools.bench.qnn --quick")


def test_quick_mode_offloads_and_measures_both_tools(quick_result: dict) -> None:
    from tools.bench.qnn import runner

    assert runner.quick_problems(quick_result) == []
    records = quick_result["models"]["digits_cnn"]["results"]
    assert set(records) == {"onnxq", "ort"}
    for tool, record in records.items():
        simulator = record["simulator"]
        assert simulator["full_offload"] is True, f"{tool}: {simulator.get('strict_error')}"
        assert simulator["nodes_on_htp"] == simulator["partitioned_nodes"] > 0
        assert simulator["samples"] == 4
        assert record["top1_agreement"] is not None and record["worst_sqnr_db"] > 20, tool
        assert record["peak_rss_mib"] and record["wall_s"] > 0


def test_quick_mode_section_goes_after_the_cpu_section(quick_result: dict, tmp_path: Path) -> None:
    from tools.bench import render as cpu_render
    from tools.bench.qnn import render

    path = tmp_path / "BENCHMARKS.md"
    path.write_text(f"# kept\n\n{cpu_render.BEGIN}\ncpu\n{cpu_render.END}\n\ntail kept\n")
    render.update_benchmarks_md(path, quick_result)
    render.update_benchmarks_md(path, quick_result)  # a rerun replaces the section, never adds one
    text = path.read_text()
    assert text.count(render.BEGIN) == 1 and text.count(render.END) == 1
    assert text.index(cpu_render.END) < text.index(render.BEGIN) < text.index("tail kept")
    assert "### digits_cnn" in text and "| onnxq | ok |" in text and "| ORT QNN recipe | ok" in text
