"""Helpers shared by the pass tests: parse-and-check a text model, count its ops."""

from __future__ import annotations

import collections

import onnx
import onnx.parser
import onnx_ir as ir


def load_checked(text: str) -> ir.Model:
    """Parse ``onnx.parser`` text, require it to pass the full checker, return it as IR."""
    proto = onnx.parser.parse_model(text)
    onnx.checker.check_model(proto, full_check=True)
    return ir.serde.deserialize_model(proto)


def op_counts(model: ir.Model) -> collections.Counter:
    """Op histogram of the main graph, Constant nodes left out."""
    return collections.Counter(n.op_type for n in model.graph if n.op_type != "Constant")
