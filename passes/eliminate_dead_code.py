"""Dead-code elimination: nodes whose outputs reach no graph output, unused initializers and opsets."""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass, RemoveUnusedOpsetsPass

from onnxq.pass_api import OnnxqPass, register_pass


@register_pass
class EliminateDeadCodePass(OnnxqPass):
    """Rules:

    1. Remove nodes none of whose outputs is used (recursively), in every graph and subgraph.
    2. Remove initializers no node or output uses (also when they are listed as graph inputs only
       for old IR versions: those stay, since a caller may feed them).
    3. Remove opset imports no node uses.
    """

    name = "dce"
    summary = "remove unused nodes, initializers and opset imports"

    def apply(self, model: ir.Model) -> int:
        before = _size(model)
        RemoveUnusedNodesPass()(model)
        RemoveUnusedOpsetsPass()(model)
        return max(0, before - _size(model))


def _size(model: ir.Model) -> int:
    nodes = sum(1 for _ in ir.traversal.RecursiveGraphIterator(model.graph))
    return nodes + len(model.graph.initializers) + len(model.opset_imports)
