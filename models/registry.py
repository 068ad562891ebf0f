"""The model registry: every zoo model is a ``ModelSpec`` whose builder returns a ``BuiltModel``.

A builder only makes things (weights, an ONNX file, sample arrays, metrics); writing the sample files,
the JSON record and checking that calibration and evaluation sets are disjoint is done once, here, so every
model's artefacts look alike and no model can skip a check.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import logging
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from models import artifacts

logger = logging.getLogger(__name__)

#: Where builds and fetched wheels go by default: ``<repo>/.cache/models`` (gitignored via ``/.cache/``),
#: or ``$ONNXQ_ZOO_CACHE``.
DEFAULT_CACHE_DIR = Path(
    os.environ.get("ONNXQ_ZOO_CACHE", Path(__file__).resolve().parents[1] / ".cache" / "models")
)


class ZooError(Exception):
    """A model cannot be built here: a missing package or wheel, an unsupported option, bad data."""


@dataclasses.dataclass(frozen=True)
class BuildContext:
    """What a builder may use: where to write, which opset/exporter was asked for, where wheels are cached."""

    name: str
    out_dir: Path
    cache_dir: Path
    opset: int | None
    exporter: str  # "auto" | "legacy" | "dynamo"
    seed: int = 0

    @property
    def onnx_path(self) -> Path:
        return self.out_dir / f"{self.name}.onnx"


@dataclasses.dataclass
class BuiltModel:
    """What a builder hands back; the registry writes the sample files and the record.

    ``batch_axes`` says, per input, which axis of the model input is its batch axis (None: the input has no
    batch axis, like silero's sample rate, and every sample carries the same value). The sample arrays always
    stack samples on axis 0; ``models.artifacts.batches`` turns them back into model feeds.
    """

    calib: dict[str, np.ndarray]
    eval_inputs: dict[str, np.ndarray]
    labels: np.ndarray | None
    batch_axes: dict[str, int | None]
    exporter: str
    source: dict[str, Any]
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)
    extra_eval: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    output_batch_axes: dict[str, int | None] = dataclasses.field(default_factory=dict)  # default 0


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A zoo entry: its name, what it is, how heavy it is to build and which module builds it.

    The builder is named, not imported: ``python -m models list`` must work without torch, and the model
    modules import torch at the top like any torch code.
    """

    name: str
    summary: str
    module: str  # models.<module>.build(context) -> BuiltModel
    default_opset: int | None  # None: a third-party file whose opset we do not choose
    slow: bool = False
    needs: tuple[str, ...] = ()  # importable modules the build needs besides numpy/onnx
    options: tuple[tuple[str, Any], ...] = ()  # keyword arguments for the builder (variants of one module)

    def builder(self) -> Callable[..., BuiltModel]:
        return importlib.import_module(f"models.{self.module}").build


def specs() -> dict[str, ModelSpec]:
    """Every zoo model by name (the table lives in ``models.catalog``)."""
    from models.catalog import CATALOG

    names = [spec.name for spec in CATALOG]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate model names in the catalog: {names}")
    return {spec.name: spec for spec in CATALOG}


def get_spec(name: str) -> ModelSpec:
    known = specs()
    if name not in known:
        raise ZooError(f"unknown model '{name}'; known: {', '.join(known)}")
    return known[name]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _io_record(model: onnx.ModelProto, built: BuiltModel) -> dict[str, Any]:
    def describe(value: onnx.ValueInfoProto) -> dict[str, Any]:
        tensor = value.type.tensor_type
        dims = [d.dim_param or (d.dim_value if d.HasField("dim_value") else "?") for d in tensor.shape.dim]
        return {"dtype": onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name, "shape": dims}

    initializers = {init.name for init in model.graph.initializer}
    inputs = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        inputs[value.name] = describe(value) | {"batch_axis": built.batch_axes.get(value.name, 0)}
    outputs = {
        value.name: describe(value) | {"batch_axis": built.output_batch_axes.get(value.name, 0)}
        for value in model.graph.output
    }
    return {"inputs": inputs, "outputs": outputs}


def build(
    name: str,
    out_dir: str | os.PathLike = DEFAULT_CACHE_DIR,
    *,
    opset: int | None = None,
    exporter: str = "auto",
    cache_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Build ``name`` into ``out_dir``: NAME.onnx, NAME.calib.npz, NAME.eval.npz and NAME.json.

    Returns the JSON record. Raises ``ZooError`` when something the model needs is missing here.
    """
    spec = get_spec(name)
    if exporter not in ("auto", "legacy", "dynamo"):
        raise ZooError(f"unknown exporter '{exporter}'; known: auto, dynamo, legacy")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE_DIR
    if spec.default_opset is None and opset is not None:
        logger.warning("%s is a third-party ONNX file used as shipped: --opset %d ignored", name, opset)
        opset = None
    context = BuildContext(name, out, cache, opset if opset is not None else spec.default_opset, exporter)
    missing = [module for module in spec.needs if not _importable(module)]
    if missing:
        raise ZooError(f"model '{name}' needs {', '.join(missing)}: pip install -e .[torch,zoo]")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    built = spec.builder()(context, **dict(spec.options))
    seconds = time.perf_counter() - start
    artifacts.check_disjoint(built.calib, built.eval_inputs, built.batch_axes)
    artifacts.write_samples(out / f"{name}.calib.npz", built.calib)
    eval_arrays = {f"input:{key}": value for key, value in built.eval_inputs.items()}
    if built.labels is not None:
        eval_arrays["label"] = built.labels
    eval_arrays.update(built.extra_eval)
    artifacts.write_samples(out / f"{name}.eval.npz", eval_arrays)
    proto = onnx.load(str(context.onnx_path), load_external_data=False)
    record = {
        "name": name,
        "summary": spec.summary,
        "exporter": built.exporter,
        "opset": {o.domain or "ai.onnx": o.version for o in proto.opset_import},
        "ir_version": proto.ir_version,
        "producer": f"{proto.producer_name} {proto.producer_version}".strip(),
        "source": built.source,
        "seed": context.seed,
        **_io_record(proto, built),
        "calib_samples": artifacts.sample_count(built.calib),
        "eval_samples": artifacts.sample_count(built.eval_inputs),
        "eval_has_labels": built.labels is not None,
        "metrics": built.metrics,
        "notes": built.notes,
        "files": {
            kind: {"name": f"{name}{suffix}", "bytes": (out / f"{name}{suffix}").stat().st_size}
            for kind, suffix in (("onnx", ".onnx"), ("calib", ".calib.npz"), ("eval", ".eval.npz"))
        },
        "onnx_sha256": _sha256(context.onnx_path),
        "build_seconds": round(seconds, 2),
        "environment": _environment(),
    }
    (out / f"{name}.json").write_text(json.dumps(record, indent=2, sort_keys=False) + "\n")
    logger.info("built %s in %.1f s -> %s", name, seconds, context.onnx_path)
    return record


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _environment() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for module in ("torch", "onnx", "onnxruntime", "numpy"):
        try:
            versions[module] = __import__(module).__version__
        except ImportError:
            continue
    return versions


def load_record(out_dir: str | os.PathLike, name: str) -> dict[str, Any]:
    """The JSON record a build wrote."""
    return json.loads((Path(out_dir) / f"{name}.json").read_text())
