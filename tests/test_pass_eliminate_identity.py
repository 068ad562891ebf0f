"""eliminate-identity: Identity and no-op Dropout, Cast, Reshape, Transpose, Expand, Flatten go."""

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

RNG = np.random.default_rng(3)


def build(text: str, check: bool = True, **constants: np.ndarray) -> ir.Model:
    proto = onnx.parser.parse_model(text)
    for name, array in constants.items():
        proto.graph.initializer.append(numpy_helper.from_array(array, name))
    if check:
        onnx.checker.check_model(proto)
    model = ir.serde.deserialize_model(proto)
    get_pass("infer-shapes")()(model)
    return model


def histogram(model: ir.Model) -> dict[str, int]:
    nodes = ir.traversal.RecursiveGraphIterator(model.graph)
    return dict(collections.Counter(node.op_type for node in nodes))


def run_eliminate(model: ir.Model, *, removed: int, feeds: numerics.Feeds | None = None) -> dict[str, int]:
    """Run the pass; check count, validity, unchanged input/output names and numerics."""
    feeds = feeds if feeds is not None else numerics.random_inputs(model)
    names = ([v.name for v in model.graph.inputs], [v.name for v in model.graph.outputs])
    expected = numerics.run_model(model, feeds)
    eliminate = get_pass("eliminate-identity")()
    eliminate(model)
    assert eliminate.rewrites == removed
    onnx.checker.check_model(ir.to_proto(model), full_check=True)
    assert names == ([v.name for v in model.graph.inputs], [v.name for v in model.graph.outputs])
    actual = numerics.run_model(model, feeds)
    assert list(actual) == list(expected)
    for name, value in expected.items():
        np.testing.assert_array_equal(actual[name], value)
    return histogram(model)


def one_op(op: str, x_type: str, y_type: str, opset: int = 13, extra: str = "") -> str:
    """A model computing ``y = Sigmoid(Op(Relu(x), ...))``: the op sits between two computed values."""
    return f"""
    <ir_version: 8, opset_import: ["" : {opset}]>
    g ({x_type} x) => ({y_type} y) {{
      r = Relu(x)
      {extra}
      o = {op}
      y = Sigmoid(o)
    }}
    """


def test_identity_between_nodes():
    model = build(one_op("Identity(r)", "float[N,4]", "float[N,4]"))
    assert run_eliminate(model, removed=1) == {"Relu": 1, "Sigmoid": 1}


def test_identity_producing_a_graph_output_keeps_the_output_name():
    model = build(
        """
        <ir_version: 7, opset_import: ["" : 11]>
        g (float[N,4] x) => (float[N,4] y) {
          r = Relu(x)
          y = Identity(r)
        }
        """
    )
    assert run_eliminate(model, removed=1) == {"Relu": 1}
    assert model.graph.node(0).outputs[0] is model.graph.outputs[0]
    assert ir.to_proto(model).graph.output[0].name == "y"


@pytest.mark.parametrize(
    ("signature", "body"),
    [
        ("(float[4] x) => (float[4] y)", "y = Identity(x)"),  # input straight to output
        ("(float[4] x) => (float[4] y)", "y = Identity(k)"),  # initializer to output
        ("(float[4] x) => (float[4] r, float[4] y)", "r = Relu(x)\n y = Identity(r)"),  # already an output
    ],
)
def test_identity_that_must_stay(signature: str, body: str):
    model = build(
        f'<ir_version: 8, opset_import: ["" : 13]>\ng {signature} {{\n {body}\n}}',
        k=RNG.standard_normal(4).astype(np.float32),
    )
    assert run_eliminate(model, removed=0)["Identity"] == 1


def test_dropout_opset11_inference():
    model = build(one_op("Dropout<ratio: float = 0.3>(r)", "float[N,4]", "float[N,4]", opset=11))
    assert run_eliminate(model, removed=1) == {"Relu": 1, "Sigmoid": 1}


HALF = "ratio = Constant<value: tensor = float {0.5}>()"
ZERO = "zero = Constant<value: tensor = float {0.0}>()"


@pytest.mark.parametrize(
    ("inputs", "extra", "removed"),
    [
        ("r", "", 1),  # training_mode absent
        ("r, ratio", HALF, 1),
        ("r, ratio, off", f"{HALF}\n off = Constant<value: tensor = bool {{0}}>()", 1),
        ("r, zero, on", f"{ZERO}\n on = Constant<value: tensor = bool {{1}}>()", 1),  # ratio 0 drops nothing
        ("r, ratio, on", f"{HALF}\n on = Constant<value: tensor = bool {{1}}>()", 0),
    ],
)
def test_dropout_opset13(inputs: str, extra: str, removed: int):
    model = build(one_op(f"Dropout({inputs})", "float[2,4]", "float[2,4]", extra=extra))
    eliminate = get_pass("eliminate-identity")()
    if removed:
        assert "Dropout" not in run_eliminate(model, removed=removed)
    else:
        eliminate(model)
        assert eliminate.rewrites == 0 and "Dropout" in histogram(model)


def test_dropout_whose_mask_is_used_stays():
    model = build(
        """
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[N,4] x) => (float[N,4] y, bool[N,4] m) {
          r = Relu(x)
          y, m = Dropout(r)
        }
        """
    )
    assert run_eliminate(model, removed=0)["Dropout"] == 1


def test_cast_to_same_type_is_removed_other_cast_stays():
    model = build(one_op("Cast<to: int = 1>(r)", "float[N,4]", "float[N,4]"))
    assert run_eliminate(model, removed=1) == {"Relu": 1, "Sigmoid": 1}
    model = build(one_op("Cast<to: int = 10>(r)", "float[N,4]", "float16[N,4]"))
    assert run_eliminate(model, removed=0)["Cast"] == 1


def test_castlike_same_type():
    model = build(one_op("CastLike(r, x)", "float[N,4]", "float[N,4]", opset=15))
    assert run_eliminate(model, removed=1) == {"Relu": 1, "Sigmoid": 1}


def shape_op(op: str, x_type: str, y_type: str, target: str, opset: int = 13) -> str:
    """``one_op`` for an op whose second input is a constant int64 shape."""
    rank = target.count(",") + 1
    shape = f"shape = Constant<value: tensor = int64[{rank}] {{{target}}}>()"
    return one_op(op, x_type, y_type, opset, shape)


@pytest.mark.parametrize(
    ("x_type", "target", "y_type", "removed"),
    [
        ("float[2,3,4]", "2, 3, 4", "float[2,3,4]", 1),
        ("float[B,S,4]", "0, 0, -1", "float[B,S,4]", 1),  # dynamic dims copied, -1 is the remaining dim
        ("float[B,S,4]", "0, -1, 4", "float[B,S,4]", 1),
        ("float[B,S,4]", "-1, 0, 4", "float[B,S,4]", 1),
        ("float[2,3,4]", "2, 12", "float[2,12]", 0),  # different rank
        ("float[2,3,4]", "3, 2, 4", "float[3,2,4]", 0),  # same size, different shape
        ("float[B,S,4]", "1, 8, 4", "float[1,8,4]", 0),  # static dims cannot be proven equal to dynamic ones
    ],
)
def test_reshape(x_type: str, target: str, y_type: str, removed: int):
    model = build(shape_op("Reshape(r, shape)", x_type, y_type, target))
    assert ("Reshape" in run_eliminate(model, removed=removed)) == (not removed)


@pytest.mark.parametrize(
    ("x_type", "target", "opset"), [("float[2,3]", "0, 3", 14), ("float[B,S,4]", "0, -1, -1", 13)]
)
def test_reshape_that_must_stay(x_type: str, target: str, opset: int):
    # allowzero=1 makes 0 a literal zero; two -1 are invalid: neither may be taken for a no-op.
    op = "Reshape<allowzero: int = 1>(r, shape)" if opset >= 14 else "Reshape(r, shape)"
    model = build(shape_op(op, x_type, "float[]", target, opset), check=False)
    eliminate = get_pass("eliminate-identity")()
    eliminate(model)
    assert eliminate.rewrites == 0


@pytest.mark.parametrize(
    ("perm", "y_type", "removed"), [("0, 1, 2", "float[N,3,4]", 1), ("0, 2, 1", "float[N,4,3]", 0)]
)
def test_transpose(perm: str, y_type: str, removed: int):
    model = build(one_op(f"Transpose<perm: ints = [{perm}]>(r)", "float[N,3,4]", y_type))
    assert ("Transpose" in run_eliminate(model, removed=removed)) == (not removed)


@pytest.mark.parametrize(
    ("x_type", "target", "y_type", "removed"),
    [
        ("float[2,3,4]", "3, 1", "float[2,3,4]", 1),
        ("float[2,3,4]", "2, 3, 4", "float[2,3,4]", 1),
        ("float[N,3,4]", "1", "float[N,3,4]", 1),
        ("float[2,3,4]", "2, 2, 3, 4", "float[2,2,3,4]", 0),  # adds a dim
        ("float[2,1,4]", "3, 4", "float[2,3,4]", 0),  # stretches a dim
        ("float[N,3,4]", "2, 3, 4", "float[2,3,4]", 0),  # N may be 1
    ],
)
def test_expand(x_type: str, target: str, y_type: str, removed: int):
    model = build(shape_op("Expand(r, shape)", x_type, y_type, target))
    assert ("Expand" in run_eliminate(model, removed=removed)) == (not removed)


@pytest.mark.parametrize(
    ("x_type", "axis", "y_type", "removed"),
    [
        ("float[N,4]", 1, "float[N,4]", 1),
        ("float[N,4]", -1, "float[N,4]", 1),
        ("float[1,4]", 0, "float[1,4]", 1),
        ("float[N,4]", 0, "float[1,M]", 0),
        ("float[N,3,4]", 1, "float[N,12]", 0),
    ],
)
def test_flatten(x_type: str, axis: int, y_type: str, removed: int):
    model = build(one_op(f"Flatten<axis: int = {axis}>(r)", x_type, y_type))
    assert ("Flatten" in run_eliminate(model, removed=removed)) == (not removed)


def test_if_branches():
    # then: an Identity of a branch-local value feeding the branch output (removed, name kept);
    # else: an Identity of an outer-scope value as the branch output (must stay).
    model = build(
        """
        <ir_version: 8, opset_import: ["" : 13]>
        g (bool cond, float[4] x) => (float[4] y) {
          r = Relu(x)
          y = If(cond) <
            then_branch = then_g () => (float[4] t) {
              s = Sigmoid(r)
              t = Identity(s)
            },
            else_branch = else_g () => (float[4] e) {
              e = Identity(r)
            }
          >
        }
        """
    )
    x = RNG.standard_normal(4).astype(np.float32)
    for cond in (True, False):
        copy = ir.serde.deserialize_model(ir.to_proto(model))
        run_eliminate(copy, removed=1, feeds={"cond": np.array(cond), "x": x})
    then_branch = model.graph.node(1).attributes["then_branch"].as_graph()
    get_pass("eliminate-identity")()(model)
    assert [n.op_type for n in then_branch] == ["Sigmoid"]
    assert then_branch.outputs[0].name == "t"
