"""The command line every quantizer child process shares: run one tool, report JSON to the parent.

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
