"""ONNX shape and type inference, merged back into the IR.

Runs onnx's C++ inference on a weightless copy (onnx-ir's ``ShapeInferencePass``), so it is cheap for
models with gigabytes of weights. Shape-dependent rewrites (no-op Reshape, MatMul→Gemm) need it first.
"""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes.common import ShapeInferencePass

from onnxq.pass_api import OnnxqPass, register_pass


@register_pass
class InferShapesPass(OnnxqPass):
    """Rules:

    1. Infer types and shapes of every value with ``onnx.shape_inference`` (data propagation on).
    2. Keep existing information where inference knows less; on failure leave the model unchanged.
    """

    name = "infer-shapes"
    summary = "infer value types and shapes with onnx shape inference"

    def apply(self, model: ir.Model) -> int:
        before = _known_shapes(model)
        ShapeInferencePass(check_type=False, strict_mode=False, data_prop=True)(model)
        return max(0, _known_shapes(model) - before)


def _known_shapes(model: ir.Model) -> int:
    return sum(
        1 for node in ir.traversal.RecursiveGraphIterator(model.graph) for v in node.outputs if v.shape is not None
    )
