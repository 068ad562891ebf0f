"""onnxq: an ONNX graph-rewriting quantizer and cross-runtime exporter that checks its output on the target."""

from onnxq.deferred_imports import defer_symbolic_shapes

defer_symbolic_shapes()  # before anything imports onnx_ir: sympy's 33 MiB only when a dim expression is evaluated

from onnxq.api import inspect_model, load, optimize, quantize, save
from onnxq.errors import OnnxqError

__version__ = "0.1.0"
__all__ = ["OnnxqError", "__version__", "inspect_model", "load", "optimize", "quantize", "save"]
