"""onnxq: an ONNX graph-rewriting quantizer and cross-runtime exporter that checks its output on the target."""

from onnxq.deferred_imports import defer_reference_evaluator, defer_symbolic_shapes

# Before anything imports onnx_ir: sympy (33 MiB) loads only when a dimension expression is evaluated;
# onnx.reference (11 MiB) only when constant folding evaluates an op ``small_ops`` does not.
defer_symbolic_shapes()
defer_reference_evaluator()

from onnxq.api import inspect_model, load, optimize, quantize, save  # noqa: E402
from onnxq.errors import OnnxqError  # noqa: E402

__version__ = "0.1.0"
__all__ = ["OnnxqError", "__version__", "inspect_model", "load", "optimize", "quantize", "save"]
