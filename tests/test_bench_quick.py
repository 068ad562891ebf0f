"""The quantizer benchmark's quick mode runs end to end on digits_cnn: onnxq and ORT's quantizer each
produce a model that ONNX Runtime loads and runs, with a finite latency ratio against FP32.

Why a test: the benchmark is only trusted if it keeps running; CI runs this (about a minute: a digits_cnn
build when the zoo folder has none, two quantizer processes, one evaluation process). It skips, saying
why, where the zoo cannot build digits_cnn (torch, scikit-learn or scipy missing).
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # tools/ and models/ live at the repo root, not in the installed package
    sys.path.insert(0, str(ROOT))


def _missing_zoo_modules() -> list[str]:
    from models.registry import get_spec

    return [name for name in get_spec("digits_cnn").needs if importlib.util.find_spec(name) is None]


@pytest.fixture(scope="module")
def quick_result(tmp_path_factory: pytest.TempPathFactory) -> dict:
    missing = _missing_zoo_modules()
    if missing:
        pytest.skip(f"the zoo cannot build digits_cnn here: missing {', '.join(missing)} "
                    "(pip install -e .[torch] plus scikit-learn and scipy)")
    from tools.bench import runner

    work = tmp_path_factory.mktemp("bench")
    return runner.run_benchmark(runner.BenchOptions.quick_mode(work_dir=work / "runs", latency_rounds=20))


def test_quick_mode_has_a_loaded_record_per_tool(quick_result: dict) -> None:
    model = quick_result["models"]["digits_cnn"]
    assert model["status"] == "ok", model["status"]
    records = model["results"]["a8w8"]
    assert set(records) == {"onnxq", "ort"}
    for tool, record in records.items():
        assert record.get("loaded") is True, f"{tool}: {record.get('status')}"
        assert record.get("ran") is True, f"{tool}: {record.get('error')}"
        ratio = record.get("latency_ratio")
        assert ratio is not None and math.isfinite(ratio) and ratio > 0, f"{tool}: latency ratio {ratio}"
        assert record["peak_rss_mib"] and record["peak_rss_mib"] > 0
        assert record["compression"] > 1.0, f"{tool}: the INT8 model is not smaller than FP32"
    from tools.bench import runner

    assert runner.quick_problems(quick_result) == []


def test_quick_mode_renders_a_markdown_section(quick_result: dict, tmp_path: Path) -> None:
    from tools.bench import render

    path = tmp_path / "BENCHMARKS.md"
    path.write_text(f"# kept\n\n{render.BEGIN}\nold\n{render.END}\n\ntail kept\n")
    render.update_benchmarks_md(path, quick_result)
    text = path.read_text()
    assert text.startswith("# kept") and text.rstrip().endswith("tail kept")
    assert text.count(render.BEGIN) == 1 and "\nold\n" not in text
    assert "| digits_cnn |" in text
