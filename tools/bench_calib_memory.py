"""Peak RSS of quantization against the number of calibration samples: onnxq vs ORT's ``quantize_static``.

onnxq streams statistics (running min/max, mergeable histograms), so its memory should not depend on how
many samples it calibrates on; ORT's calibrators collect intermediate outputs of every sample before
reducing them. Same model, same samples, each tool in its own process (peak RSS by ``/usr/bin/time -v``),
N = 16 and 256 samples (the zoo's calibration images, repeated with a little noise to reach 256):

    python tools/bench_calib_memory.py [--model efficientnet_lite0] [--samples 16 256] [--benchmarks-md BENCHMARKS.md]
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


def run(model_name: str, counts: list[int], work: Path) -> list[dict]:
    model = ROOT / ".cache" / "models" / f"{model_name}.onnx"
    calib_source = ROOT / ".cache" / "models" / f"{model_name}.calib.npz"
    if not model.exists():
        raise SystemExit(f"build the model first: python -m models build {model_name}")
    record = json.loads((ROOT / ".cache" / "models" / f"{model_name}.json").read_text())
    batch_axes = {name: spec.get("batch_axis") for name, spec in record["inputs"].items()}
    rows = []
    for count in counts:
        calib = work / f"calib_{count}.npz"
        make_calibration(calib_source, count, calib)
        commands = {
            "onnxq": [sys.executable, "-m", "onnxq.cli", "-q", "quantize", str(model), "-o",
                      str(work / f"onnxq_{count}.onnx"), "--calib", str(calib), "--calibration-size", str(count),
                      "--holdout", str(HOLDOUT), "--no-fallback"],
            "ort": [sys.executable, "-m", "tools.bench.ort_quantize", str(model), str(calib),
                    str(work / f"ort_{count}.onnx"), "--batch-axes", json.dumps(batch_axes),
                    "--result", str(work / f"ort_{count}.json")],
        }
        for tool, command in commands.items():
            measured = run_measured(command, cwd=ROOT, log_path=work / f"{tool}_{count}.log", timeout_s=3600)
            rows.append({"tool": tool, "samples": count, "ok": measured.ok, "wall_s": round(measured.wall_s, 1),
                         "peak_rss_mib": round(measured.peak_rss_mib or 0), "error": None if measured.ok
                         else measured.failure_line()})
            print(json.dumps(rows[-1]), file=sys.stderr)
    return rows


def render(model_name: str, counts: list[int], rows: list[dict], command: str) -> str:
    by = {(r["tool"], r["samples"]): r for r in rows}
    lines = [BEGIN, "## Calibration memory: 16 vs 256 samples", "",
             f"`{command}` — {model_name}, one process per run, peak RSS from `/usr/bin/time -v`; onnxq "
             f"with `--no-fallback` (the calibration pass alone), {HOLDOUT} held-back samples for both counts; "
             f"{platform.machine()}, {platform.python_version()}.", "",
             "| tool | " + " | ".join(f"{n} samples: peak RSS MiB (wall s)" for n in counts) + " | growth |",
             "|---|" + "---|" * (len(counts) + 1)]
    for tool in ("onnxq", "ort"):
        cells, peaks = [], []
        for n in counts:
            r = by.get((tool, n))
            if r and r["ok"]:
                cells.append(f"{r['peak_rss_mib']} ({r['wall_s']})")
                peaks.append(r["peak_rss_mib"])
            else:
                cells.append(f"failed: {r['error'] if r else 'not run'}")
        growth = f"{peaks[-1] / peaks[0]:.2f}x" if len(peaks) == len(counts) and peaks[0] else "-"
        lines.append(f"| {tool} | " + " | ".join(cells) + f" | {growth} |")
    ratios = [by[("onnxq", n)]["peak_rss_mib"] / by[("ort", n)]["peak_rss_mib"] for n in counts
              if by.get(("onnxq", n), {}).get("ok") and by.get(("ort", n), {}).get("ok")]
    if ratios:
        lines += ["", "onnxq / ORT peak RSS: " + ", ".join(f"{n} samples {r:.2f}" for n, r in zip(counts, ratios))]
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
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--samples", type=int, nargs="+", default=[16, 256])
    parser.add_argument("--work-dir", type=Path, default=ROOT / ".cache" / "bench" / "calib_memory")
    parser.add_argument("--benchmarks-md", type=Path)
    args = parser.parse_args(argv)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    rows = run(args.model, args.samples, args.work_dir)
    command = "python tools/bench_calib_memory.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    section = render(args.model, args.samples, rows, command.strip())
    print(section)
    if args.benchmarks_md:
        update_md(args.benchmarks_md, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
