"""fuse-matmul-add: MatMul + Add → Gemm only where Gemm computes the same thing."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnx.parser
import onnx_ir as ir
import pytest
from onnx import numpy_helper

from onnxq import numerics
from onnxq.pass_api import get_pass

RNG = np.random.default_rng(11)


def build(text: str, **constants: np.ndarray) -> ir.Model:
    proto = onnx.parser.parse_model(text)
    for name, array in constants.items():
        proto.graph.initializer.append(numpy_helper.from_array(array, name))
    onnx.checker.check_model(proto)
    model = ir.serde.deserialize_model(proto)
    get_pass("infer-shapes")()(model)  # as the default pipeline does before fusing
    return model


def histogram(model: ir.Model) -> dict[str, int]:
    nodes = ir.traversal.RecursiveGraphIterator(model.graph)
    return dict(collections.Counter(node.op_type for node in nodes))


def run_fuse(model: ir.Model, *, rewrites: int, rtol: float = 1e-4) -> dict[str, int]:
    feeds = numerics.random_inputs(model)
    expected = numerics.run_model(model, feeds)
    fuse = get_pass("fuse-matmul-add")()
    fuse(model)
    assert fuse.rewrites == rewrites
    onnx.checker.check_model(ir.to_proto(model), full_check=True)
    actual = numerics.run_model(model, feeds)
    assert list(actual) == list(expected)
    _, error = numerics.worst_output_error(expected, actual)
    assert error <= rtol
    return histogram(model)


MATMUL_ADD = """
<ir_version: {ir}, opset_import: ["" : {opset}]>
g ({dtype}[{m},6] x) => ({dtype}[{m},5] y) {{
  p = MatMul(x, w)
  y = Add({lhs}, {rhs})
}}
"""


@pytest.mark.parametrize(
    ("bias_shape", "m", "commuted"),
    [((5,), "N", False), ((1, 5), "N", True), ((3, 5), 3, False), ((3, 1), 3, True), ((), "N", False)],
)
def test_fuses_with_every_unidirectional_bias_shape(bias_shape: tuple[int, ...], m, commuted: bool):
    lhs, rhs = ("c", "p") if commuted else ("p", "c")
    model = build(
        MATMUL_ADD.format(ir=8, opset=13, dtype="float", m=m, lhs=lhs, rhs=rhs),
        w=RNG.standard_normal((6, 5)).astype(np.float32),
        c=np.asarray(RNG.standard_normal(bias_shape), dtype=np.float32),
    )
    assert run_fuse(model, rewrites=1) == {"Gemm": 1}
    gemm = model.graph.node(0)
    assert [v.name for v in gemm.inputs] == ["x", "w", "c"]
    assert model.graph.outputs[0].name == "y"


def test_float16():
    model = build(
        MATMUL_ADD.format(ir=7, opset=11, dtype="float16", m="N", lhs="p", rhs="c"),
        w=RNG.standard_normal((6, 5)).astype(np.float16),
        c=RNG.standard_normal(5).astype(np.float16),
    )
    assert run_fuse(model, rewrites=1, rtol=1e-2) == {"Gemm": 1}


def test_constant_node_weight():
    model = build(
        """
        <ir_version: 10, opset_import: ["" : 18]>
        g (float[N,2] x) => (float[N,3] y) {
          w = Constant<value: tensor = float[2,3] {1.0, -2.0, 0.5, 3.0, -1.5, 0.25}>()
          p = MatMul(x, w)
          y = Add(p, c)
        }
        """,
        c=RNG.standard_normal(3).astype(np.float32),
    )
    assert run_fuse(model, rewrites=1)["Gemm"] == 1


def test_bert_style_rank3_activation_is_not_fused():
    model = build(
        """
        <ir_version: 8, opset_import: ["" : 14]>
        g (float[B,S,6] x) => (float[B,S,5] y) {
          p = MatMul(x, w)
          y = Add(p, c)
        }
        """,
        w=RNG.standard_normal((6, 5)).astype(np.float32),
        c=RNG.standard_normal(5).astype(np.float32),
    )
    assert run_fuse(model, rewrites=0) == {"MatMul": 1, "Add": 1}


def test_unknown_rank_is_not_fused():
    model = build(
        """
        <ir_version: 8, opset_import: ["" : 14]>
        g (float[N,6] x) => (float[N,5] y) {
          p = MatMul(x, w)
          y = Add(p, c)
        }
        """,
        w=RNG.standard_normal((6, 5)).astype(np.float32),
        c=RNG.standard_normal(5).astype(np.float32),
    )
    model.graph.inputs[0].shape = None
    fuse = get_pass("fuse-matmul-add")()
    fuse(model)
    assert fuse.rewrites == 0


def test_non_constant_weight_is_not_fused():
    model = build(
        """
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[4,6] x, float[6,5] w) => (float[4,5] y) {
          p = MatMul(x, w)
          y = Add(p, c)
        }
        """,
        c=RNG.standard_normal(5).astype(np.float32),
    )
    assert run_fuse(model, rewrites=0) == {"MatMul": 1, "Add": 1}


def test_non_constant_bias_is_not_fused():
    model = build(
        """
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[4,6] x, float[5] c) => (float[4,5] y) {
          p = MatMul(x, w)
          y = Add(p, c)
        }
        """,
        w=RNG.standard_normal((6, 5)).astype(np.float32),
    )
    assert run_fuse(model, rewrites=0) == {"MatMul": 1, "Add": 1}


@pytest.mark.parametrize("bias_shape", [(1, 4, 5), (2, 5), (4, 1)])
def test_bias_that_would_broadcast_the_result_is_not_fused(bias_shape: tuple[int, ...]):
    # (1, 4, 5) makes the result rank 3; (2, 5) and (4, 1) would stretch a dynamic M: Add can, Gemm cannot.
    model = build(
        """
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[N,6] x) => (float[N,5] y) {
          p = MatMul(x, w)
          y = Add(p, c)
        }
        """.replace("float[N,5] y", "float y"),
        w=RNG.standard_normal((6, 5)).astype(np.float32),
        c=RNG.standard_normal(bias_shape).astype(np.float32),
    )
    fuse = get_pass("fuse-matmul-add")()
    fuse(model)
    assert fuse.rewrites == 0 and histogram(model) == {"MatMul": 1, "Add": 1}


def test_matmul_output_with_another_consumer_is_not_fused():
    model = build(
        """
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[N,6] x) => (float[N,5] y, float[N,5] r) {
          p = MatMul(x, w)
          y = Add(p, c)
          r = Relu(p)
        }
        """,
        w=RNG.standard_normal((6, 5)).astype(np.float32),
        c=RNG.standard_normal(5).astype(np.float32),
    )
    assert run_fuse(model, rewrites=0) == {"MatMul": 1, "Add": 1, "Relu": 1}


def test_integer_matmul_is_not_fused():
    model = build(
        """
        <ir_version: 8, opset_import: ["" : 13]>
        g (int32[4,6] x) => (int32[4,5] y) {
          p = MatMul(x, w)
          y = Add(p, c)
        }
        """,
        w=RNG.integers(-3, 3, (6, 5)).astype(np.int32),
        c=RNG.integers(-3, 3, 5).astype(np.int32),
    )
    fuse = get_pass("fuse-matmul-add")()
    fuse(model)
    assert fuse.rewrites == 0
