"""What the benchmark's child processes share: run one tool or one evaluation, report JSON to the parent.

Stdlib only: it also runs inside ModelOpt's own virtualenv.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

Quantize = Callable[[Path, Path, Path, dict, str], dict]


def run_quantizer_child(description: str, quantize: Quantize, argv: list[str] | None = None) -> int:
    """Parse ``MODEL CALIB OUT --result R``, run ``quantize``, write its result (or the error) to R."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("model", type=Path)
    parser.add_argument("calib", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--batch-axes", default="{}", help="JSON {input: axis or null}")
    parser.add_argument("--precision", default="a8w8")
    parser.add_argument("--result", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        result = quantize(args.model, args.calib, args.out, json.loads(args.batch_axes), args.precision)
    except SystemExit as exc:  # a tool that gives up with a message of its own
        args.result.write_text(json.dumps({"error": str(exc)}))
        print(exc, file=sys.stderr)
        return 3
    except Exception as exc:  # noqa: BLE001 - reported to the parent, then a non-zero exit
        traceback.print_exc()
        args.result.write_text(json.dumps({"error": f"{type(exc).__name__}: {exc}"[:500]}))
        return 1
    args.result.write_text(json.dumps(result, indent=2))
    return 0


def write_result(run: Callable[[argparse.Namespace], dict], args: argparse.Namespace) -> int:
    """Run ``run(args)`` and write its result, or the error's first line, as JSON to ``args.result``."""
    try:
        result = run(args)
    except Exception as exc:  # noqa: BLE001 - the parent records why the child failed
        traceback.print_exc()
        args.result.write_text(json.dumps({"error": first_line(exc)}))
        return 1
    args.result.write_text(json.dumps(result, indent=2, default=float))
    return 0


def first_line(exc: BaseException) -> str:
    """``Type: first line of the message`` (some exceptions have an empty message)."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:300] if lines else ''}".rstrip(": ")
