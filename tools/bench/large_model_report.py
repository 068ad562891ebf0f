"""BENCHMARKS.md section of the large-model benchmark (``tools/bench_large_model.py``): the machine,
the versions, the command, and the tables, rendered from the benchmark's result dict."""

from __future__ import annotations

import os
import platform
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BUDGET_MIB = 1024
BEGIN, END = "<!-- bench:large-model:begin -->", "<!-- bench:large-model:end -->"


def command_line(script: Path) -> str:
    """The command that ran ``script``, relative to the repo where possible."""
    python = os.path.relpath(sys.executable, ROOT) if sys.executable.startswith(str(ROOT)) else sys.executable
    return shlex.join([python, os.path.relpath(script.resolve(), ROOT), *sys.argv[1:]])


def machine_facts() -> dict:
    with open("/proc/cpuinfo") as info:
        cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), "")
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {"cpus": os.cpu_count(), "arch": platform.machine(), "cpu": cpu or platform.processor(),
            "memory_gib": round(memory / (1 << 30), 1)}


def versions() -> dict:
    from importlib.metadata import version

    names = ("onnxq", "onnx", "onnx-ir", "onnxscript", "onnxruntime", "numpy")
    return {"python": platform.python_version(), **{n: version(n) for n in names}}


# -------------------------------------------------------------------------------------- BENCHMARKS.md
HEADER = """# onnxq benchmarks

Every number in this file is written by a script in `tools/`, never typed by hand; each section names the
command that produced it. Rerun the command to refresh its section.
"""

SECTION = """## Large model (> 2 GB external data)

Written by `tools/bench_large_model.py` on {r[date]}; do not edit by hand. Command:

    {r[command]}

Machine: {mc[cpus]}-core {mc[arch]} ({mc[cpu]}), {mc[memory_gib]} GiB RAM, no GPU; 1-min load average
{r[load_average_1min_at_start]} at start (other work shares the machine). {versions}.

Model: {m[layers]} layers of MatMul with {m[hidden]}×{m[hidden]} float32 weights + Relu, **{data_gb:.2f} GB
of external data** in one file; {m[folded_weights]} layers are MatMul + BatchNormalization (fold-bn writes
{m[folded_weights]} new weights, {m[rewritten_mib]} MiB), the others MatMul + Add; Identity/Dropout no-ops,
a Constant subgraph, a same-shape Reshape; opset 13, IR 8, dynamic batch. onnxq passes: `{r[passes]}`.

Each optimizer runs alone in a child process and writes a {q_gb:.2f} GB (onnxq) / {o_gb:.2f} GB (ORT) model.
Peak RSS is the kernel's `ru_maxrss` of that process. Wall time includes interpreter start-up; every run
starts with the input in the page cache and no dirty pages (`sync`); the second time column adds the `sync`
that puts the output on disk. Best time of {runs} runs each, alternating.

| | wall time | incl. flush to disk | peak RSS |
|---|---:|---:|---:|
| `onnxq optimize` (CLI; includes onnx.checker + ORT load of the output) | {q[wall_s]:.1f} s \
| {q[wall_incl_sync_s]:.1f} s | **{q[peak_rss_mib]:.0f} MiB** |
| ORT offline `ORT_ENABLE_BASIC` (session creation {o[session_s]:.1f} s) | {o[wall_s]:.1f} s \
| {o[wall_incl_sync_s]:.1f} s | {o[peak_rss_mib]:.0f} MiB |
| ratio onnxq / ORT | {x[time_onnxq_over_ort]:.2f}× | {x[time_incl_sync_onnxq_over_ort]:.2f}× \
| {x[rss_onnxq_over_ort]:.3f}× |

Peak RSS under 1 GiB: {under}.

Where the memory goes: the same work through the Python API, the kernel's high-water mark reset at each
phase (peak {p[peak_rss_mib]} MiB, {p[wall_s]:.1f} s):

| phase | seconds | peak RSS MiB | RSS after: anon / file-backed MiB |
|---|---:|---:|---:|
{phase_rows}

Rewrites: {rewrites}.
{sweep}
Output check (separate child): input files byte-identical afterwards (sha256): {unchanged}; loading
the output costs +{c[load_rss_growth_mib]} MiB RSS (weights external, i.e. lazy: {external}); ops
{c[ops]}; ORT on a batch of {c[batch]}: max relative error vs the original {c[relative_error]:.2e}. Running
the original and the output in ORT for this check peaked at {c[peak_rss_mib]:.0f} MiB ({c[wall_s]:.1f} s):
the cost of *running* the model, not of optimizing it.
"""

SWEEP = """
`onnxq optimize` peak RSS against the weights a pass rewrites (same layers, BN placed differently):

| BN every | folded weights | rewritten MiB | wall time | peak RSS |
|---:|---:|---:|---:|---:|
{rows}
{verdict}"""


def _yes(flag: bool) -> str:
    return "yes" if flag else "**NO**"


def _render_sweep(r: dict) -> str:
    if not r["sweep"]:
        return ""
    main_row = {**r["model"], "wall_s": r["onnxq"]["wall_s"], "peak_rss_mib": r["onnxq"]["peak_rss_mib"]}
    rows = sorted(r["sweep"] + [main_row], key=lambda row: row["folded_weights"])
    table = "\n".join(f"| {x['bn_every']} | {x['folded_weights']} | {x['rewritten_mib']} "
                      f"| {x['wall_s']:.1f} s | {x['peak_rss_mib']:.0f} MiB |" for x in rows)
    over, verdict = [x for x in rows if x["peak_rss_mib"] >= BUDGET_MIB], ""
    if over and rows[-1]["folded_weights"] > rows[0]["folded_weights"]:
        first, last = rows[0], rows[-1]
        slope = (last["peak_rss_mib"] - first["peak_rss_mib"]) / (
            last["folded_weights"] - first["folded_weights"])
        weight_mib = 4 * r["model"]["hidden"] ** 2 / 2**20
        verdict = (f"\nSo the 1 GiB budget holds only while few weights are rewritten: peak RSS grows by "
                   f"about {slope:.0f} MiB per folded {weight_mib:.0f} MiB weight, and is "
                   f"{over[0]['peak_rss_mib']:.0f} MiB with {over[0]['folded_weights']} folded.\n")
    return SWEEP.format(rows=table, verdict=verdict)


def render_section(r: dict) -> str:
    m, q, o, p = r["model"], r["onnxq"], r["ort_basic"], r["onnxq_phases"]
    phase_rows = "\n".join(f"| {'↳ ' * x['depth']}{x['phase']} | {x['seconds']:.2f} | {x['peak_rss_mib']} "
                           f"| {x['rss_anon_mib_after']} / {x['rss_file_mib_after']} |" for x in p["phases"])
    text = SECTION.format(
        r=r, m=m, q=q, o=o, p=p, c=r["check"], x=r["ratio"], mc=r["machine"], phase_rows=phase_rows,
        versions=", ".join(f"{k} {v}" for k, v in r["versions"].items()),
        data_gb=m["external_data_bytes"] / 1e9,
        q_gb=q["output_bytes"] / 1e9, o_gb=o["output_bytes"] / 1e9, runs=len(q["runs"]),
        under=_yes(r["under_1_gib"]), unchanged=_yes(r["check"]["inputs_unchanged"]),
        external=_yes(r["check"]["initializers_external"]), sweep=_render_sweep(r),
        rewrites=", ".join(f"{x['pass']} {x['rewrites']}" for x in p["passes"]),
    )
    return f"{BEGIN}\n{text}{END}\n"


def update_benchmarks_md(path: Path, result: dict) -> None:
    """Replace the text between the markers, or append the section (creating the file if needed)."""
    text = path.read_text() if path.exists() else HEADER
    section = render_section(result).rstrip("\n")
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + section + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)
