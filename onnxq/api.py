"""The Python API: the same operations the CLI runs, for deployment pipelines.

    import onnxq
    model = onnxq.load("model.onnx")
    model, report = onnxq.optimize(model, passes="default", verify=True)
    onnxq.save(model, "opt.onnx")
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx_ir as ir

from onnxq import model_io, pipeline
from onnxq.inspection import ModelSummary, summarize
from onnxq.pass_api import OnnxqPass


def load(path: str | os.PathLike) -> ir.Model:
    """Load and check a model (lazy external data); raises ``OnnxqError`` on bad input."""
    return model_io.load_model(path).model


def save(
    model: ir.Model, path: str | os.PathLike, *, external_data: bool | None = None, protect: list[Path] | None = None
) -> Path:
    """Validate (checker + ORT load) and write atomically; see ``onnxq.model_io.save_model``."""
    return model_io.save_model(model, path, external_data=external_data, protected=protect)


def optimize(
    model: ir.Model,
    passes: str | list[OnnxqPass] = "default",
    *,
    input_shapes: Mapping[str, tuple[int, ...]] | None = None,
    verify: bool = False,
    verify_feeds: dict[str, np.ndarray] | None = None,
    rtol: float = 1e-4,
    progress: pipeline.ProgressCallback | None = None,
) -> tuple[ir.Model, pipeline.PipelineReport]:
    """Run a pass pipeline; with ``input_shapes`` first fix those inputs' dims to static values.

    ``verify`` compares ONNX Runtime outputs after each modifying pass with the original's and raises
    ``VerificationError`` naming the first pass that drifted beyond ``rtol``.
    """
    pass_list = pipeline.parse_pipeline(passes) if isinstance(passes, str) else list(passes)
    if input_shapes:
        from onnxq.pass_api import get_pass

        pass_list = [get_pass("fix-input-shapes")(shapes=dict(input_shapes))] + pass_list
    verifier = None
    if verify:
        verifier = pipeline.Verifier.for_model(model, shapes=input_shapes, feeds=verify_feeds, rtol=rtol)
    return pipeline.run_passes(model, pass_list, verifier=verifier, progress=progress)


def inspect_model(model: ir.Model) -> ModelSummary:
    """Facts about a model: opsets, I/O, op histogram, parameters by dtype, quantized ops."""
    return summarize(model)


def quantize(model: ir.Model, calibration, *, target: str = "ort", recipe=None, progress=None, **options):
    """Quantize for ``target``; returns ``(model, QuantReport)``. See ``onnxq.quant.quantize``.

    ``calibration``: a .npz path, a folder of .npz, an iterable of ``{input: array}``, or an ONNX Runtime
    ``CalibrationDataReader``. ``options`` override the recipe (precision, method, max_error, ...);
    ``progress`` is called with a line of text at each stage.
    """
    from onnxq.quant.quantize import quantize as _quantize
    from onnxq.quant.recipe import Recipe

    recipe = (recipe or Recipe()).with_options(**options)
    return _quantize(model, calibration, target=target, recipe=recipe, progress=progress)
