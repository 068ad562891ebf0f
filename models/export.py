"""Exporting torch modules to ONNX the way third-party models are exported, and reproducibly.

torch 2.13 still ships the TorchScript ("legacy") exporter behind ``dynamo=False``: it writes opsets 7-20
with ``dynamic_axes`` and is what most ONNX files in the wild were made with, so opsets up to 17 use it.
Opset 18 and above go through the dynamo exporter (``torch.export`` + onnxscript), which writes IR 10.

``keep_batchnorm`` exists because both exporters fold BatchNormalization into the preceding Conv/Gemm by
default (legacy: an eval-mode peephole; dynamo: its onnxscript optimizer), and the zoo wants BN nodes left
in so our own ``fold-bn`` pass is exercised on real exporter output. Turning constant folding off instead
would also keep BN, but leaves dozens of Cast/Shape nodes no real export has.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import onnx

logger = logging.getLogger(__name__)

#: Highest opset exported with the legacy exporter under ``exporter="auto"``.
LEGACY_MAX_OPSET = 17
#: IR version ceiling: old runtimes (and the third-party files we mimic) do not read newer IR.
MAX_IR_VERSION = 10


def choose_exporter(opset: int, exporter: str = "auto") -> str:
    """Resolve ``auto`` to ``legacy`` (opset <= 17) or ``dynamo`` (opset >= 18) and check the pairing."""
    if exporter == "auto":
        return "legacy" if opset <= LEGACY_MAX_OPSET else "dynamo"
    if exporter == "legacy" and not 7 <= opset <= 20:
        raise ValueError(f"the legacy torch exporter writes opsets 7-20, not {opset}")
    if exporter == "dynamo" and opset < 18:
        raise ValueError(f"the dynamo torch exporter writes opset 18 or newer, not {opset}")
    return exporter


def export_torch(
    module: Any,
    example_inputs: tuple[Any, ...],
    path: str | os.PathLike,
    *,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_axes: Mapping[str, Mapping[int, str]],
    opset: int,
    exporter: str = "auto",
    keep_batchnorm: bool = False,
) -> str:
    """Export ``module`` (in eval mode) to ``path``; return a description like ``torch 2.13 legacy``.

    The exporters' progress chatter goes to this module's logger at DEBUG, not to stdout.
    """
    import torch

    kind = choose_exporter(opset, exporter)
    path = Path(path)
    module.eval()
    chatter = io.StringIO()
    axes = {name: dict(dims) for name, dims in dynamic_axes.items()}
    with (
        torch.no_grad(),
        contextlib.redirect_stdout(chatter),
        warnings.catch_warnings(),
        _quiet_torch_loggers(),
    ):
        warnings.simplefilter("ignore")
        if kind == "legacy":
            # PRESERVE on an eval-mode module exports inference BatchNormalization but skips the eval-only
            # peephole that fuses it into Conv; constant folding stays on, as in ordinary exports.
            mode = torch.onnx.TrainingMode.PRESERVE if keep_batchnorm else torch.onnx.TrainingMode.EVAL
            torch.onnx.export(
                module,
                example_inputs,
                str(path),
                dynamo=False,
                opset_version=opset,
                training=mode,
                input_names=list(input_names),
                output_names=list(output_names),
                dynamic_axes=axes,
            )
        else:
            program = torch.onnx.export(
                module,
                example_inputs,
                dynamo=True,
                opset_version=opset,
                input_names=list(input_names),
                output_names=list(output_names),
                dynamic_axes=axes,
                optimize=not keep_batchnorm,
            )
            if keep_batchnorm:  # the exporter's optimizer would fuse BN: fold constants only
                import onnxscript.optimizer

                onnxscript.optimizer.fold_constants(program.model)
                onnxscript.optimizer.remove_unused_nodes(program.model)
            program.save(str(path), external_data=False)
    for line in chatter.getvalue().splitlines():
        logger.debug("torch.onnx: %s", line)
    _finalize(path, opset)
    return f"torch {torch.__version__.split('+')[0]} {kind} exporter"


@contextlib.contextmanager
def _quiet_torch_loggers():
    """The dynamo exporter logs a WARNING per missing torchvision op on every export; none apply here."""
    noisy = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = noisy.level
    noisy.setLevel(logging.ERROR)
    try:
        yield
    finally:
        noisy.setLevel(level)


def _finalize(path: Path, opset: int) -> None:
    """Check the file, cap its IR version, and make sure the exporter kept the opset we asked for."""
    model = onnx.load(str(path))
    default = {o.domain: o.version for o in model.opset_import}.get("", None)
    if default != opset:
        raise RuntimeError(f"asked torch for opset {opset}, it wrote {default}")
    if model.ir_version > MAX_IR_VERSION:
        model.ir_version = MAX_IR_VERSION
        onnx.save(model, str(path))
    onnx.checker.check_model(model, full_check=True)


def torch_outputs(
    module: Any, inputs: Sequence[Any], output_names: Sequence[str], batch_size: int = 16
) -> dict[str, Any]:
    """Run ``module`` in eval mode over sample arrays (batch axis 0) and stack its outputs by name.

    These are stored in the eval file as ``reference:<output>``: what the source framework computed, the
    ground truth every ONNX rewrite of the model is compared with.
    """
    import numpy as np
    import torch

    module.eval()
    collected: dict[str, list] = {name: [] for name in output_names}
    total = len(inputs[0])
    with torch.no_grad():
        for start in range(0, total, batch_size):
            args = [torch.from_numpy(np.ascontiguousarray(a[start : start + batch_size])) for a in inputs]
            result = module(*args)
            result = result if isinstance(result, tuple) else (result,)
            for name, value in zip(output_names, result, strict=True):
                collected[name].append(value.numpy())
    return {name: np.concatenate(values) for name, values in collected.items()}
