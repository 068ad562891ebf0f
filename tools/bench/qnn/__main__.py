"""``python -m tools.bench.qnn``: onnxq against ORT's QNN recipe on the zoo, HTP simulator, one run.

    python -m tools.bench.qnn --quick                  # digits_cnn, 4 eval samples: checks that all runs
    python -m tools.bench.qnn --json .cache/bench/qnn.json --update-md
    python -m tools.bench.qnn --models minilm --eval-samples 4
    python -m tools.bench.qnn --from-json .cache/bench/qnn.json --update-md   # re-render, no run

Exit status: 0 when the run completed (a tool's failure is a result, shown in the tables); in ``--quick``
mode, 1 when a tool produced no model that ran on the simulator with fidelity numbers, or the QNN EP is
missing.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from pathlib import Path

from tools.bench import CACHE, ROOT
from tools.bench.qnn import render, runner


def _list(text: str | None) -> list[str] | None:
    return [item.strip() for item in text.split(",") if item.strip()] if text else None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tools.bench.qnn", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="digits_cnn only, 4 eval samples")
    parser.add_argument("--models", help=f"comma-separated zoo models (default: {','.join(runner.DEFAULT_MODELS)})")
    parser.add_argument("--tools", help="comma-separated subset of onnxq,ort")
    parser.add_argument("--soc", default="sm8550", help="QNN target SoC (default %(default)s, HTP v73)")
    parser.add_argument("--eval-samples", type=int, default=None, help="eval samples on the simulator (default 16, up to 96 where the simulator is fast)")
    parser.add_argument("--calib-samples", type=int, default=64)
    parser.add_argument("--json", type=Path, help="write the full result here")
    parser.add_argument("--update-md", action="store_true", help="rewrite the QNN section of BENCHMARKS.md")
    parser.add_argument("--md-path", type=Path, default=ROOT / "BENCHMARKS.md", help=argparse.SUPPRESS)
    parser.add_argument("--work-dir", type=Path, default=CACHE / "qnn-runs")
    parser.add_argument("--zoo-dir", type=Path, default=CACHE / "zoo", help="built zoo models (built if missing)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per child process")
    parser.add_argument("--from-json", type=Path, help="render a saved result (no run): tables, --update-md")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress log")
    return parser.parse_args(argv)


def options_from(args: argparse.Namespace) -> runner.QnnBenchOptions:
    options = runner.QnnBenchOptions(soc=args.soc, work_dir=args.work_dir, zoo_dir=args.zoo_dir,
                                     calib_samples=args.calib_samples, timeout_s=args.timeout, quick=args.quick)
    if args.quick:
        options.models, options.eval_samples, options.timeout_s = runner.QUICK_MODELS, 4, min(args.timeout, 300.0)
        options.max_eval_samples = 4
    if args.models:
        options.models = _list(args.models)
    if args.tools:
        options.tools = _list(args.tools)
    if args.eval_samples is not None:
        options.eval_samples = options.max_eval_samples = args.eval_samples
    return options


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    options = options_from(args)
    command = shlex.join(["python", "-m", "tools.bench.qnn", *(sys.argv[1:] if argv is None else argv)])
    if args.from_json:
        result = json.loads(args.from_json.read_text())
    else:
        result = runner.run_benchmark(options, command=command)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
    if args.update_md:
        render.update_benchmarks_md(args.md_path, result)
    print(render.render_text(result))
    if options.quick:
        problems = runner.quick_problems(result)
        for problem in problems:
            print(f"quick check failed: {problem}", file=sys.stderr)
        return 1 if problems else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
