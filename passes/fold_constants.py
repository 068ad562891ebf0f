"""Constant folding: evaluate nodes whose inputs are all constants and store the result as an initializer.

Uses onnxscript's folder (which also folds shape computations such as Shape→Gather→Concat when the
shapes are static). Size limits keep it from materialising huge tensors: by default inputs up to
``input_size_limit`` elements are evaluated and outputs up to ``output_size_limit`` elements are kept.

Quantization nodes are never folded: ``DequantizeLinear(int8 weight)`` evaluated to a float constant would
silently undo weight quantization (4x the bytes, and the runtime would no longer see the int8 weight).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import onnx_ir as ir
from onnx_ir.passes.common import LiftConstantsToInitializersPass
from onnxscript.optimizer import fold_constants

from onnxq import small_ops
from onnxq.pass_api import OnnxqPass, register_pass

#: Ops whose constant inputs are the point (quantized weights): keep them in the graph.
NEVER_FOLD = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})


#: ConstantOfShape outputs up to this many elements are folded (onnxscript never folds the op itself, which
#: leaves exporters' pad computations, e.g. torch's F.pad for TF-style "same" padding, as live subgraphs).
CONSTANT_OF_SHAPE_LIMIT = 1024


#: Ops that only re-lay out their first input: folding them on a shared weight duplicates the weight.
_LAYOUT_OPS = frozenset({"Unsqueeze", "Squeeze", "Reshape", "Transpose", "Flatten", "Expand", "Tile", "Cast"})
_DUPLICATION_LIMIT = 4096


def _is_shared_large_constant(value: ir.Value | None) -> bool:
    if value is None or value.const_value is None or value.const_value.size <= _DUPLICATION_LIMIT:
        return False
    return len(list(value.uses())) > 1


def _should_fold(node: ir.Node) -> bool | None:
    if node.domain not in ("", "ai.onnx"):
        return None
    if node.op_type in NEVER_FOLD:
        return False
    if node.op_type in _LAYOUT_OPS and node.inputs and _is_shared_large_constant(node.inputs[0]):
        return False  # folding would store a second copy of a weight that other nodes still read
    if node.op_type == "ConstantOfShape":
        shape = node.inputs[0].const_value if node.inputs and node.inputs[0] is not None else None
        if shape is not None and int(abs(shape.numpy()).prod()) <= CONSTANT_OF_SHAPE_LIMIT:
            return True
    return None  # onnxscript's default rules decide


@dataclass(frozen=True)
class FoldConstantsOptions:
    input_size_limit: int = 1 << 20
    output_size_limit: int = 1 << 22


@register_pass
class FoldConstantsPass(OnnxqPass):
    """Rules:

    1. A node whose inputs are all constant (and small enough) is replaced by its computed output.
    2. ``Constant`` nodes become initializers.
    3. Shape computations on statically known shapes are folded.
    4. QuantizeLinear / DequantizeLinear are never folded (they carry quantized weights).
    5. ConstantOfShape with a constant shape of at most 1024 elements is folded (pad computations).
    6. A layout op (Unsqueeze, Reshape, Transpose, ...) on a large constant that other nodes also read is
       not folded: that would store the weight twice.
    """

    name = "fold-constants"
    summary = "evaluate constant subgraphs and store their results as initializers"
    Options = FoldConstantsOptions

    def apply(self, model: ir.Model) -> int:
        before = _node_count(model)
        with _small_ops_first():
            result = fold_constants(
                model,
                input_size_limit=self.options.input_size_limit,
                output_size_limit=self.options.output_size_limit,
                should_fold=_should_fold,
            )
        # Constant nodes (any size) become initializers, where quantizers and inspect expect weights.
        LiftConstantsToInitializersPass(lift_all_constants=False, size_limit=0)(model)
        # The folder detaches folded nodes; dead ones disappear in dce. Count what is gone or replaced.
        removed = max(0, before - _node_count(model))
        return removed if removed else int(bool(result.modified))


class _SmallOpsFirst:
    """onnxscript's evaluator of constant nodes, trying ``onnxq.small_ops`` (numpy) before
    ``onnx.reference``."""

    def __init__(self, reference) -> None:
        self.reference = reference

    def evaluate(self, domain: str, op: str, version: int, *args, **kwargs):
        result = small_ops.evaluate(domain, op, args, kwargs)
        return result if result is not None else self.reference.evaluate(domain, op, version, *args, **kwargs)


@contextlib.contextmanager
def _small_ops_first() -> Iterator[bool]:
    """For the folder's run, its module's evaluator of constant nodes (``_reference_evaluator``) tries
    ``onnxq.small_ops`` first, so the shape arithmetic of exported models does not import ``onnx.reference``
    (11 MiB, resident for the rest of the run: ``onnxq.deferred_imports``). Yields whether it could: an
    onnxscript without that evaluator folds as it is (test_deferred_imports pins the installed one)."""
    from onnxscript.optimizer import _constant_folding

    reference = getattr(_constant_folding, "_reference_evaluator", None)
    if not callable(getattr(reference, "evaluate", None)):
        yield False
        return
    _constant_folding._reference_evaluator = _SmallOpsFirst(reference)
    try:
        yield True
    finally:
        _constant_folding._reference_evaluator = reference


def _node_count(model: ir.Model) -> int:
    return sum(1 for _ in ir.traversal.RecursiveGraphIterator(model.graph))
