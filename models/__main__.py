"""Command line of the model zoo: ``python -m models list`` and ``python -m models build NAME``.

argparse rather than the onnxq CLI's typer: the zoo is a development tool that must run with nothing but
the standard library before any heavy import, so ``list`` works even where torch is missing.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from models.registry import DEFAULT_CACHE_DIR, ZooError, build, specs


def _list() -> int:
    import importlib.util

    rows = []
    for spec in specs().values():
        missing = [m for m in spec.needs if importlib.util.find_spec(m) is None]
        opset = str(spec.default_opset) if spec.default_opset else "as shipped"
        state = "ready" if not missing else "needs " + ", ".join(missing)
        rows.append((spec.name, opset, "slow" if spec.slow else "fast", state, spec.summary))
    width = max(len(r[0]) for r in rows)
    for name, opset, speed, state, summary in rows:
        print(f"{name:<{width}}  opset {opset:<10} {speed:<4}  {state:<12}  {summary}")
    return 0


def _build(names: list[str], out: Path, opset: int | None, exporter: str) -> int:
    if names == ["all"]:
        names = list(specs())
    for name in names:
        record = build(name, out, opset=opset, exporter=exporter)
        metrics = ", ".join(f"{k}={v}" for k, v in record["metrics"].items())
        size = record["files"]["onnx"]["bytes"] / 1e6
        print(
            f"{name}: {out / record['files']['onnx']['name']} ({size:.1f} MB, {record['exporter']}, "
            f"opset {record['opset'].get('ai.onnx')}, {record['build_seconds']} s)"
            + (f"; {metrics}" if metrics else "")
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="list the zoo's models and whether they can be built here")
    build_cmd = commands.add_parser("build", help="build models (or 'all')")
    build_cmd.add_argument("names", nargs="+", metavar="NAME")
    build_cmd.add_argument(
        "--out", type=Path, default=DEFAULT_CACHE_DIR, help="output folder (default %(default)s)"
    )
    build_cmd.add_argument(
        "--opset",
        type=int,
        default=None,
        help="ONNX opset for torch models (<=17: legacy exporter, >=18: dynamo)",
    )
    build_cmd.add_argument("--exporter", choices=("auto", "legacy", "dynamo"), default="auto")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s"
    )
    try:
        if args.command == "list":
            return _list()
        return _build(args.names, args.out, args.opset, args.exporter)
    except (ZooError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
