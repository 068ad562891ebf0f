"""ONNX Runtime CPU backend: capability table and runner (the reference target)."""

from __future__ import annotations

import logging
from pathlib import Path

from onnxq.backends.base import TIMING_THREADS, Backend
from onnxq.backends.capability import CapabilityTable
from onnxq.backends.onnxruntime.table import build_table

logger = logging.getLogger(__name__)

#: Tensors of an offline-optimized model from this size on go to its external data file, which sessions map.
OFFLINE_EXTERNAL_MIN_BYTES = 1024


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

        levels = ort.GraphOptimizationLevel
        level = levels.ORT_DISABLE_ALL if quick else levels.ORT_ENABLE_ALL
        return ort.InferenceSession(model, _options(level, threads), providers=["CPUExecutionProvider"])

    def _timing_session_impl(self, model: bytes | str, variant: str, *, optimized: bool):
        import onnxruntime as ort

        # ORT's offline mode: a model it optimized and wrote is loaded with its optimizations off.
        levels = ort.GraphOptimizationLevel
        level = levels.ORT_DISABLE_ALL if optimized else levels.ORT_ENABLE_ALL
        options = _options(level, TIMING_THREADS)
        return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])

    def _optimize_for_timing_impl(self, model: str, destination: str, variant: str) -> str | None:
        import onnxruntime as ort

        options = _options(ort.GraphOptimizationLevel.ORT_ENABLE_ALL, TIMING_THREADS)
        options.log_severity_level = 4  # a model ORT cannot write is timed as it is: no error to print
        options.optimized_model_filepath = destination
        options.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                         Path(destination).with_suffix(".data").name)
        options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes",
                                         str(OFFLINE_EXTERNAL_MIN_BYTES))
        try:
            ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        except Exception as error:  # noqa: BLE001 - ORT's own exception types; the original is timed instead
            logger.info("ONNX Runtime did not write an optimized copy of %s (%s)", model,
                        str(error).splitlines()[0] if str(error) else type(error).__name__)
            return None
        return destination if Path(destination).is_file() else None


def _options(level, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = level
    options.intra_op_num_threads = threads  # 0: ORT's default, one per core
    return options
