"""Tables from a benchmark result: printed to the console and written into BENCHMARKS.md between markers.

Every number in BENCHMARKS.md comes from here, never from a hand: one table per metric group, rows are
models (× precision when several), columns are the tools. A cell is "—" where the tool produced nothing
measurable; why is in the status table. A short list of findings (onnxq slower than FP32, behind ORT's
quantizer, failing) is derived from the same numbers, so a regression shows up without reading tables.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

BEGIN, END = "<!-- bench:quant:begin -->", "<!-- bench:quant:end -->"
HEADER = """# onnxq benchmarks

Numbers in this file are written by the scripts in `tools/`, never typed by hand; each section says the
command that produced it. Rerun the command to refresh a section.
"""
LABELS = {"onnxq": "onnxq", "ort": "ORT quantizer", "modelopt": "ModelOpt"}

Cell = Callable[[dict[str, Any]], str | None]


def _number(value: Any, pattern: str) -> str | None:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None
    return pattern.format(value)


def _rows(result: dict[str, Any]) -> list[tuple[str, dict[str, Any], dict[str, dict[str, Any]]]]:
    """(row label, model entry, {tool: record}) for every model and precision."""
    precisions = result["options"]["precisions"]
    rows = []
    for name, model in result["models"].items():
        for precision in precisions:
            label = name if len(precisions) == 1 else f"{name} ({precision})"
            rows.append((label, model, model.get("results", {}).get(precision, {})))
    return rows


def _table(result: dict[str, Any], title: str, cell: Cell, fp32: Callable[[dict], str | None] | None = None,
           skip_empty: bool = False, describe: Callable[[dict], str | None] | None = None) -> list[str]:
    """One metric table; ``fp32`` adds a reference column, ``describe`` a column saying what is measured."""
    tools = result["options"]["tools"]
    head = ["model", *(["metric"] if describe else []), *(["FP32"] if fp32 else []),
            *(LABELS.get(t, t) for t in tools)]
    lines = [f"### {title}", "", "| " + " | ".join(head) + " |",
             "|---" + ("|---" if describe else "") + "|---:" * (len(head) - 1 - bool(describe)) + "|"]
    kept = 0
    for label, model, records in _rows(result):
        cells = [cell(records[t]) if t in records and records[t].get("status") == "ok" else None for t in tools]
        reference = fp32(model) if fp32 else None
        if skip_empty and reference is None and all(c is None for c in cells):
            continue
        kept += 1
        what = [describe(model) or "—"] if describe else []
        row = [label, *what, *([reference or "—"] if fp32 else []), *(c or "—" for c in cells)]
        lines.append("| " + " | ".join(row) + " |")
    return lines + [""] if kept else []


#: note prefix -> what the status cell says about it
NOTE_SHORT = {"pre-process failed": "pre-process failed, quantized without it",
              "no Q/DQ inserted": "**no Q/DQ inserted: nothing quantized**",
              "modified its input": "rewrote its input file",
              "calibrated from one-feed": "calibrated from one-feed files"}


def _status(record: dict[str, Any]) -> str:
    status = str(record.get("status", "not run"))
    if status == "ok":
        notes = [short for prefix, short in NOTE_SHORT.items()
                 if any(n.startswith(prefix) for n in record.get("notes", []))]
        return "ok" + (f" ({'; '.join(notes)})" if notes else "")
    return status.replace("|", "/")[:140]


def status_table(result: dict[str, Any]) -> list[str]:
    tools = result["options"]["tools"]
    head = ["model", *(LABELS.get(t, t) for t in tools)]
    lines = ["### Status (quantized, loads and runs on ORT CPU)", "", "| " + " | ".join(head) + " |",
             "|---" + "|---" * len(tools) + "|"]
    for label, model, records in _rows(result):
        if model.get("status") != "ok":
            lines.append("| " + " | ".join([label, *[str(model.get("status"))[:140]] * len(tools)]) + " |")
            continue
        lines.append("| " + " | ".join([label, *(_status(records.get(t, {})) for t in tools)]) + " |")
    return lines + [""]


def onnxq_table(result: dict[str, Any]) -> list[str]:
    """What onnxq's verify-and-fall-back did: its own held-back error against its budget, what it kept float."""
    if "onnxq" not in result["options"]["tools"]:
        return []
    head = ("| model | worst output rel. L2 (budget) | calibrated / held back | layers quantized | kept float "
            "| fall-back rounds |")
    lines = ["### onnxq's own report (verification on its held-back calibration samples)", "", head,
             "|---|---:|---:|---:|---:|---:|"]
    for label, _, records in _rows(result):
        report = records.get("onnxq", {}).get("onnxq_report")
        if not report:
            continue
        lines.append(f"| {label} | {report['error']:.3f} ({report['max_error']:g}) | "
                     f"{report['calibration_samples']} / {report['holdout_samples']} | {report['layers']} | "
                     f"{report['kept_float']} | {report['rounds']} |")
    return lines + [""]


def _kept_float(report: dict[str, Any]) -> str:
    """'6 of 6 layers float: Conv 1-D has no fast int8 kernel (2-D only) ×6' from onnxq's report summary."""
    total = report["kept_float"] + report["layers"]
    reasons = ", ".join(f"{reason} ×{count}" for reason, count in report.get("kept_float_reasons", {}).items())
    return f"{report['kept_float']} of {total} layers float" + (f": {reasons}" if reasons else "")


def findings(result: dict[str, Any]) -> list[str]:
    """onnxq's weak spots, derived from the numbers: failures, slower than FP32, behind ORT's quantizer."""
    found = []
    for label, model, records in _rows(result):
        ours, ort = records.get("onnxq"), records.get("ort")
        if model.get("status") != "ok" or not ours:
            continue
        if ours.get("status") != "ok":
            found.append(f"{label}: onnxq {ours.get('status')}")
            continue
        report = ours.get("onnxq_report") or {}
        if ours.get("qdq_nodes") == 0:
            found.append(f"{label}: onnxq quantized nothing (no Q/DQ in its output"
                         + (f"; kept {_kept_float(report)})" if report.get("kept_float") else ")"))
        if ours.get("compression") is not None and ours["compression"] < 1.0:
            found.append(f"{label}: onnxq's output file is larger than the FP32 input "
                         f"({ours['compression']:.2f}× compression)")
        ratio = ours.get("latency_ratio")
        if ratio is not None and ratio < 1.0:
            noise = " — within 5 %, the noise level of this measurement" if ratio >= 0.95 else ""
            found.append(f"{label}: onnxq's model is slower than FP32 ({ratio:.2f}× FP32 speed{noise})")
        if not ort or ort.get("status") != "ok":
            continue
        for key, what, margin in (("task", "task metric", 0.005), ("top1_agreement", "top-1 agreement", 0.005),
                                  ("worst_sqnr_db", "worst-output SQNR", 1.0)):
            a, b = ours.get(key), ort.get(key)
            if a is not None and b is not None and a < b - margin:
                unit = " dB" if key == "worst_sqnr_db" else ""
                found.append(f"{label}: onnxq's {what} {a:.4g}{unit} < ORT quantizer's {b:.4g}{unit}")
        if ratio is not None and ort.get("latency_ratio") and ratio < 0.9 * ort["latency_ratio"]:
            why = ""
            report = ours.get("onnxq_report") or {}
            if report.get("kept_float"):
                why = f"; onnxq kept {_kept_float(report)}"
            if ours.get("worst_sqnr_db") is not None and ort.get("worst_sqnr_db") is not None:
                why += (f"; worst-output SQNR onnxq {ours['worst_sqnr_db']:.1f} dB, ORT quantizer "
                        f"{ort['worst_sqnr_db']:.1f} dB")
            found.append(f"{label}: onnxq's model is slower than ORT quantizer's ({ratio:.2f}× vs "
                         f"{ort['latency_ratio']:.2f}× FP32 speed{why})")
    raised = [(label, model["fp32"]["ir_version"], records["onnxq"]["ir_version"])
              for label, model, records in _rows(result)
              if records.get("onnxq", {}).get("ir_version", 0) > model.get("fp32", {}).get("ir_version", 99)]
    if raised:
        pairs = ", ".join(f"{label} {before}→{after}" for label, before, after in raised)
        newest = max(after for _, _, after in raised)
        found.append(f"onnxq raised the IR version of its output above the input's ({pairs}): a runtime must "
                     f"read IR {newest} to load them (ORT 1.31 reads at most IR 13)")
    return found


def _format(record: dict[str, Any]) -> str | None:
    if record.get("ir_version") is None:
        return None
    return f"IR {record['ir_version']} / {record.get('opset')}"


def tables(result: dict[str, Any]) -> list[str]:
    """Every metric table, in reading order."""
    def pct(key: str) -> Cell:
        return lambda record: _number(record.get(key), "{:.1%}")

    lines = status_table(result)
    lines += _table(result, "Task metric on the labelled eval set", pct("task"),
                    fp32=lambda m: _number(m.get("fp32", {}).get("task"), "{:.1%}"), skip_empty=True,
                    describe=lambda m: m.get("task_metric"))
    lines += _table(result, "Top-1 agreement with FP32 (argmax over the classes of `logits` or the first [N, C] "
                    "output)",
                    pct("top1_agreement"), skip_empty=True)
    lines += _table(result, "Worst-output SQNR vs FP32, dB (higher is better)",
                    lambda r: _number(r.get("worst_sqnr_db"), "{:.1f}"))
    lines += _table(result, "Worst-output mean cosine similarity vs FP32",
                    lambda r: _number(r.get("min_cosine"), "{:.4f}"))
    lines += _table(result, "Latency ratio FP32 / quantized (> 1: faster; FP32 column: median ms)",
                    lambda r: _number(r.get("latency_ratio"), "{:.2f}×"),
                    fp32=lambda m: _number(m.get("fp32", {}).get("latency_ms"), "{:.3g} ms"))
    lines += latency_geomeans(result)
    lines += _table(result, "Compression (FP32 bytes / quantized bytes, external data included)",
                    lambda r: _number(r.get("compression"), "{:.2f}×"),
                    fp32=lambda m: _number(m.get("fp32", {}).get("bytes", 0) / 1e6, "{:.2f} MB"))
    lines += _table(result, "Output file format: IR version / default-domain opset (FP32 column: the input)",
                    _format, fp32=lambda m: _format(m.get("fp32", {})))
    lines += _table(result, "Quantization wall time, s (whole process, interpreter start-up included)",
                    lambda r: _number(r.get("wall_s"), "{:.1f}"))
    lines += _table(result, "Peak RSS of the quantizing process, MiB",
                    lambda r: _number(r.get("peak_rss_mib"), "{:.0f}"))
    return lines + onnxq_table(result)


def latency_geomeans(result: dict[str, Any]) -> list[str]:
    """Per precision and tool: the geometric mean of the latency ratio over the models it quantized, the
    slowest model, and how many ran slower than FP32 (the issue's speed target is stated as a geomean)."""
    lines = []
    for precision in result["options"]["precisions"]:
        for tool in result["options"]["tools"]:
            records = {name: model.get("results", {}).get(precision, {}).get(tool, {})
                       for name, model in result["models"].items()}
            ratios = {name: r["latency_ratio"] for name, r in records.items()
                      if r.get("status") == "ok" and r.get("latency_ratio")}
            if not ratios:
                continue
            geomean = math.exp(sum(math.log(v) for v in ratios.values()) / len(ratios))
            slowest = min(ratios, key=ratios.get)
            slower = sum(v < 1.0 for v in ratios.values())
            label = LABELS.get(tool, tool)
            lines.append(f"- {precision}, {label}: geomean {geomean:.2f}× over {len(ratios)} models; "
                         f"slowest {slowest} {ratios[slowest]:.2f}×; {slower} below 1.00×")
    return (["Latency ratio, geometric mean over the models each tool quantized:", "", *lines, ""]
            if lines else [])


def _threads(options: dict[str, Any]) -> str:
    """The intra-op threads behind the latency figures (``tools.bench.evaluate`` says why one by default)."""
    threads = options.get("threads", 0)
    if threads == 1:
        return "one intra-op thread (sessions with thread pools disturb each other when timed side by side)"
    return f"{threads or 'all-core'} intra-op threads, spinning off"


def _preamble(result: dict[str, Any]) -> list[str]:
    m, o, load = result["machine"], result["options"], result.get("load_average", {})
    isa = ", ".join(m.get("int8_isa", [])) or "no AVX-512/VNNI"
    versions = ", ".join(f"{k} {v}" for k, v in result["versions"].items())
    written = (f"Written by `tools/bench` on {result['date']} in {result['wall_s'] / 60:.1f} min; "
               "do not edit by hand. Command:")
    machine = (f"Machine: {m['cores']}-core {m['arch']} ({m['cpu']}; {isa}), {m['memory_gib']} GiB RAM, "
               f"{m['gpu']}. Versions: {versions}.")
    load_line = (f"Load average (1 min) at start / end: {load.get('start')} / {load.get('end')} — the machine "
                 "is shared; wall times move with it, interleaved latency ratios much less.")
    method = (
        f"Method: every tool calibrates on the same {o['calib_samples']} (at most) calibration samples of the "
        "zoo model, each in its own process (wall time and peak RSS are that process's, from "
        "`/usr/bin/time -v`). onnxq: `onnxq quantize --target ort` with default settings (its wall time "
        "includes its own verification and speed check; it holds back a quarter of the samples to verify). "
        "ORT: `quant_pre_process`, then `quantize_static` QDQ, per-channel, U8 activations / S8 weights, "
        "MinMax. ModelOpt: `modelopt.onnx.quantization.quantize` int8, `calibration_method=max`, CPU "
        "calibration, `high_precision_dtype=fp32` (its fp16 default targets TensorRT); it keeps FP32 weights "
        "behind Q→DQ for TensorRT to fold, hence compression ≈ 1. Fidelity: on the model's eval set (at most "
        f"{o['eval_samples']} samples, never calibration data), against the FP32 file, on ORT CPU. Latency: "
        f"ORT CPU, all graph optimizations, {_threads(o)}, one sample, FP32 and every quantized model "
        f"timed interleaved in one process, median of ≥ {o['latency_rounds']} rounds after warm-up."
    )
    return [written, "", f"    {result['command']}", "", machine, "", load_line, "", method, ""]


def render_text(result: dict[str, Any]) -> str:
    found = findings(result)
    lines = [*_preamble(result), *tables(result), "### Findings (derived from the tables)", ""]
    if "onnxq" not in result["options"]["tools"]:
        found = found or ["onnxq was not part of this run."]
    none = ("none: onnxq loads, runs, is faster than FP32 and at least as accurate as ORT's quantizer on "
            "every model here.")
    lines += [f"- {line}" for line in found or [none]]
    return "\n".join(lines) + "\n"


def render_section(result: dict[str, Any]) -> str:
    title = "## Quantizers compared: onnxq, ONNX Runtime's quantizer, NVIDIA ModelOpt (ORT CPU)"
    return f"{BEGIN}\n{title}\n\n{render_text(result)}{END}\n"


def update_benchmarks_md(path: Path, result: dict[str, Any]) -> None:
    """Replace the section between the markers; keep everything else (other scripts own other sections)."""
    text = path.read_text() if path.exists() else HEADER
    section = render_section(result)
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + section.rstrip("\n") + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)
