"""ModelOpt's own virtualenv (``.cache/bench/modelopt-venv``): find it, or install it when that is safe.

Why a separate venv: ``nvidia-modelopt[onnx]`` pins its own onnx (~=1.21) and ``onnxruntime-gpu``, which
would replace the project's onnx/onnxruntime. Why the care: it requires ``torch>=2.8``, and pip resolving
that on its own downloads the newest CUDA build of torch with several GB of CUDA libraries. So the venv gets
``torch==2.13.0`` first (pip takes the local CPU wheel), then a ``--dry-run --report`` resolution of
``nvidia-modelopt[onnx]`` is checked, and the install goes ahead only if it would not touch torch.
``onnxruntime-gpu`` still comes along; its CPU provider is what runs here.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

from tools.bench import CACHE, ROOT

logger = logging.getLogger(__name__)

VENV = CACHE / "modelopt-venv"
REQUIREMENT = "nvidia-modelopt[onnx]"
TORCH = "torch==2.13.0"


def python(venv: Path = VENV) -> Path:
    return venv / "bin" / "python"


def unavailable_reason(venv: Path = VENV) -> str | None:
    """None when ModelOpt's ONNX quantizer imports in the venv, else why not (short, for a table cell)."""
    if not python(venv).exists():
        shown = venv.relative_to(ROOT) if venv.is_relative_to(ROOT) else venv
        return f"unavailable: no venv at {shown} (run with --setup-modelopt)"
    probe = subprocess.run([str(python(venv)), "-c", "import modelopt.onnx.quantization"],
                           capture_output=True, text=True, timeout=300,
                           check=False)
    if probe.returncode:
        last = (probe.stderr.strip().splitlines() or ["import failed"])[-1]
        return f"unavailable: {last[:200]}"
    return None


def _pip(venv: Path, *args: str) -> subprocess.CompletedProcess:
    command = [str(python(venv)), "-m", "pip", "--disable-pip-version-check", *args]
    logger.info("%s", " ".join(command))
    return subprocess.run(command, capture_output=True, text=True, check=False)


def setup(venv: Path = VENV) -> str | None:
    """Create and fill the venv unless that would pull a CUDA torch; returns a reason when it refused."""
    if unavailable_reason(venv) is None:
        return None
    if not python(venv).exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    done = _pip(venv, "install", "-q", TORCH)
    if done.returncode:
        return f"unavailable: could not install {TORCH}: {done.stderr.strip().splitlines()[-1:]}"
    report = venv / "dry-run.json"
    done = _pip(venv, "install", "--dry-run", "--report", str(report), REQUIREMENT)
    if done.returncode:
        return f"unavailable: pip cannot resolve {REQUIREMENT}: {done.stderr.strip().splitlines()[-1:]}"
    planned = {item["metadata"]["name"].lower(): item["metadata"]["version"]
               for item in json.loads(report.read_text()).get("install", [])}
    if "torch" in planned:
        return f"unavailable: {REQUIREMENT} would replace torch with {planned['torch']} (CUDA build)"
    done = _pip(venv, "install", "-q", REQUIREMENT)
    if done.returncode:
        return f"unavailable: pip install failed: {done.stderr.strip().splitlines()[-1:]}"
    return unavailable_reason(venv)
