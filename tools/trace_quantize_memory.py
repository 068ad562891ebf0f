"""Where `onnxq quantize` spends its memory: peak RSS per phase of one run, in this process.

Runs the CLI's quantize command (``onnxq.cli.main``) with its inner steps wrapped, resetting the kernel's
RSS high-water mark (``/proc/self/clear_refs``) around each one, as ``tools/bench_large_model.py`` does for
optimize. A nested phase's peak also counts for its parent. RSS after a phase includes heap that was freed
but not yet returned to the system (glibc keeps some), so "after" is an upper bound of what stays live.

    python tools/trace_quantize_memory.py MODEL.onnx CALIB.npz [--json out.json] [-- extra onnxq quantize options]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: make tools importable

from tools.bench_large_model import PhaseMeter  # noqa: E402


def trace(model: Path, calib: Path, extra: list[str]) -> list[dict]:
    meter = PhaseMeter()
    with meter("import onnxq + onnxruntime"):
        import onnx
        import onnxruntime

        from onnxq import cli, model_io
        from onnxq.backends import base
        from onnxq.calibration import collect
        from onnxq.quant import fallback, quantize

    meter.wrap(model_io, "load_model", "load")
    meter.wrap(quantize, "prepare", "prepare (graph passes)")
    meter.wrap(quantize, "collect_statistics", "calibrate")
    meter.wrap(collect, "make_calibration_session", "calibration session")
    meter.wrap(base.Backend, "reference_session", "FP32 reference session")
    meter.wrap(quantize, "_run_many", "run held-back samples")
    meter.wrap(fallback, "search", "verify / fall-back search")
    meter.wrap(quantize, "build_qdq_model", "build Q/DQ model")
    meter.wrap(quantize, "check_placement", "placement")
    meter.wrap(model_io, "save_model", "save (write, checker, ORT load)")
    meter.wrap(model_io, "_write", "write (serialize)")
    meter.wrap(onnx.checker, "check_model", "onnx.checker")
    meter.wrap(base.Backend, "time_models", "speed check (timing)")
    meter.wrap(onnxruntime, "InferenceSession", "ORT InferenceSession()")
    meter.wrap(quantize, "quantize", "quantize() (calibrate, verify, fall back)")
    with tempfile.TemporaryDirectory() as scratch, meter("onnxq quantize (total)"):
        argv = ["-q", "quantize", str(model), "-o", str(Path(scratch) / "q.onnx"), "--calib", str(calib), *extra]
        code = cli.main(argv)
    if code not in (0, 1):
        raise SystemExit(f"onnxq quantize exited {code}")
    return meter.phases


def summarize(phases: list[dict]) -> list[dict]:
    """One row per (phase, depth), in first-seen order: how many times it ran, its largest peak, total seconds."""
    rows: dict[tuple, dict] = {}
    for p in phases:
        row = rows.setdefault((p["phase"], p["depth"]), {**p, "count": 0, "seconds": 0.0, "peak_rss_mib": 0})
        row["count"] += 1
        row["seconds"] = round(row["seconds"] + p["seconds"], 3)
        row["peak_rss_mib"] = max(row["peak_rss_mib"], p["peak_rss_mib"])
        row["rss_anon_mib_after"] = p["rss_anon_mib_after"]
    return list(rows.values())


def render(rows: list[dict]) -> str:
    lines = ["| phase | runs | peak RSS MiB | RSS anon after (last) | s (total) |", "|---|---|---|---|---|"]
    for row in rows:
        name = "· " * row["depth"] + row["phase"]
        lines.append(f"| {name} | {row['count']} | {row['peak_rss_mib']} | {row['rss_anon_mib_after']} | "
                     f"{row['seconds']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("calib", type=Path)
    parser.add_argument("--json", type=Path)
    parser.add_argument("extra", nargs="*", help="more `onnxq quantize` options (after --)")
    args = parser.parse_args(argv)
    phases = trace(args.model, args.calib, args.extra)
    if args.json:
        args.json.write_text(json.dumps(phases, indent=2) + "\n")
    print(render(summarize(phases)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
