"""onnxq: an ONNX graph-rewriting quantizer and cross-runtime exporter that checks its output on the target."""

from onnxq.api import inspect_model, load, optimize, quantize, save
from onnxq.errors import OnnxqError

__version__ = "0.1.0"
__all__ = ["OnnxqError", "__version__", "inspect_model", "load", "optimize", "quantize", "save"]
