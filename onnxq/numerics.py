"""Running a model through ONNX Runtime on random or given inputs, and comparing outputs.

Used by ``--verify`` (did a pass change what the model computes?) and by the tests. Symbolic dims take
the value given in ``shapes`` (per input) or ``dim_values`` (per dim name), else 1 for the first axis
and 8 elsewhere, consistently for a dim name shared by several inputs.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx_ir as ir

from onnxq import runtime_compat
from onnxq.errors import OptionError

Feeds = dict[str, np.ndarray]

#: A random verification feed may hold at most this many elements (1 GiB of float32).
MAX_FEED_ELEMENTS = 1 << 28


def input_shape(value: ir.Value, shapes: Mapping[str, tuple[int, ...]], dim_values: dict[str, int]) -> tuple[int, ...]:
    if value.name in shapes:
        return tuple(shapes[value.name])
    if value.shape is None:
        raise OptionError(f"input '{value.name}' has no shape; give it with --input-shape {value.name}=...")
    dims = []
    for axis, dim in enumerate(value.shape):
        if isinstance(dim, int):
            dims.append(dim)
            continue
        key = str(dim.value) if dim.value is not None else f"{value.name}:{axis}"
        dims.append(dim_values.setdefault(key, 1 if axis == 0 else 8))
    return tuple(dims)


def random_inputs(model: ir.Model, shapes: Mapping[str, tuple[int, ...]] | None = None, seed: int = 0) -> Feeds:
    """Deterministic random feeds: floats ~ N(0, 1), integers in [0, 8), booleans fair."""
    rng = np.random.default_rng(seed)
    shapes = dict(shapes or {})
    dim_values: dict[str, int] = {}
    initializer_names = set(model.graph.initializers)
    feeds: Feeds = {}
    for value in model.graph.inputs:
        if value.name in initializer_names:
            continue
        shape = input_shape(value, shapes, dim_values)
        if int(np.prod(shape, dtype=np.float64)) > MAX_FEED_ELEMENTS:
            raise OptionError(
                f"input '{value.name}' of shape {list(shape)} is too large to verify with random data "
                f"(> {MAX_FEED_ELEMENTS} elements); give smaller dims with --input-shape or --verify-data"
            )
        dtype = value.dtype.numpy() if value.dtype is not None else np.float32
        if np.issubdtype(dtype, np.floating):
            feeds[value.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype == np.bool_:
            feeds[value.name] = rng.integers(0, 2, shape).astype(bool)
        else:
            feeds[value.name] = rng.integers(0, 8, shape).astype(dtype)
    return feeds


def model_bytes(model: ir.Model) -> bytes:
    """Serialize for an in-memory ORT session, at an IR version the installed ORT loads."""
    proto = ir.to_proto(model)
    proto.ir_version = min(proto.ir_version, runtime_compat.target_ir_version())
    return proto.SerializeToString()


def make_session(model: ir.Model | bytes | str, *, optimize: bool = False, threads: int = 0):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    source = model_bytes(model) if isinstance(model, ir.Model) else model
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def run_model(model: ir.Model | bytes | str, feeds: Feeds) -> dict[str, np.ndarray]:
    session = make_session(model)
    return run_owned(session, feeds)


def run_owned(session, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run an ORT session; its outputs by name, copied out of the session's memory.

    ONNX Runtime hands back numpy views of its own output tensors, and each view keeps the session's whole
    memory arena alive, after the session itself is gone, for as long as the view lives. An output kept
    for later (the FP32 reference outputs of ``onnxq quantize``, kept through the fall-back search and the
    speed check) then holds that arena: EfficientNet-Lite0's reference session left 8 MiB resident for the
    rest of the run. A copy owns just its data. Sequence and map outputs (lists, dicts) are Python's own."""
    names = [o.name for o in session.get_outputs()]
    outputs = session.run(names, dict(feeds))
    return {name: value.copy() if isinstance(value, np.ndarray) and value.base is not None else value
            for name, value in zip(names, outputs, strict=True)}


def relative_error(reference: np.ndarray, actual: np.ndarray) -> float:
    """max |a - r| / max |r| (with a floor so all-zero references compare absolutely)."""
    reference = np.asarray(reference, dtype=np.float64)
    actual = np.asarray(actual, dtype=np.float64)
    if reference.shape != actual.shape:
        return float("inf")
    if reference.size == 0:
        return 0.0
    both_nan = np.isnan(reference) & np.isnan(actual)
    diff = np.where(both_nan, 0.0, np.abs(actual - reference))
    if np.isnan(diff).any():
        return float("inf")
    scale = max(float(np.max(np.abs(np.nan_to_num(reference)))), 1e-6)
    return float(np.max(diff)) / scale


def worst_output_error(reference: Mapping[str, np.ndarray], actual: Mapping[str, np.ndarray]) -> tuple[str, float]:
    worst = ("", 0.0)
    for name, ref in reference.items():
        if name not in actual:
            return name, float("inf")
        err = relative_error(ref, actual[name])
        if err > worst[1] or not worst[0]:
            worst = (name, err)
    return worst
