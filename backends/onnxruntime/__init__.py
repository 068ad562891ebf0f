"""ONNX Runtime CPU backend: capability table and runner (the reference target)."""

from __future__ import annotations

from onnxq.backends.base import TIMING_THREADS, Backend
from onnxq.backends.capability import CapabilityTable
from onnxq.backends.onnxruntime.table import build_table


class OnnxRuntimeBackend(Backend):
    name = "ort"
    variants = {
        "x86": "x86-64 CPU: uint8 activations, int8 per-channel weights (U8S8)",
        "arm64": "arm64 CPU: int8 activations, int8 per-channel weights (S8S8)",
    }

    def _table_impl(self, variant: str) -> CapabilityTable:
        return build_table(variant)

    def _session_impl(self, model: bytes | str, variant: str, *, quick: bool, threads: int = 0):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.graph_optimization_level = (
            ort.GraphOptimizationLevel.ORT_DISABLE_ALL if quick else ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        )
        options.intra_op_num_threads = threads  # 0: ORT's default, one per core
        return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])

    def _timing_session_impl(self, model: bytes | str, variant: str):
        return self._session_impl(model, variant, quick=False, threads=TIMING_THREADS)
