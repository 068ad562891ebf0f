"""``python -m tools.bench``: benchmark onnxq against ORT's quantizer and ModelOpt on the model zoo.

    python -m tools.bench --quick                      # CI: digits_cnn, onnxq + ORT, checks that all runs
    python -m tools.bench --json .cache/bench/full.json --update-md
    python -m tools.bench --from-json .cache/bench/full.json --update-md   # re-render a stored run
    python -m tools.bench --models digits_cnn,minilm --precisions a8w8 --tools onnxq,ort

Exit status: 0 when the run completed (failures of a tool are results, shown in the tables); in
``--quick`` mode, 1 when any tool failed to produce a model that loads, runs and has a latency ratio.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from pathlib import Path

from tools.bench import CACHE, ROOT, modelopt_env, render, runner


def _list(text: str | None) -> list[str] | None:
    return [item.strip() for item in text.split(",") if item.strip()] if text else None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tools.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI mode: digits_cnn, onnxq + ORT, < 2 min")
    parser.add_argument("--models", help="comma-separated zoo models (default: the whole catalog)")
    parser.add_argument("--precisions", default="a8w8", help="comma-separated (default %(default)s)")
    parser.add_argument("--tools", help="comma-separated subset of onnxq,ort,modelopt")
    parser.add_argument("--json", type=Path, help="write the full result here")
    parser.add_argument("--update-md", action="store_true", help="rewrite the quantizer section of BENCHMARKS.md")
    parser.add_argument("--from-json", type=Path, help="render a result stored by --json (runs nothing)")
    parser.add_argument("--md-path", type=Path, default=ROOT / "BENCHMARKS.md", help=argparse.SUPPRESS)
    parser.add_argument("--work-dir", type=Path, default=CACHE / "runs")
    parser.add_argument("--zoo-dir", type=Path, default=CACHE / "zoo", help="built zoo models (built if missing)")
    parser.add_argument("--calib-samples", type=int, default=64)
    parser.add_argument("--eval-samples", type=int, default=200)
    parser.add_argument("--latency-rounds", type=int, default=20, help="at least this many interleaved rounds")
    parser.add_argument("--threads", type=int, default=1,
                        help="ORT intra-op threads for latency (0: all cores; > 1 switches spinning off)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per child process")
    parser.add_argument("--setup-modelopt", action="store_true",
                        help=f"create {modelopt_env.VENV.relative_to(ROOT)} if pip can do so without CUDA torch")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress log")
    return parser.parse_args(argv)


def options_from(args: argparse.Namespace) -> runner.BenchOptions:
    common = {"work_dir": args.work_dir, "zoo_dir": args.zoo_dir, "calib_samples": args.calib_samples,
              "latency_rounds": args.latency_rounds, "threads": args.threads, "timeout_s": args.timeout,
              "precisions": _list(args.precisions) or ["a8w8"]}
    if args.models:
        common["models"] = _list(args.models)
    if args.tools:
        common["tools"] = _list(args.tools)
    if args.quick:
        return runner.BenchOptions.quick_mode(**common)
    from tools.bench import zoo

    return runner.BenchOptions(**{"models": zoo.catalog_names(), "eval_samples": args.eval_samples, **common})


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    if args.setup_modelopt:
        reason = modelopt_env.setup()
        logging.getLogger("tools.bench").warning("ModelOpt venv: %s", reason or "ready")
    if args.from_json:
        result = json.loads(args.from_json.read_text())
        result["command"] += f"   # then: python -m tools.bench --from-json {args.from_json} --update-md"
        if args.update_md:
            render.update_benchmarks_md(args.md_path, result)
        print(render.render_text(result))
        return 0
    options = options_from(args)
    command = shlex.join(["python", "-m", "tools.bench", *(sys.argv[1:] if argv is None else argv)])
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
