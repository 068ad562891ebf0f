"""Numpy evaluation of the small layout and shape ops that exporters compute pads and shapes with.

Constant folding (``passes/fold_constants``, onnxscript's folder) evaluates a constant node with
``onnx.reference``, whose op library costs 11 MiB of resident memory once imported, for the rest of the
run (onnxq defers the import: ``deferred_imports``). The nodes it meets in exported models are mostly
shape arithmetic on a few int64 values: TF-style "same" padding (EfficientNet-Lite0: ConstantOfShape,
Concat, Reshape, Slice, Transpose, Identity), shape casts (PP-OCR rec). Those are evaluated here, with the
semantics of the ONNX operators, when the folder asks (``passes/fold_constants``); anything else, or
anything larger than ``MAX_ELEMENTS``, goes on to ``onnx.reference``.

``evaluate`` returns None where a case is outside what is implemented (an attribute it does not know, an
old-opset form, a Cast whose result the standard leaves undefined), never a guess.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

#: Inputs and outputs up to this many elements are evaluated here (shape arithmetic is a few values).
MAX_ELEMENTS = 1 << 16

#: Cast between these types is exact numpy ``astype`` (floats to integers only when finite and in range).
_CASTABLE = frozenset({
    ir.DataType.BOOL, ir.DataType.INT8, ir.DataType.INT16, ir.DataType.INT32, ir.DataType.INT64,
    ir.DataType.UINT8, ir.DataType.UINT16, ir.DataType.UINT32, ir.DataType.UINT64,
    ir.DataType.FLOAT16, ir.DataType.FLOAT, ir.DataType.DOUBLE,
})

Arrays = Sequence[np.ndarray | None]
#: attribute name -> value as onnxscript's folder passes it: ints, lists of ints, ``onnx.TensorProto``
Attributes = Mapping[str, Any]


def _identity(a: Attributes, x: Arrays) -> np.ndarray:
    return x[0].copy()


def _cast(a: Attributes, x: Arrays) -> np.ndarray | None:
    source, target = ir.DataType.from_numpy(x[0].dtype), ir.DataType(a["to"])
    if source not in _CASTABLE or target not in _CASTABLE:
        return None
    dtype = target.numpy()
    if source.is_floating_point() and not target.is_floating_point() and target != ir.DataType.BOOL:
        info = np.iinfo(dtype)
        finite = np.all(np.isfinite(x[0]))
        if not finite or x[0].size and (x[0].min() <= info.min - 1 or x[0].max() >= info.max + 1):
            return None  # the standard leaves this undefined
    return x[0].astype(dtype)


def _reshape(a: Attributes, x: Arrays) -> np.ndarray | None:
    shape = [int(d) for d in x[1].reshape(-1)]
    if not a.get("allowzero", 0):
        shape = [x[0].shape[i] if d == 0 and i < x[0].ndim else d for i, d in enumerate(shape)]
    return x[0].reshape(shape)


def _transpose(a: Attributes, x: Arrays) -> np.ndarray:
    perm = a.get("perm")
    return np.transpose(x[0], None if perm is None else [int(p) for p in perm])


def _concat(a: Attributes, x: Arrays) -> np.ndarray | None:
    if any(array is None for array in x) or len({array.dtype for array in x}) != 1:
        return None
    return np.concatenate(list(x), axis=int(a["axis"]))


def _slice(a: Attributes, x: Arrays) -> np.ndarray | None:
    if len(x) < 3 or x[1] is None or x[2] is None:
        return None
    data, starts, ends = x[0], x[1].reshape(-1), x[2].reshape(-1)
    axes = x[3].reshape(-1) if len(x) > 3 and x[3] is not None else np.arange(len(starts))
    steps = x[4].reshape(-1) if len(x) > 4 and x[4] is not None else np.ones(len(starts), dtype=np.int64)
    if not len(starts) == len(ends) == len(axes) == len(steps) or np.any(steps == 0):
        return None
    index = [slice(None)] * data.ndim
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        # Python's slice clamps and wraps exactly as the operator's definition does
        index[int(axis)] = slice(int(start), int(end), int(step))
    return data[tuple(index)]


def _constant_of_shape(a: Attributes, x: Arrays) -> np.ndarray:
    value = a.get("value")
    fill = np.zeros(1, dtype=np.float32) if value is None else onnx.numpy_helper.to_array(value).reshape(-1)
    return np.full([int(d) for d in x[0].reshape(-1)], fill[0], dtype=fill.dtype)


def _axes(a: Attributes, x: Arrays) -> list[int] | None:
    if "axes" in a:  # opset < 13
        return [int(axis) for axis in a["axes"]]
    return None if len(x) < 2 or x[1] is None else [int(axis) for axis in x[1].reshape(-1)]


def _unsqueeze(a: Attributes, x: Arrays) -> np.ndarray | None:
    axes = _axes(a, x)
    if not axes:
        return None
    rank = x[0].ndim + len(axes)
    return np.expand_dims(x[0], tuple(sorted(axis % rank for axis in axes)))


def _squeeze(a: Attributes, x: Arrays) -> np.ndarray:
    axes = _axes(a, x)
    return np.squeeze(x[0]) if axes is None else np.squeeze(x[0], tuple(axis % x[0].ndim for axis in axes))


def _gather(a: Attributes, x: Arrays) -> np.ndarray:
    return np.take(x[0], x[1], axis=int(a.get("axis", 0)))


#: op -> (evaluator, the attributes it understands)
EVALUATORS: dict[str, tuple[Callable[[Attributes, Arrays], np.ndarray | None], frozenset[str]]] = {
    "Identity": (_identity, frozenset()),
    "Cast": (_cast, frozenset({"to"})),
    "Reshape": (_reshape, frozenset({"allowzero"})),
    "Transpose": (_transpose, frozenset({"perm"})),
    "Concat": (_concat, frozenset({"axis"})),
    "Slice": (_slice, frozenset()),
    "ConstantOfShape": (_constant_of_shape, frozenset({"value"})),
    "Unsqueeze": (_unsqueeze, frozenset({"axes"})),
    "Squeeze": (_squeeze, frozenset({"axes"})),
    "Gather": (_gather, frozenset({"axis"})),
}


def evaluate(domain: str, op_type: str, inputs: Arrays, attributes: Attributes) -> np.ndarray | None:
    """The single output of the node ``op_type`` on constant ``inputs`` (numpy arrays, None for an omitted
    optional input), or None where this module does not implement the case, an input is larger than
    ``MAX_ELEMENTS`` or the node is invalid (the caller then asks ``onnx.reference``)."""
    if domain not in ("", "ai.onnx") or op_type not in EVALUATORS:
        return None
    evaluator, known = EVALUATORS[op_type]
    if not inputs or not isinstance(inputs[0], np.ndarray) or set(attributes) - known:
        return None
    if any(x is not None and (not isinstance(x, np.ndarray) or x.size > MAX_ELEMENTS) for x in inputs):
        return None
    try:
        result = evaluator(attributes, inputs)
    except (ValueError, IndexError, TypeError, OverflowError, KeyError):
        return None  # an invalid node: onnx.reference and the checker have their say
    if result is None:
        return None
    result = np.asarray(result)  # np.take with a 0-d index gives a numpy scalar
    if result.size > MAX_ELEMENTS:
        return None
    return result if result.flags.c_contiguous else result.copy()
