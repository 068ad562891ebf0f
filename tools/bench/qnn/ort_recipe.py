"""Child process: ONNX Runtime's own recipe for QNN, as its QNN execution-provider documentation gives it.

    python -m tools.bench.qnn.ort_recipe MODEL CALIB.npz OUT.onnx --batch-axes JSON --result R.json

The recipe (``onnxruntime.quantization.execution_providers.qnn``), with its documented defaults:

1. Static shapes first (QNN compiles static graphs). Inputs with a dynamic dim get the shape of the first
   calibration feed — the shape onnxq fixes too — through ``qnn_preprocess_model(...,
   dynamic_input_shapes=[(name, "1,72"), ...])``, which also runs ORT's QNN fusions (Gelu, LpNormalization,
   SpaceToDepth). Models without dynamic inputs get the plain documented call ``qnn_preprocess_model(IN,
   OUT)``, and the model it writes is used only where it returns True ("model changed").
2. ``get_qnn_qdq_config(model, reader)``: defaults — MinMax, QUInt8 activations, QUInt8 weights,
   per-tensor weights (``per_channel=False``).
3. ``quantize(model, OUT, config)``.

Where the pre-processor crashes (it does on some third-party files), the crash is recorded and the recipe
goes on with the original model, its dynamic dims fixed by the functions behind ORT's
``python -m onnxruntime.tools.make_dynamic_shape_fixed`` — what a user following the docs ends up doing.
Any other crash is the result (the parent records it); nothing here works around a failing step.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from tools.bench.child import run_quantizer_child

#: the documented defaults of get_qnn_qdq_config, written out so the result records them
SETTINGS = {"calibrate_method": "MinMax", "activation_type": "QUInt8", "weight_type": "QUInt8",
            "per_channel": False}


def first_feed(calib: Path, batch_axes: dict) -> dict:
    from models.artifacts import batches, read_samples

    return next(iter(batches(read_samples(calib), batch_axes, batch_size=1)))


def dynamic_inputs(model_path: Path, feed: dict) -> dict[str, tuple[int, ...]]:
    """Graph inputs with a dim that is not a fixed number -> the shape of that input in ``feed``."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    initializers = {tensor.name for tensor in graph.initializer}
    found = {}
    for value in graph.input:
        if value.name in initializers or value.name not in feed:
            continue
        dims = value.type.tensor_type.shape.dim
        if any(not dim.HasField("dim_value") for dim in dims):
            found[value.name] = tuple(int(n) for n in feed[value.name].shape)
    return found


def fix_shapes_without_preprocess(model: Path, shapes: dict[str, tuple[int, ...]], out: Path) -> None:
    """What ``python -m onnxruntime.tools.make_dynamic_shape_fixed --input_name N --input_shape S`` does."""
    import onnx
    from onnxruntime.tools.onnx_model_utils import fix_output_shapes, make_input_shape_fixed

    proto = onnx.load(str(model))
    for name, shape in shapes.items():
        make_input_shape_fixed(proto.graph, name, list(shape))
    fix_output_shapes(proto)
    onnx.save(proto, str(out))


def quantize(model: Path, calib: Path, out: Path, batch_axes: dict, precision: str) -> dict:
    import onnxruntime
    from onnxruntime.quantization import QuantType, quantize as ort_quantize
    from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config, qnn_preprocess_model

    from tools.bench.ort_quantize import _reader

    if precision != "a8w8":
        raise SystemExit(f"ORT QNN recipe child: only a8w8 (the documented default) is benchmarked, not {precision}")
    result: dict = {"onnxruntime": onnxruntime.__version__, "settings": SETTINGS, "notes": []}
    shapes = dynamic_inputs(model, first_feed(calib, batch_axes))
    result["fixed_shapes"] = {name: list(shape) for name, shape in shapes.items()}
    with tempfile.TemporaryDirectory() as scratch:
        source, prepared = model, Path(scratch) / "preprocessed.onnx"
        start = time.perf_counter()
        try:
            dynamic = [(name, ",".join(map(str, shape))) for name, shape in shapes.items()] or None
            changed = qnn_preprocess_model(str(model), str(prepared), dynamic_input_shapes=dynamic)
            result["pre_process"] = "ok (model changed)" if changed else "ok (nothing to change)"
            source = prepared if changed else model
        except Exception as exc:  # noqa: BLE001 - any crash of the pre-processor is the finding
            lines = str(exc).strip().splitlines() or [""]
            result["pre_process"] = f"pre-process failed: {type(exc).__name__}: {lines[0][:200]}".rstrip()
            result["notes"].append(result["pre_process"])
            if shapes:
                fix_shapes_without_preprocess(model, shapes, prepared)
                source = prepared
                result["notes"].append("dynamic dims fixed with onnxruntime.tools.make_dynamic_shape_fixed's helpers")
        result["pre_process_s"] = time.perf_counter() - start
        start = time.perf_counter()
        config = get_qnn_qdq_config(str(source), _reader(calib, batch_axes),
                                    activation_type=QuantType.QUInt8, weight_type=QuantType.QUInt8)
        ort_quantize(str(source), str(out), config)
        result["quantize_s"] = time.perf_counter() - start
    return result


def main(argv: list[str] | None = None) -> int:
    return run_quantizer_child(__doc__.splitlines()[0], quantize, argv)


if __name__ == "__main__":
    sys.exit(main())
