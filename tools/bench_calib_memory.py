"""Peak RSS of quantization against the number of calibration samples: onnxq vs ORT's ``quantize_static``.

onnxq streams statistics (running min/max, mergeable histograms), so its memory should not depend on how
many samples it calibrates on; ORT's calibrators collect intermediate outputs of every sample before
reducing them. Same model, same samples, each run in its own process (peak RSS by ``/usr/bin/time -v``),
N = 16 and 256 samples (the zoo's calibration samples, repeated with a little noise to reach 256):

* ``onnxq --no-fallback``: calibration, one verification on the held-back samples, the speed check;
* ``onnxq`` default: the same with the fall-back search (sensitivity probes and verification rounds);
* ORT ``quantize_static`` (MinMax, QDQ, per channel), fed the same samples;
* the import floor: a process that only imports what each tool imports (no model, no data).

A run that ends with onnxq's "accuracy budget not met" (exit 1, model written) still counts: the memory is
the point here, and the budget verdict is shown next to the number.

    python tools/bench_calib_memory.py [--models efficientnet_lite0 minilm] [--samples 16 256] [--benchmarks-md BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: make tools.bench importable

from tools.bench.measure import run_measured  # noqa: E402

BEGIN, END = "<!-- calib-memory:begin -->", "<!-- calib-memory:end -->"
HOLDOUT = 8
TOOLS = {"onnxq-nofb": "onnxq `--no-fallback`", "onnxq": "onnxq (default, with fall-back)",
         "ort": "ORT `quantize_static`"}
#: What each tool's process imports before it reads a model: the floor under any peak.
FLOORS = {
    "onnxq": "import onnxruntime, onnxq.cli, onnxq.cli_quant, onnxq.quant.quantize, onnxq.pipeline; "
             "onnxq.pipeline.parse_pipeline('default')",
    "ort": "import onnxruntime.quantization, onnxruntime.quantization.shape_inference",
}
BUDGET_MISSED = "accuracy budget"


def make_calibration(source: Path, count: int, out: Path) -> None:
    """``count`` samples (plus the held-back ones) from the zoo's calibration file, noise added on repeats."""
    data = np.load(source)
    rng = np.random.default_rng(0)
    arrays = {}
    for name in data.files:
        base = data[name]
        picks = [base[i % len(base)] + (rng.normal(0, 0.01, base.shape[1:]).astype(base.dtype) if i >= len(base)
                                         else 0) for i in range(count + HOLDOUT)]
        arrays[name] = np.stack(picks)
    np.savez(out, **arrays)


def _row(tool: str, count: int | None, measured, out: Path | None) -> dict:
    missed = (tool.startswith("onnxq") and measured.returncode == 1 and not measured.timed_out and out is not None
              and out.exists() and BUDGET_MISSED in measured.output_tail)
    ok = measured.ok or missed
    return {"tool": tool, "samples": count, "ok": ok, "budget_missed": missed, "wall_s": round(measured.wall_s, 1),
            "peak_rss_mib": round(measured.peak_rss_mib or 0), "error": None if ok else measured.failure_line()}


def measure_floors(work: Path) -> dict[str, dict]:
    rows = {}
    for tool, code in FLOORS.items():
        measured = run_measured([sys.executable, "-c", code], cwd=ROOT, log_path=work / f"floor_{tool}.log",
                                timeout_s=600)
        rows[tool] = _row(tool, None, measured, None)
        print(json.dumps(rows[tool]), file=sys.stderr)
    return rows


def run(model_name: str, counts: list[int], work: Path) -> list[dict]:
    model = ROOT / ".cache" / "models" / f"{model_name}.onnx"
    calib_source = ROOT / ".cache" / "models" / f"{model_name}.calib.npz"
    if not model.exists():
        raise SystemExit(f"build the model first: python -m models build {model_name}")
    record = json.loads((ROOT / ".cache" / "models" / f"{model_name}.json").read_text())
    batch_axes = {name: spec.get("batch_axis") for name, spec in record["inputs"].items()}
    work = work / model_name
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for count in counts:
        calib = work / f"calib_{count}.npz"
        make_calibration(calib_source, count, calib)
        onnxq = [sys.executable, "-m", "onnxq.cli", "-q", "quantize", str(model), "--calib", str(calib),
                 "--calibration-size", str(count), "--holdout", str(HOLDOUT)]
        outputs = {tool: work / f"{tool}_{count}.onnx" for tool in TOOLS}
        commands = {
            "onnxq-nofb": [*onnxq, "-o", str(outputs["onnxq-nofb"]), "--no-fallback"],
            "onnxq": [*onnxq, "-o", str(outputs["onnxq"])],
            "ort": [sys.executable, "-m", "tools.bench.ort_quantize", str(model), str(calib), str(outputs["ort"]),
                    "--batch-axes", json.dumps(batch_axes), "--result", str(work / f"ort_{count}.json")],
        }
        for tool, command in commands.items():
            outputs[tool].unlink(missing_ok=True)
            measured = run_measured(command, cwd=ROOT, log_path=work / f"{tool}_{count}.log", timeout_s=3600)
            rows.append({"model": model_name, **_row(tool, count, measured, outputs[tool])})
            print(json.dumps(rows[-1]), file=sys.stderr)
    return rows


def _cell(row: dict | None) -> str:
    if not row or not row["ok"]:
        return f"failed: {row['error'] if row else 'not run'}"
    return f"{row['peak_rss_mib']} ({row['wall_s']})" + (" †" if row["budget_missed"] else "")


def render_model(model_name: str, counts: list[int], rows: list[dict], floor: dict | None) -> list[str]:
    by = {(r["tool"], r["samples"]): r for r in rows if r["model"] == model_name}
    lines = [f"### {model_name}", "",
             "| run | " + " | ".join(f"{n} samples: peak RSS MiB (wall s)" for n in counts) + " | growth |",
             "|---|" + "---|" * (len(counts) + 1)]
    for tool, label in TOOLS.items():
        peaks = [by[(tool, n)]["peak_rss_mib"] for n in counts if by.get((tool, n), {}).get("ok")]
        growth = f"{peaks[-1] / peaks[0]:.2f}x" if len(peaks) == len(counts) and peaks[0] else "-"
        lines.append(f"| {label} | " + " | ".join(_cell(by.get((tool, n))) for n in counts) + f" | {growth} |")
    lines.append("")
    for tool in ("onnxq-nofb", "onnxq"):
        ratios = [f"{n} samples {by[(tool, n)]['peak_rss_mib'] / by[('ort', n)]['peak_rss_mib']:.2f}" for n in counts
                  if by.get((tool, n), {}).get("ok") and by.get(("ort", n), {}).get("ok")]
        if ratios:
            lines.append(f"{TOOLS[tool]} / ORT peak RSS: " + ", ".join(ratios) + "  ")
    thirds = [f"{n} samples {by[('ort', n)]['peak_rss_mib'] / 3:.0f} MiB" for n in counts
              if by.get(("ort", n), {}).get("ok")]
    if thirds and floor and floor["ok"]:
        lines.append(f"1/3 of ORT's peak: {', '.join(thirds)}; onnxq's import floor alone is "
                     f"{floor['peak_rss_mib']} MiB  ")
    if any(r["budget_missed"] for r in by.values()):
        lines.append("† the accuracy budget was not met (exit 1, model written); the run did all its work")
    return lines + [""]


def render(models: list[str], counts: list[int], rows: list[dict], floors: dict[str, dict], command: str) -> str:
    lines = [BEGIN, f"## Calibration memory: {' vs '.join(map(str, counts))} samples", "",
             f"`{command}` — one process per run, peak RSS from `/usr/bin/time -v`; {HOLDOUT} held-back samples "
             f"for every count; {platform.machine()}, {platform.python_version()}. onnxq `--no-fallback` is "
             "calibration, one verification and the speed check; the default run adds the fall-back search.", ""]
    floor_cells = [f"{tool} {row['peak_rss_mib']} MiB" for tool, row in floors.items() if row["ok"]]
    if floor_cells:
        lines += ["Import floor (a process that only imports what the tool imports, no model): "
                  + ", ".join(floor_cells) + ".", ""]
    for model_name in models:
        lines += render_model(model_name, counts, rows, floors.get("onnxq"))
    lines.append(END)
    return "\n".join(lines)


def update_md(path: Path, section: str) -> None:
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + section + rest.split(END, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["efficientnet_lite0", "minilm"])
    parser.add_argument("--samples", type=int, nargs="+", default=[16, 256])
    parser.add_argument("--work-dir", type=Path, default=ROOT / ".cache" / "bench" / "calib_memory")
    parser.add_argument("--benchmarks-md", type=Path)
    parser.add_argument("--json", type=Path, help="write the rows here")
    parser.add_argument("--render", type=Path, help="no runs: render the rows of an earlier --json")
    args = parser.parse_args(argv)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    command = "python tools/bench_calib_memory.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    if args.render:
        saved = json.loads(args.render.read_text())
        floors, rows = saved["floors"], saved["rows"]
        # the section names the command that measured, and this one that wrote it
        measured_by = saved.get("command", "an earlier run")
        command = f"{measured_by}`, rendered by `{command}"
    else:
        floors = measure_floors(args.work_dir)
        rows = [row for name in args.models for row in run(name, args.samples, args.work_dir)]
    if args.json and not args.render:
        saved = {"command": command, "floors": floors, "rows": rows}
        args.json.write_text(json.dumps(saved, indent=2) + "\n")
    section = render(args.models, args.samples, rows, floors, command.strip())
    print(section)
    if args.benchmarks_md:
        update_md(args.benchmarks_md, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
