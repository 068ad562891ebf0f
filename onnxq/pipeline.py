"""Pass pipelines: named or written as text, run with timing, rewrite counts and optional verification.

Text form (MLIR-like): ``fold-constants,fold-bn,fuse-matmul-add{...},dce`` where ``{key=value,...}``
sets typed options of the pass before it. A bare pipeline name (``default``) expands to its passes.

``--verify`` runs the model through ONNX Runtime before the pipeline and after every pass that changed
it, on the same inputs, and stops at the first pass whose outputs drift beyond the tolerance, naming it.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from onnxq import numerics
from onnxq.errors import OptionError, UnknownNameError, VerificationError
from onnxq.pass_api import OnnxqPass, coerce_option, get_pass

logger = logging.getLogger(__name__)

#: Portable graph optimization: no com.microsoft or layout-specific ops, so the result stays loadable by
#: QNN, TensorRT and Core ML.
_PORTABLE = (
    "infer-shapes",
    "fold-constants",
    "eliminate-identity",
    "fold-bn",
    "fuse-matmul-add",
    "fuse-layernorm",
    "fuse-gelu",
    "fuse-activations",
    "infer-shapes",  # rewrites leave new values without shapes; the second cleanup round needs them
    "fold-constants",
    "eliminate-identity",
    "dce",
    "topo-sort",
)

PIPELINES: dict[str, tuple[str, ...]] = {
    "default": _PORTABLE,
    # ONNX Runtime fuses MatMul+Add itself (and Gemm needs 2-D inputs); everything else as default.
    "ort": tuple(p for p in _PORTABLE if p != "fuse-matmul-add"),
    "cleanup": ("fold-constants", "eliminate-identity", "dce", "topo-sort"),
}

_ITEM = re.compile(r"^\s*([a-z0-9-]+)\s*(?:\{(.*)\})?\s*$")


@dataclass
class PassRecord:
    """What one pass did: for the log, the CLI summary and the JSON report."""

    name: str
    seconds: float
    rewrites: int
    modified: bool
    max_error: float | None = None


@dataclass
class PipelineReport:
    records: list[PassRecord] = field(default_factory=list)

    @property
    def total_rewrites(self) -> int:
        return sum(r.rewrites for r in self.records)

    @property
    def seconds(self) -> float:
        return sum(r.seconds for r in self.records)


def _split_items(text: str) -> list[str]:
    """Split on commas that are not inside braces."""
    items, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:])
    return [item for item in (i.strip() for i in items) if item]


def parse_pipeline(text: str) -> list[OnnxqPass]:
    """Build pass instances from a pipeline name or a text pipeline."""
    text = text.strip()
    if not text:
        raise OptionError("empty pass pipeline")
    items = _split_items(text)
    if not items:
        raise OptionError(f"empty pass pipeline '{text}'")
    passes: list[OnnxqPass] = []
    for item in items:
        if item in PIPELINES:
            passes.extend(get_pass(name)() for name in PIPELINES[item])
            continue
        match = _ITEM.match(item)
        if not match:
            raise OptionError(f"cannot parse pipeline item '{item}' (expected name or name{{key=value,...}})")
        name, body = match.group(1), match.group(2)
        try:
            cls = get_pass(name)
        except UnknownNameError as exc:
            raise UnknownNameError("pass or pipeline", name, list(exc.choices) + list(PIPELINES)) from None
        kwargs = {}
        for pair in _split_items(body or ""):
            if "=" not in pair:
                raise OptionError(f"pass '{name}' option '{pair}' must be key=value")
            key, value = (s.strip() for s in pair.split("=", 1))
            kwargs[key.replace("-", "_")] = coerce_option(cls, key, value)
        passes.append(cls(**kwargs))
    return passes


ProgressCallback = Callable[[int, int, str], None]


@dataclass
class Verifier:
    """Reference outputs of the original model and the tolerance a pass may not exceed."""

    feeds: dict[str, np.ndarray]
    reference: dict[str, np.ndarray]
    rtol: float = 1e-4

    @classmethod
    def for_model(
        cls, model: ir.Model, *, shapes: Mapping[str, tuple[int, ...]] | None = None,
        feeds: dict[str, np.ndarray] | None = None, rtol: float = 1e-4, seed: int = 0,
    ) -> Verifier:
        feeds = feeds if feeds is not None else numerics.random_inputs(model, shapes, seed=seed)
        try:
            reference = numerics.run_model(model, feeds)
        except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
            raise VerificationError(
                f"cannot run the original model in ONNX Runtime to verify against: {str(exc).splitlines()[0]}"
            ) from None
        return cls(feeds, reference, rtol)

    def check(self, model: ir.Model, pass_name: str) -> float:
        try:
            actual = numerics.run_model(model, self.feeds)
        except Exception as exc:  # noqa: BLE001
            raise VerificationError(
                f"pass '{pass_name}' produced a model ONNX Runtime cannot run: {str(exc).splitlines()[0]}"
            ) from None
        output, error = numerics.worst_output_error(self.reference, actual)
        if error > self.rtol:
            raise VerificationError(
                f"pass '{pass_name}' changed output '{output}' by {error:.3g} relative (tolerance {self.rtol:g})"
            )
        return error


def run_passes(
    model: ir.Model,
    passes: list[OnnxqPass],
    *,
    verifier: Verifier | None = None,
    progress: ProgressCallback | None = None,
) -> tuple[ir.Model, PipelineReport]:
    """Run ``passes`` in order; return the (possibly new) model and what each pass did."""
    report = PipelineReport()
    for index, pass_ in enumerate(passes):
        if progress:
            progress(index, len(passes), pass_.name)
        start = time.perf_counter()
        result = pass_(model)
        model = result.model
        record = PassRecord(pass_.name, time.perf_counter() - start, pass_.rewrites, result.modified)
        logger.info("%-20s %4d rewrites  %7.3f s", record.name, record.rewrites, record.seconds)
        if verifier is not None and result.modified:
            record.max_error = verifier.check(model, pass_.name)
        report.records.append(record)
    if progress:
        progress(len(passes), len(passes), "")
    return model, report
