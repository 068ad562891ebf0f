"""The benchmark loop: for each model and precision, each tool quantizes in its own process, then one
evaluation process measures every result against FP32. Returns one JSON-able dict.

Order of work per model: prepare (build if missing, cut calibration set) → per precision, per tool:
quantize in a fresh measured process into a fresh folder (so its file size counts only its own output) →
one ``evaluate`` child with all produced models (fidelity on the eval set; latency interleaved). A tool
failing, timing out or being unavailable becomes a status string in its record; nothing stops the run.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging
import math
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from tools.bench import CACHE, ROOT, environment, measure, quantizers, zoo

logger = logging.getLogger(__name__)

SCHEMA = 1
QUICK_MODELS = ["digits_cnn"]
QUICK_TOOLS = ["onnxq", "ort"]


@dataclasses.dataclass
class BenchOptions:
    """Everything that shapes a run; stored in the result so a number can be traced to its settings."""

    models: list[str]
    precisions: list[str] = dataclasses.field(default_factory=lambda: ["a8w8"])
    tools: list[str] = dataclasses.field(default_factory=lambda: list(quantizers.TOOLS))
    work_dir: Path = CACHE / "runs"
    zoo_dir: Path = CACHE / "zoo"
    calib_samples: int = 64
    eval_samples: int = 200
    latency_rounds: int = 20
    latency_budget_s: float = 3.0
    threads: int = 1  # see tools.bench.evaluate: timing side by side needs sessions without thread pools
    timeout_s: float = 900.0
    build_timeout_s: float = 900.0
    quick: bool = False

    @classmethod
    def quick_mode(cls, **overrides: Any) -> BenchOptions:
        """CI's settings: digits_cnn, onnxq and ORT only, small sets; only checks that everything runs."""
        settings = {"models": QUICK_MODELS, "tools": QUICK_TOOLS, "eval_samples": 100, "latency_budget_s": 0.5,
                    "quick": True, "timeout_s": 300.0}
        return cls(**{**settings, **overrides})


def external_files(path: Path) -> list[Path]:
    """External-data files an ONNX file references (initializers and tensor attributes, subgraphs too)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    locations: set[str] = set()

    def visit(graph: onnx.GraphProto) -> None:
        tensors = list(graph.initializer)
        for node in graph.node:
            for attribute in node.attribute:
                tensors.extend([attribute.t] if attribute.HasField("t") else list(attribute.tensors))
                for sub in ([attribute.g] if attribute.HasField("g") else list(attribute.graphs)):
                    visit(sub)
        for tensor in tensors:
            if tensor.data_location == onnx.TensorProto.EXTERNAL:
                locations.update(e.value for e in tensor.external_data if e.key == "location")

    visit(proto.graph)
    return [path.parent / name for name in sorted(locations)]


def model_file_bytes(path: Path) -> int:
    """Size of an ONNX file plus every external-data file it references (each counted once)."""
    return path.stat().st_size + sum(f.stat().st_size for f in external_files(path))


def model_facts(path: Path) -> dict[str, Any]:
    """IR version, default-domain opset and Q/DQ node count (subgraphs included; 0: nothing quantized).

    The IR version decides which runtimes load the file at all (ORT 1.31 refuses IR 14), so it is recorded.
    """
    import onnx

    def walk(graph: onnx.GraphProto) -> int:
        count = 0
        for node in graph.node:
            count += node.op_type in ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger")
            for attribute in node.attribute:
                count += sum(walk(g) for g in ([attribute.g] if attribute.HasField("g") else attribute.graphs))
        return count

    proto = onnx.load(str(path), load_external_data=False)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    return {"ir_version": proto.ir_version, "opset": opset, "qdq_nodes": walk(proto.graph)}


def _digest(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def private_copy(model: zoo.ZooModel, folder: Path) -> zoo.ZooModel:
    """The tool's own copy of the FP32 model (and its external data): a tool that writes into its input
    (ModelOpt 0.47 runs ``onnx.shape_inference.infer_shapes_path`` in place) must not change what the
    next tool and the evaluation read."""
    target = folder / "input" / model.fp32.name
    target.parent.mkdir(parents=True)
    for source in [model.fp32, *external_files(model.fp32)]:
        shutil.copyfile(source, target.parent / source.relative_to(model.fp32.parent))
    return dataclasses.replace(model, fp32=target)


def child_env() -> dict[str, str]:
    """Children run in their own folders; ``tools`` and ``models`` are found through PYTHONPATH."""
    paths = [str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _onnxq_summary(report: dict[str, Any]) -> dict[str, Any]:
    """The parts of onnxq's QuantReport a reader of the table needs (error budget, fall-backs)."""
    if not report:
        return {}
    keys = ("target", "precision", "method", "error", "max_error", "budget_met", "calibration_samples",
            "holdout_samples", "qdq_nodes", "speedup")
    summary = {key: report.get(key) for key in keys}
    summary.update(layers=len(report.get("layers", {})), kept_float=len(report.get("kept_float", {})),
                   rounds=len(report.get("rounds", [])))
    reasons: dict[str, int] = {}
    for reason in report.get("kept_float", {}).values():
        general = re.sub(r"\s*\(sensitivity [^)]*\)", "", reason)  # one entry per kind of reason
        reasons[general] = reasons.get(general, 0) + 1
    summary["kept_float_reasons"] = reasons
    return summary


def quantize_with(tool: quantizers.Tool, model: zoo.ZooModel, precision: str, options: BenchOptions) -> dict:
    """One tool on one model in a fresh measured process; the record says what happened."""
    reason = tool.skip_reason(precision)
    if reason:
        return {"status": reason, "loaded": None}
    folder = options.work_dir / model.name / precision / tool.name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    out, result_path = folder / f"{model.name}.{tool.name}.onnx", folder / "result.json"
    own = private_copy(model, folder)
    before = _digest([own.fp32, *external_files(own.fp32)])
    # cwd = the tool's folder: ORT's pre-processor leaves temporary files in the working directory.
    measured = measure.run_measured(tool.command(own, precision, out, result_path), cwd=folder,
                                    log_path=folder / "log.txt", timeout_s=options.timeout_s, env=child_env())
    details = _read_json(result_path)
    record: dict[str, Any] = {"wall_s": measured.wall_s, "peak_rss_mib": measured.peak_rss_mib,
                              "rss_source": measured.rss_source, "log": str(folder / "log.txt"), "loaded": None}
    if tool.name == "onnxq":
        record["onnxq_report"] = _onnxq_summary(details)
    else:
        record["details"] = details
    record["notes"] = list(details.get("notes", []))
    if _digest([own.fp32, *external_files(own.fp32)]) != before:
        record["notes"].append("modified its input model file in place")
    if tool.name == "onnxq" and model.calib_feeds:
        record["notes"].append("calibrated from one-feed npz files: the zoo npz layout is not onnxq's here")
    # onnxq exits 1 when its accuracy budget is missed and still writes the model: measured like any other
    # (the table says it is over its own budget)
    over_budget = tool.name == "onnxq" and measured.returncode == 1 and not measured.timed_out
    if (measured.ok or over_budget) and out.exists():
        record["status"] = "ok"
        record["path"] = str(out)
        record["bytes"] = model_file_bytes(out)
        record["compression"] = model_file_bytes(model.fp32) / record["bytes"]
        record.update(model_facts(out))
        if not record["qdq_nodes"]:
            record["notes"].append("no Q/DQ inserted: nothing was quantized")
    elif str(details.get("error", "")).startswith("unavailable"):
        record["status"] = details["error"]
    else:
        record["status"] = f"failed: {measured.failure_line()}"
        record["loaded"] = False
    logger.info("%s %s %s: %s in %.1f s", model.name, precision, tool.name, record["status"], measured.wall_s)
    return record


def _top1_output(outputs: dict[str, dict[str, Any]]) -> str | None:
    """The classifier output for the table's top-1 column: ``logits`` (the zoo's name for class and token
    scores), else the first [N, C] output that is not an embedding (argmax of an embedding means nothing)."""
    if "top1_agreement" in outputs.get("logits", {}):
        return "logits"
    return next((name for name, o in outputs.items() if "top1_agreement" in o and len(o.get("shape", [])) == 2
                 and "embed" not in name.lower()), None)


def _headline(outputs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Worst-case SQNR and cosine over float outputs; top-1 agreement of the classifier output, if any."""
    floats = [o for o in outputs.values() if "sqnr_db" in o]
    top1_name = _top1_output(outputs)
    top1 = outputs[top1_name]["top1_agreement"] if top1_name else None
    return {"worst_sqnr_db": min((o["sqnr_db"] for o in floats), default=None),
            "worst_relative_l2": max((o["relative_l2"] for o in floats), default=None),
            "min_cosine": min((o["cosine"] for o in floats), default=None), "top1_agreement": top1}


def evaluate_all(model: zoo.ZooModel, precision: str, records: dict[str, dict], options: BenchOptions) -> dict:
    """Run the evaluation child over every produced model; merge its findings into ``records``."""
    folder = options.work_dir / model.name / precision
    candidates = [f"{name}={record['path']}" for name, record in records.items() if record.get("path")]
    result_path = folder / "evaluation.json"
    command = [sys.executable, "-m", "tools.bench.evaluate", "--fp32", str(model.fp32), "--model", model.name,
               "--eval", str(model.eval),
               "--batch-axes", json.dumps(model.batch_axes), "--samples", str(options.eval_samples),
               "--rounds", str(options.latency_rounds), "--latency-budget", str(options.latency_budget_s),
               "--threads", str(options.threads), "--result", str(result_path)]
    for candidate in candidates:
        command += ["--candidate", candidate]
    result_path.unlink(missing_ok=True)
    measured = measure.run_measured(command, cwd=folder, env=child_env(), log_path=folder / "evaluation.log",
                                    timeout_s=options.timeout_s)
    found = _read_json(result_path)
    if not measured.ok or "error" in found:
        reason = found.get("error") or measured.failure_line()
        for record in records.values():
            if record.get("path"):
                record.setdefault("notes", []).append(f"evaluation failed: {reason}")
        return {"error": reason}
    for name, entry in found.get("candidates", {}).items():
        record = records[name]
        record.update(entry)
        if entry.get("error"):
            record["status"] = f"{'runs' if entry.get('loaded') else 'loads'} not in ORT: {entry['error']}"
        record.update(_headline(entry.get("outputs", {})))
    return found


def benchmark_model(name: str, options: BenchOptions, tools: list[quantizers.Tool]) -> dict[str, Any]:
    """Everything measured for one zoo model (or why it could not be measured)."""
    try:
        model = zoo.prepare(name, options.zoo_dir, options.work_dir, calib_samples=options.calib_samples,
                            build_timeout_s=options.build_timeout_s)
    except zoo.ModelUnavailable as exc:
        logger.warning("%s: %s", name, exc)
        return {"status": f"unavailable: {exc}"}
    entry: dict[str, Any] = {"status": "ok", "summary": model.record.get("summary"), "calib_samples":
                             model.calib_samples, "build_seconds": model.build_seconds,
                             "fp32": {"bytes": model_file_bytes(model.fp32), **model_facts(model.fp32)},
                             "results": {}}
    for precision in options.precisions:
        records = {tool.name: quantize_with(tool, model, precision, options) for tool in tools}
        evaluation = evaluate_all(model, precision, records, options)
        entry["fp32"].update(evaluation.get("fp32", {}))
        entry["task_metric"] = evaluation.get("task_metric")
        entry["eval_samples"] = evaluation.get("samples")
        entry["latency_rounds"] = evaluation.get("latency_rounds")
        if "error" in evaluation:
            entry["evaluation_error"] = evaluation["error"]
        entry["results"][precision] = records
    return entry


def run_benchmark(options: BenchOptions, command: str = "tools.bench.runner.run_benchmark(...)") -> dict[str, Any]:
    """The core function: every model × precision × tool; see the module docstring.

    ``command`` is what reproduces the run (the CLI passes its own command line).
    """
    tools = quantizers.resolve(options.tools)
    options.work_dir, options.zoo_dir = options.work_dir.resolve(), options.zoo_dir.resolve()
    options.work_dir.mkdir(parents=True, exist_ok=True)
    start, load_at_start = time.perf_counter(), round(os.getloadavg()[0], 2)
    result: dict[str, Any] = {
        "schema": SCHEMA, "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": command,
        "machine": environment.machine(), "versions": environment.versions(),
        "options": {key: str(value) if isinstance(value, Path) else value
                    for key, value in dataclasses.asdict(options).items()},
        "models": {},
    }
    for name in options.models:
        logger.info("== %s", name)
        result["models"][name] = benchmark_model(name, options, tools)
    modelopt = [r.get("details", {}).get("modelopt") for m in result["models"].values()
                for p in m.get("results", {}).values() for r in p.values()]
    if any(modelopt):
        result["versions"]["nvidia-modelopt"] = next(v for v in modelopt if v)
    result["wall_s"] = time.perf_counter() - start
    result["load_average"] = {"start": load_at_start, "end": round(os.getloadavg()[0], 2)}
    return result


def quick_problems(result: dict[str, Any]) -> list[str]:
    """What quick mode asserts: every tool produced a model that loads, runs, and has a finite latency ratio."""
    problems = []
    for name, model in result["models"].items():
        if model.get("status") != "ok":
            problems.append(f"{name}: {model.get('status')}")
        for precision, records in model.get("results", {}).items():
            for tool, record in records.items():
                ratio = record.get("latency_ratio")
                if record.get("status") != "ok" or not record.get("loaded") or not record.get("ran"):
                    problems.append(f"{name} {precision} {tool}: {record.get('status')}")
                elif ratio is None or not math.isfinite(ratio):
                    problems.append(f"{name} {precision} {tool}: no finite latency ratio")
    return problems
