"""Zoo models as the benchmark sees them: an FP32 file, a calibration npz cut to size, an eval npz.

Builds run as ``python -m models build NAME`` in a child process: a build imports torch and trains or
exports a network, and none of that should stay in the orchestrating process (its memory would blur
nothing measured, but a crashing exporter must not end the whole benchmark). A model already built in
the zoo folder (``NAME.onnx``, ``.calib.npz``, ``.eval.npz`` and ``.json`` all present) is reused.

Every tool calibrates on the same samples: the zoo's calibration samples, the first ``calib_samples`` of
them (zoo sets are already drawn at random), written to the model's work folder in the zoo's own layout.
Where an input's batch axis is not 0 (silero's state [2, batch, 128], stored [samples, 2, 128]) or there
is none (its sample rate), the same samples are also written as a folder of one-feed npz files, exactly
as the model takes them: onnxq's ``--calib`` reads an npz array whose rank equals the input's as batched
on axis 0, which is not the zoo's layout for such inputs (see ``feeds_folder``).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tools.bench import ROOT

logger = logging.getLogger(__name__)

SUFFIXES = (".onnx", ".calib.npz", ".eval.npz", ".json")


class ModelUnavailable(Exception):
    """The model cannot be built here (missing package, failing exporter); the message says why."""


@dataclass
class ZooModel:
    """One model ready to benchmark; ``batch_axes`` comes from the zoo record (None: no batch axis)."""

    name: str
    fp32: Path
    calib: Path
    eval: Path
    record: dict[str, Any]
    batch_axes: dict[str, int | None]
    calib_samples: int
    calib_feeds: Path | None = None  # one npz per feed; set where the npz layout is not onnxq's
    build_seconds: float | None = None
    notes: list[str] = field(default_factory=list)


def catalog_names() -> list[str]:
    """Every model in the zoo's catalog, in catalog order (imports no torch)."""
    from models.registry import specs

    return list(specs())


def is_built(zoo_dir: Path, name: str) -> bool:
    return all((zoo_dir / f"{name}{suffix}").exists() for suffix in SUFFIXES)


def build(zoo_dir: Path, name: str, timeout_s: float) -> float:
    """Build ``name`` into ``zoo_dir`` in a child process; returns seconds, raises ModelUnavailable."""
    start = time.perf_counter()
    command = [sys.executable, "-m", "models", "build", name, "--out", str(zoo_dir)]
    logger.info("building %s: %s", name, " ".join(command))
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        raise ModelUnavailable(f"build timed out after {timeout_s:.0f} s") from exc
    if done.returncode != 0:
        lines = [line for line in (done.stderr or done.stdout).strip().splitlines() if line.strip()]
        raise ModelUnavailable(f"build failed: {lines[-1] if lines else f'exit {done.returncode}'}")
    return time.perf_counter() - start


def _cut_samples(source: Path, target: Path, limit: int) -> int:
    """Copy the first ``limit`` samples of every array (axis 0 enumerates samples in zoo files)."""
    with np.load(source, allow_pickle=False) as data:
        arrays = {key: data[key][:limit] for key in data.files}
    np.savez(target, **arrays)
    return min(len(value) for value in arrays.values())


def feeds_folder(calib: Path, batch_axes: dict[str, int | None], folder: Path) -> Path:
    """The calibration samples as ``folder/00000.npz``…, each one feed of batch 1, batch axes restored."""
    from models.artifacts import batches, read_samples

    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.npz"):
        old.unlink()
    for index, feed in enumerate(batches(read_samples(calib), batch_axes, batch_size=1)):
        np.savez(folder / f"{index:05d}.npz", **feed)
    return folder


def prepare(name: str, zoo_dir: Path, work_dir: Path, *, calib_samples: int, build_timeout_s: float) -> ZooModel:
    """Build ``name`` if needed and lay out its benchmark inputs under ``work_dir/name``."""
    zoo_dir.mkdir(parents=True, exist_ok=True)
    seconds = None
    if not is_built(zoo_dir, name):
        seconds = build(zoo_dir, name, build_timeout_s)
    record = json.loads((zoo_dir / f"{name}.json").read_text())
    folder = work_dir / name
    folder.mkdir(parents=True, exist_ok=True)
    calib = folder / f"{name}.calib{calib_samples}.npz"
    used = _cut_samples(zoo_dir / f"{name}.calib.npz", calib, calib_samples)
    axes = {input_name: spec.get("batch_axis", 0) for input_name, spec in record.get("inputs", {}).items()}
    feeds = None
    if any(axis != 0 for axis in axes.values()):
        feeds = feeds_folder(calib, axes, folder / f"{name}.calib{calib_samples}.feeds")
    built_in = seconds if seconds is not None else record.get("build_seconds")
    return ZooModel(name, zoo_dir / f"{name}.onnx", calib, zoo_dir / f"{name}.eval.npz", record, axes, used,
                    calib_feeds=feeds, build_seconds=built_in)
