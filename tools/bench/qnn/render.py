"""The QNN benchmark's tables and reading, for the console and for BENCHMARKS.md (between its own markers).

One table per model, one row per tool. The reading paragraph and the findings are derived from the same
numbers, never written by hand, so a rerun refreshes them with the tables.
"""

from __future__ import annotations

import math
import re
import shlex
from pathlib import Path
from typing import Any

from tools.bench import ROOT
from tools.bench import render as cpu_render

BEGIN, END = "<!-- qnn-bench:begin -->", "<!-- qnn-bench:end -->"
TITLE = "## QNN (Snapdragon HTP): onnxq against ONNX Runtime's QNN quantization recipe"
LABELS = {"onnxq": "onnxq", "ort": "ORT QNN recipe"}


def _number(value: Any, pattern: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return pattern.format(value)


def _short_path(text: str) -> str:
    path = Path(text)
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else text


def command_line(argv: list[str]) -> str:
    """The child's argv with repository paths made relative (the run's cwd differs; the meaning does not)."""
    return shlex.join(_short_path(part) if part.startswith("/") else part for part in argv)


def _ok(record: dict[str, Any]) -> bool:
    return record.get("status") == "ok" and "simulator" in record


def _offload(record: dict[str, Any]) -> str:
    simulator = record.get("simulator", {})
    if "full_offload" not in simulator:
        return "—"
    return "yes" if simulator["full_offload"] else "**no**"


def _nodes(record: dict[str, Any]) -> str:
    simulator = record.get("simulator", {})
    if "partitioned_nodes" not in simulator:
        return "—"
    return f"{simulator['nodes_on_htp']} / {simulator['partitioned_nodes']}"


def _cpu_ops(record: dict[str, Any]) -> str:
    simulator = record.get("simulator", {})
    ops = simulator.get("cpu_ops")
    if ops is None:
        refused = simulator.get("refused_ops")
        return ", ".join(refused) if refused else "—"
    return ", ".join(f"{op} ×{count}" for op, count in ops.items()) or "none"


def _precision(tool: str, record: dict[str, Any]) -> str:
    if tool == "ort":
        return "a8w8 (u8 act., u8 per-tensor weights)"
    report = record.get("onnxq_report") or {}
    wider = record.get("higher_precision") or {}
    text = str(report.get("precision") or "—")
    if wider:
        text += " + " + ", ".join(f"{count} layers {precision}" for precision, count in sorted(wider.items()))
    return text


_ORT_PREFIX = re.compile(r"^\w*:? ?\[ONNXRuntimeError\] : \d+ : \w+ : ")


def _status(record: dict[str, Any]) -> str:
    status = str(record.get("status", "not run"))
    problems = [record[key] for key in ("evaluation_error",) if record.get(key)]
    simulator = record.get("simulator", {})
    problems += [simulator[key] for key in ("run_error", "session_error") if simulator.get(key)]
    problems = [_ORT_PREFIX.sub("", problem) for problem in problems]
    if simulator.get("session_log"):
        problems[-1] += f" ({simulator['session_log'][0]})"
    short = [s for prefix, s in cpu_render.NOTE_SHORT.items()
             if any(n.startswith(prefix) for n in record.get("notes", []))]
    if any(n.startswith("dynamic dims fixed") for n in record.get("notes", [])):
        short.append("shapes fixed with make_dynamic_shape_fixed")
    report = record.get("onnxq_report") or {}
    if report.get("budget_met") is False:
        short.append(f"over its own error budget ({report.get('error', float('nan')):.3g} > "
                     f"{report.get('max_error')})")
    text = status if not short else f"{status} ({'; '.join(short)})"
    if problems:
        text += "; simulator: " + "; ".join(problems)
    return text.replace("|", "/")[:400]


COLUMNS = ["tool", "status", "precision", "full offload", "nodes on HTP / partitioned", "left to CPU",
           "task metric", "top-1 agreement", "worst SQNR dB", "worst rel. L2", "min cosine", "quantize s",
           "peak RSS MiB", "simulator s / sample"]
#: below this worst-output SQNR a model is far from FP32 whatever the other tool did
POOR_SQNR_DB = 10.0


def model_table(name: str, model: dict[str, Any], tools: list[str]) -> list[str]:
    lines = [f"### {name}", ""]
    if model.get("status") != "ok":
        return lines + [f"Not measured: {model.get('status')}", ""]
    fp32_task = _number(model.get("fp32_task"), "{:.1%}")
    metric = model.get("task_metric")
    if metric:
        lines += [f"Task metric: {metric}; FP32 on the same {model.get('samples')} eval samples: {fp32_task}.",
                  ""]
    lines += ["| " + " | ".join(COLUMNS) + " |", "|---|---|---|---|---:|---|" + "---:|" * 8]
    for tool in tools:
        record = model.get("results", {}).get(tool)
        if record is None:
            continue
        ok = _ok(record)
        cells = [LABELS.get(tool, tool), _status(record), _precision(tool, record) if record.get("path") else "—",
                 _offload(record), _nodes(record), _cpu_ops(record) if ok else "—",
                 _number(record.get("task") if ok else None, "{:.1%}"),
                 _number(record.get("top1_agreement") if ok else None, "{:.1%}"),
                 _number(record.get("worst_sqnr_db") if ok else None, "{:.1f}"),
                 _number(record.get("worst_relative_l2") if ok else None, "{:.4f}"),
                 _number(record.get("min_cosine") if ok else None, "{:.4f}"),
                 _number(record.get("wall_s"), "{:.1f}"), _number(record.get("peak_rss_mib"), "{:.0f}"),
                 _number(record.get("simulator", {}).get("simulator_s_per_sample"), "{:.3g}")]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    notes = sorted({note for record in model.get("results", {}).values() for note in record.get("notes", [])
                    if note.startswith(("eval input", "this row is from a later run"))})
    lines += [f"Note: {note}." for note in notes] + ([""] if notes else [])
    lines.append("Commands:")
    lines.append("")
    for tool in tools:
        record = model.get("results", {}).get(tool, {})
        if record.get("command"):
            lines.append(f"    {command_line(record['command'])}")
    return lines + [""]


def _tool_ok(model: dict, tool: str) -> dict[str, Any] | None:
    record = model.get("results", {}).get(tool)
    return record if record and _ok(record) else None


def _names(items: list[str]) -> str:
    return ", ".join(items) if items else "none"


def reading(result: dict[str, Any]) -> str:
    """One factual paragraph over all models, derived from the numbers."""
    models = {n: m for n, m in result["models"].items() if m.get("status") == "ok"}
    if not models:
        return "No model was measured."
    sentences = []
    for tool in result["options"]["tools"]:
        label = LABELS.get(tool, tool)
        records = {n: m["results"].get(tool, {}) for n, m in models.items()}
        failed = [n for n, r in records.items() if r.get("status") != "ok"]
        full = [n for n, r in records.items() if n not in failed and r.get("simulator", {}).get("full_offload")]
        partial = [n for n, r in records.items() if n not in failed and n not in full
                   and "partitioned_nodes" in r.get("simulator", {})]
        unloaded = [n for n in records if n not in failed + full + partial]
        text = f"{label} produced a fully offloaded model (strict session created) for {len(full)} of {len(models)}"
        text += (f" models; partly offloaded: {_names(partial)}; not loadable on the simulator at all: "
                 f"{_names(unloaded)}; failed to quantize: {_names(failed)}")
        sentences.append(text)
    if {"onnxq", "ort"} <= set(result["options"]["tools"]):
        better, worse = [], []
        for name, model in models.items():
            ours, theirs = _tool_ok(model, "onnxq"), _tool_ok(model, "ort")
            if not ours or not theirs or ours.get("worst_sqnr_db") is None or theirs.get("worst_sqnr_db") is None:
                continue
            delta = ours["worst_sqnr_db"] - theirs["worst_sqnr_db"]
            if delta >= 1.0:
                better.append(f"{name} ({delta:+.1f} dB)")
            elif delta <= -1.0:
                worse.append(f"{name} ({delta:+.1f} dB)")
        sentences.append(f"On the simulator, onnxq's worst-output SQNR against FP32 is higher than the recipe's "
                         f"by at least 1 dB on {_names(better)}, and lower by at least 1 dB on {_names(worse)}")
        slower = []
        for name, model in models.items():
            ours, theirs = model["results"].get("onnxq", {}), model["results"].get("ort", {})
            if ours.get("wall_s") and theirs.get("wall_s") and ours["wall_s"] > 2 * theirs["wall_s"]:
                slower.append(f"{name} {ours['wall_s']:.0f} s vs {theirs['wall_s']:.0f} s")
        if slower:
            sentences.append("onnxq takes more than twice the recipe's quantization time on "
                             f"{_names(slower)}: its time includes its own verification rounds on the simulator")
    poor = []
    for name, model in models.items():
        cells = [f"{LABELS.get(t, t)} {r['worst_sqnr_db']:.1f} dB" for t, r in model["results"].items()
                 if _ok(r) and r.get("worst_sqnr_db") is not None and r["worst_sqnr_db"] < POOR_SQNR_DB]
        if cells:
            poor.append(f"{name} ({', '.join(cells)})")
    if poor:
        sentences.append(f"Worst-output SQNR below {POOR_SQNR_DB:.0f} dB (far from FP32): {_names(poor)}")
    over = [n for n, m in models.items()
            if (m["results"].get("onnxq", {}).get("onnxq_report") or {}).get("budget_met") is False]
    if over:
        sentences.append(f"onnxq reported its own error budget not met on {_names(over)}")
    return ". ".join(sentences) + "."


def findings(result: dict[str, Any]) -> list[str]:
    """Where onnxq falls short: no full offload, failure, or fidelity below the recipe's."""
    found = []
    for name, model in result["models"].items():
        if model.get("status") != "ok":
            continue
        ours, theirs = model["results"].get("onnxq", {}), model["results"].get("ort", {})
        if not ours:
            continue
        if ours.get("status") != "ok":
            found.append(f"{name}: onnxq {ours.get('status')}")
            continue
        simulator = ours.get("simulator", {})
        report = ours.get("onnxq_report") or {}
        if report.get("budget_met") is False:
            found.append(f"{name}: onnxq's own verification missed its error budget ({report.get('error'):.3g} > "
                         f"{report.get('max_error')}) and it wrote the model anyway ({_precision('onnxq', ours)})")
        if _ok(ours) and ours.get("worst_sqnr_db") is not None and ours["worst_sqnr_db"] < POOR_SQNR_DB:
            found.append(f"{name}: onnxq's model is far from FP32 on the simulator (worst-output SQNR "
                         f"{ours['worst_sqnr_db']:.1f} dB, relative L2 {ours.get('worst_relative_l2', float('nan')):.3g})")
        if simulator and not simulator.get("full_offload"):
            found.append(f"{name}: onnxq's model is not fully offloaded (left to CPU: {_cpu_ops(ours)}; strict "
                         f"session: {simulator.get('strict_error')})")
        if not _ok(theirs):
            continue
        for key, what, margin, unit in (("task", "task metric", 0.005, ""),
                                        ("top1_agreement", "top-1 agreement", 0.005, ""),
                                        ("worst_sqnr_db", "worst-output SQNR", 1.0, " dB")):
            a, b = ours.get(key), theirs.get(key)
            if a is not None and b is not None and a < b - margin:
                found.append(f"{name}: onnxq's {what} {a:.4g}{unit} < ORT QNN recipe's {b:.4g}{unit}")
        if theirs.get("simulator", {}).get("full_offload") and not simulator.get("full_offload"):
            found.append(f"{name}: the ORT QNN recipe's model is fully offloaded, onnxq's is not")
    return found


def _preamble(result: dict[str, Any]) -> list[str]:
    m, o, load = result["machine"], result["options"], result.get("load_average", {})
    isa = ", ".join(m.get("int8_isa", [])) or "no AVX-512/VNNI"
    versions = ", ".join(f"{k} {v}" for k, v in result["versions"].items())
    written = (f"Written by `tools/bench/qnn` on {result['date']} in {result['wall_s'] / 60:.1f} min; do not "
               "edit by hand. Command:")
    machine = (f"Machine: {m['cores']}-core {m['arch']} ({m['cpu']}; {isa}), {m['memory_gib']} GiB RAM; "
               f"{m['gpu']}. Versions: {versions}. Load average (1 min) at start / end: {load.get('start')} / "
               f"{load.get('end')} (the machine is shared; wall times move with it).")
    method = (
        f"Method: target {result['soc']} (QNN soc_model {result['soc_model']}). Each tool quantizes in its own "
        f"process (wall time and peak RSS from `/usr/bin/time -v`) from the same {o['calib_samples']} (at most) "
        "calibration samples the CPU benchmark uses. onnxq: `onnxq quantize --target qnn:SOC` with defaults "
        "(a8w8; it holds back a quarter of the samples and verifies on the simulator, moving layers to 16 bits "
        "where its error budget needs it, never to float). ORT: the recipe of "
        "`onnxruntime.quantization.execution_providers.qnn` — `qnn_preprocess_model` (dynamic input dims "
        "fixed to the first calibration sample's shape, as onnxq fixes them), `get_qnn_qdq_config` with its "
        "defaults (MinMax, uint8 activations, uint8 per-tensor weights), `quantize`. Then, per quantized "
        "model, one process on the HTP simulator: full offload = a session with CPU fallback disabled is "
        "created (`onnxq.backends.qnn.runtime.session(..., strict=True)`, graph I/O quantization kept on the "
        "HTP); nodes on HTP / partitioned = ORT's record of node assignment (`session.record_ep_graph_"
        "assignment_info`), counted after ORT's graph optimizations; \"left to CPU\" = op types ORT gave the "
        "CPU provider; \"simulator s / sample\" is the median time of one run in simulation on this CPU, not "
        f"device latency. Fidelity: {o['eval_samples']} eval samples spread over the eval file (never "
        f"calibration data; the simulator is slow), up to {o.get('max_eval_samples', o['eval_samples'])} where "
        "the simulator runs them all within a minute (each model's count is in its table's heading), run on "
        "the simulator (with CPU fallback where full offload failed), against the "
        "FP32 file on ORT CPU fed the same arrays; the CPU benchmark's metrics (task metric where the zoo has "
        "labels, top-1 agreement of `logits` or the first [N, C] output, worst-output SQNR and relative L2, "
        "worst-output mean cosine)."
    )
    return [written, "", f"    {result['command']}", "", machine, "", method, ""]


def render_text(result: dict[str, Any]) -> str:
    lines = _preamble(result)
    if result.get("unavailable"):
        return "\n".join(lines + [f"Not run: the QNN EP is unavailable here ({result['unavailable']})."]) + "\n"
    lines += ["Reading: " + reading(result), ""]
    tools = result["options"]["tools"]
    for name, model in result["models"].items():
        lines += model_table(name, model, tools)
    found = findings(result)
    lines += ["### Findings (derived from the tables)", ""]
    lines += [f"- {line}" for line in found or ["none: onnxq's models are fully offloaded and at least as close "
                                                "to FP32 as the recipe's on every model here."]]
    return "\n".join(lines) + "\n"


def render_section(result: dict[str, Any]) -> str:
    return f"{BEGIN}\n{TITLE}\n\n{render_text(result)}{END}\n"


def update_benchmarks_md(path: Path, result: dict[str, Any]) -> None:
    """Replace this section; create it after the CPU quantizer section (or at the end) when missing."""
    text = path.read_text() if path.exists() else cpu_render.HEADER
    section = render_section(result).rstrip("\n")
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + section + rest.split(END, 1)[1]
    elif cpu_render.END in text:
        head, rest = text.split(cpu_render.END, 1)
        text = head + cpu_render.END + "\n\n" + section + rest
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)
