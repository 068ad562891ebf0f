"""Remove nodes that pass their first input through unchanged: Identity and ops that are provably no-ops.

A node ``y = Op(x, ...)`` is removed by making every user of ``y`` use ``x`` instead (in nested subgraphs
too: onnx-ir values are shared objects). When ``y`` is an output of its graph the output's *name* is part
of the model's interface, so ``x`` takes over that name and that place in ``graph.outputs``. That is only
possible when ``x`` is computed by a node of the same graph and is not already a graph output; when ``x`` is
a graph input, an initializer, an outer-scope value or another output, the node stays (an Identity there
is how ONNX spells "output = input").

The no-op tests use static facts only (constant attributes and inputs, inferred dtypes and shapes); run
``infer-shapes`` first so Cast/Reshape/Flatten/Expand see the shapes they need.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import onnx_ir as ir

from onnxq.pass_api import OnnxqPass, register_pass

logger = logging.getLogger(__name__)


def _constant(value: ir.Value | None) -> np.ndarray | None:
    if value is None or value.is_graph_input():
        return None
    try:
        tensor = ir.convenience.get_const_tensor(value)
    except ValueError:  # a malformed Constant node
        return None
    return None if tensor is None else tensor.numpy()


def _is_unused(value: ir.Value) -> bool:
    return not value.uses() and not value.is_graph_output()


def _identity(node: ir.Node, opset: int) -> bool:
    return True


def _dropout(node: ir.Node, opset: int) -> bool:
    """Inference Dropout: mask unused, and training off (or ratio 0, which drops nothing even in training)."""
    if any(not _is_unused(out) for out in node.outputs[1:]):
        return False
    if opset < 7:  # is_test defaults to 0, i.e. training
        return node.attributes.get_int("is_test", 0) == 1 or node.attributes.get_float("ratio", 0.5) == 0.0
    if opset < 12:  # from opset 7 to 11 Dropout is an inference op
        return True
    ratio_value = node.inputs[1] if len(node.inputs) > 1 else None
    training_value = node.inputs[2] if len(node.inputs) > 2 else None
    ratio = _constant(ratio_value) if ratio_value is not None else np.array(0.5)
    if ratio is not None and ratio.size == 1 and float(ratio.reshape(())) == 0.0:
        return True
    if training_value is None:
        return True
    training = _constant(training_value)
    return training is not None and training.size == 1 and not bool(training.reshape(()))


def _cast(node: ir.Node, opset: int) -> bool:
    source = node.inputs[0].dtype
    if node.op_type == "CastLike":
        target = node.inputs[1].dtype if len(node.inputs) > 1 and node.inputs[1] is not None else None
    else:
        to = node.attributes.get_int("to")
        target = ir.DataType(to) if to is not None else None
    return source is not None and source == target


def _reshape(node: ir.Node, opset: int) -> bool:
    """Target shape resolves to the input's shape: each dim equal, copied (0) or the one inferred (-1)."""
    shape = node.inputs[0].shape
    target = _constant(node.inputs[1]) if len(node.inputs) > 1 else None
    if shape is None or target is None or target.ndim != 1 or target.size != len(shape):
        return False
    allowzero = node.attributes.get_int("allowzero", 0) == 1
    inferred = 0
    for dim, want in zip(shape, target.tolist(), strict=True):
        if want == -1:
            inferred += 1
        elif want == 0 and not allowzero:
            continue  # 0 copies the input dim, whatever it is
        elif not (isinstance(dim, int) and dim == want):
            return False
    if inferred and any(dim == 0 for dim in shape):
        return False  # -1 beside a zero-sized dim is ambiguous
    return inferred <= 1  # one -1 with every other dim equal must resolve to the remaining input dim


def _transpose(node: ir.Node, opset: int) -> bool:
    perm = node.attributes.get_ints("perm")
    if perm is not None:
        return list(perm) == list(range(len(perm)))
    shape = node.inputs[0].shape
    return shape is not None and len(shape) <= 1  # no perm reverses the dims


def _expand(node: ir.Node, opset: int) -> bool:
    """Broadcast target adds no dims and stretches none: each target dim is 1 or the input's static dim."""
    shape = node.inputs[0].shape
    target = _constant(node.inputs[1]) if len(node.inputs) > 1 else None
    if shape is None or target is None or target.ndim != 1 or target.size > len(shape):
        return False
    trailing = list(shape)[len(shape) - target.size:]
    pairs = zip(trailing, target.tolist(), strict=True)
    return all(want == 1 or (isinstance(dim, int) and dim == want) for dim, want in pairs)


def _flatten(node: ir.Node, opset: int) -> bool:
    """Flatten of a rank-2 input to [d0, d1] again: axis 1, or axis 0 / 2 with a static 1 that moves."""
    shape = node.inputs[0].shape
    if shape is None or len(shape) != 2:
        return False
    axis = node.attributes.get_int("axis", 1)
    axis = axis + 2 if axis < 0 else axis
    return axis == 1 or (axis == 0 and shape[0] == 1) or (axis == 2 and shape[1] == 1)


_NO_OP_TESTS: dict[str, Callable[[ir.Node, int], bool]] = {
    "Identity": _identity,
    "Dropout": _dropout,
    "Cast": _cast,
    "CastLike": _cast,
    "Reshape": _reshape,
    "Transpose": _transpose,
    "Expand": _expand,
    "Flatten": _flatten,
}


def _merge_value_info(keep: ir.Value, drop: ir.Value) -> None:
    """Give ``keep`` what ``drop`` knew that ``keep`` did not (same tensor, so same type and shape)."""
    if keep.type is None:
        keep.type = drop.type
    if keep.shape is None and drop.shape is not None:
        keep.shape = drop.shape


def _bypass(node: ir.Node) -> bool:
    """Route the users of the node's output to its first input and remove it; False if it must stay."""
    source, result = node.inputs[0], node.outputs[0]
    graph = node.graph
    if source is None or graph is None:
        return False
    is_output = result.is_graph_output()
    if is_output:
        producer = source.producer()
        if producer is None or producer.graph is not graph or source.is_graph_output():
            logger.debug("keeping %s '%s': its input cannot take the output's name", node.op_type, node.name)
            return False
    _merge_value_info(source, result)
    output_name = result.name
    ir.convenience.replace_all_uses_with(result, source, replace_graph_outputs=True)
    if is_output:
        source.name = output_name  # the model keeps its output names
    graph.remove(node, safe=True)
    return True


@register_pass
class EliminateIdentityPass(OnnxqPass):
    """Rules (default-domain nodes, in every graph, subgraph and function):

    1. ``Identity(x)`` → ``x``.
    2. ``Dropout(x)`` → ``x`` when its mask output is unused and it is in inference mode (opset 7–11;
       opset 12+ with ``training_mode`` absent or constant false) or its ratio is constant 0.
    3. ``Cast(x, to=T)`` / ``CastLike(x, like)`` → ``x`` when x already has dtype T.
    4. ``Reshape(x, shape)`` → ``x`` when the constant target resolves to x's shape (equal dims, 0 copying a
       dim unless allowzero=1, at most one -1 standing for the remaining dim).
    5. ``Transpose(x, perm)`` → ``x`` when perm is the identity permutation.
    6. ``Expand(x, shape)`` → ``x`` when the constant target neither adds nor stretches a dim.
    7. ``Flatten(x)`` → ``x`` when x is 2-D and the result has the same shape.

    A removed node whose output is a graph output hands its output name to its input (the model's
    output names never change); where that is impossible the node stays.
    """

    name = "eliminate-identity"
    summary = "remove Identity and no-op Dropout, Cast, Reshape, Transpose, Expand, Flatten"

    def apply(self, model: ir.Model) -> int:
        graphs: list[ir.Graph | ir.Function] = [model.graph, *model.functions.values()]
        removed = 0
        for graph in graphs:
            opset = graph.opset_imports.get("", model.opset_imports.get("", 1))
            for node in list(ir.traversal.RecursiveGraphIterator(graph)):
                if node.domain not in ("", "ai.onnx") or not node.inputs or not node.outputs:
                    continue
                is_no_op = _NO_OP_TESTS.get(node.op_type)
                if is_no_op is not None and is_no_op(node, opset) and _bypass(node):
                    logger.debug("removed no-op %s '%s'", node.op_type, node.name)
                    removed += 1
        return removed
