"""Qualcomm QNN backend: the HTP (Hexagon) of Snapdragon SoCs, through onnxruntime-qnn.

``qnn:<soc>`` targets (``qnn:sm8550``, ``qnn:43``, ``qnn:v73``) get the capability table of their HTP arch
(``table.py``, data from the probe). Verification rounds run the real QNN HTP backend (simulated on Linux
x86-64); quick sensitivity probes run the same QDQ model on ORT's CPU EP, which agrees with the HTP to about
one LSB, because every simulator session recompiles the graph. Export builds EPContext models
(``export.py``). onnxruntime-qnn is imported lazily: without it, the table still prints and quantization
for QNN stops with a message that says what to install.
"""

from __future__ import annotations

from onnxq.backends.base import Backend
from onnxq.backends.capability import CapabilityTable
from onnxq.backends.qnn import socs


class QnnBackend(Backend):
    name = "qnn"
    variants = socs.variants()
    simulated = True  # the HTP runs in simulation on this machine

    def check_variant(self, variant: str) -> str:
        return socs.parse_soc(variant).name

    def _table_impl(self, variant: str) -> CapabilityTable:
        from onnxq.backends.qnn.table import build_table

        return build_table(socs.parse_soc(variant))

    def _session_impl(self, model: bytes | str, variant: str, *, quick: bool):
        if quick:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.log_severity_level = 3
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        from onnxq.backends.qnn import runtime

        with runtime.captured_stderr():
            return runtime.session(model, str(socs.parse_soc(variant).soc_model), strict=False)

    def placement(self, model: bytes | str, *, variant: str = "", total_nodes: int = 0):
        from onnxq.backends.qnn import runtime

        return runtime.placement(model, str(socs.parse_soc(variant).soc_model), total_nodes)

    exportable = True

    def export(self, model_path, out_dir, *, variant: str = "", allow_cpu_fallback: bool = False, feeds=None):
        from pathlib import Path

        from onnxq.backends.qnn.export import export

        return export(Path(model_path), socs.parse_soc(variant), Path(out_dir),
                      allow_cpu_fallback=allow_cpu_fallback, feeds=feeds)
