"""QNN benchmark: onnxq against ONNX Runtime's own QNN quantization recipe, on the HTP simulator.

    python -m tools.bench.qnn [--quick] [--models a,b] [--eval-samples 16] [--json out.json] [--update-md]

Same zoo models, same calibration samples as the CPU benchmark (``tools.bench``), whose machinery it
reuses (zoo preparation, measured child processes, fidelity metrics, machine facts). One module, one job:

* ``ort_recipe`` — child: ORT's documented QNN recipe (``qnn_preprocess_model``, ``get_qnn_qdq_config``,
                   ``quantize``).
* ``evaluate``   — child: one quantized model on the simulator: strict session (full offload), node
                   placement, fidelity to FP32 on eval samples.
* ``runner``     — the loop: models × tools → one JSON-able result.
* ``render``     — the per-model tables, reading and findings (console and BENCHMARKS.md section).
"""
