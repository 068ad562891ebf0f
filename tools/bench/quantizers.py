"""The quantizers under test, as command lines: what each tool runs, in which interpreter, with what.

* ``onnxq``    — the real CLI, default settings: ``onnxq quantize IN -o OUT --calib CALIB --report R``
                 (its time includes its own verification on held-back samples and the speed check it
                 prints: that is what a user of the command waits for). CALIB is the npz, or the folder
                 of one-feed files where the zoo's npz layout is not the one onnxq reads.
* ``ort``      — ``tools.bench.ort_quantize`` in this interpreter (ORT's pre-process + quantize_static).
* ``modelopt`` — ``tools.bench.modelopt_quantize`` in ModelOpt's own venv.

A tool that cannot run a precision at all says so before anything starts (``skip_reason``), so the table
shows "unavailable: ..." instead of a failure.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tools.bench import modelopt_env
from tools.bench.zoo import ZooModel

#: precisions each tool's child maps (onnxq: whatever its target table has; it rejects others itself)
ORT_PRECISIONS = ("a8w8", "a16w8", "dynamic")
MODELOPT_PRECISIONS = ("a8w8",)


@dataclass(frozen=True)
class Tool:
    """A quantizer: ``command(model, precision, out, result_json)`` builds its child's argv."""

    name: str
    label: str
    command: Callable[[ZooModel, str, Path, Path], list[str]]
    skip_reason: Callable[[str], str | None]


def _onnxq_executable() -> list[str]:
    script = Path(sys.executable).parent / "onnxq"
    if script.exists():
        return [str(script)]
    found = shutil.which("onnxq")
    return [found] if found else [sys.executable, "-c", "from onnxq.cli import main; main()"]


def _onnxq_command(model: ZooModel, precision: str, out: Path, result: Path) -> list[str]:
    calib = model.calib_feeds or model.calib  # same samples; see tools.bench.zoo on the layouts
    return [*_onnxq_executable(), "quantize", str(model.fp32), "-o", str(out), "--calib", str(calib),
            "--precision", precision, "--report", str(result)]


def _child_command(python: str, module: str) -> Callable[[ZooModel, str, Path, Path], list[str]]:
    def command(model: ZooModel, precision: str, out: Path, result: Path) -> list[str]:
        return [python, "-m", module, str(model.fp32), str(model.calib), str(out),
                "--batch-axes", json.dumps(model.batch_axes), "--precision", precision, "--result", str(result)]

    return command


def _only(precisions: tuple[str, ...], tool: str) -> Callable[[str], str | None]:
    def reason(precision: str) -> str | None:
        if precision in precisions:
            return None
        return f"unavailable: {tool} has no {precision} mode here (benchmarked: {', '.join(precisions)})"

    return reason


def _modelopt_skip(precision: str) -> str | None:
    return _only(MODELOPT_PRECISIONS, "ModelOpt")(precision) or _modelopt_state()


_MODELOPT_STATE: list[str | None] = []


def _modelopt_state() -> str | None:
    """Probe the venv once per benchmark run (importing modelopt takes seconds)."""
    if not _MODELOPT_STATE:
        _MODELOPT_STATE.append(modelopt_env.unavailable_reason())
    return _MODELOPT_STATE[0]


TOOLS: dict[str, Tool] = {
    "onnxq": Tool("onnxq", "onnxq", _onnxq_command, lambda precision: None),
    "ort": Tool("ort", "ORT quantizer", _child_command(sys.executable, "tools.bench.ort_quantize"),
                _only(ORT_PRECISIONS, "ORT's quantizer")),
    "modelopt": Tool("modelopt", "ModelOpt", _child_command(str(modelopt_env.python()),
                                                            "tools.bench.modelopt_quantize"), _modelopt_skip),
}


def resolve(names: list[str]) -> list[Tool]:
    unknown = [name for name in names if name not in TOOLS]
    if unknown:
        raise ValueError(f"unknown tool(s) {', '.join(unknown)}; known: {', '.join(TOOLS)}")
    return [TOOLS[name] for name in names]
