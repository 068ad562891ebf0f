"""Topological sort of every graph, so the written model is valid ONNX whatever order exporters used."""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes.common import TopologicalSortPass

from onnxq.pass_api import OnnxqPass, register_pass


@register_pass
class TopoSortPass(OnnxqPass):
    """Rules:

    1. Order nodes so every node follows the producers of its inputs (stable: already-sorted graphs keep
       their order, which keeps outputs byte-identical across runs).
    """

    name = "topo-sort"
    summary = "order nodes topologically (stable)"

    def apply(self, model: ir.Model) -> int:
        before = [id(n) for n in model.graph]
        TopologicalSortPass()(model)
        return int(before != [id(n) for n in model.graph])
