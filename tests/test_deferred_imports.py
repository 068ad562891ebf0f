"""sympy stays out of memory until a symbolic dimension expression needs it (``onnxq.deferred_imports``)."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import sys
import onnxq, onnxq.cli, onnxq.cli_quant, onnxq.quant.quantize, onnxq.pipeline
import onnx_ir as ir
onnxq.pipeline.parse_pipeline("default")
print("after import", "sympy.core" in sys.modules, "mpmath" in sys.modules)
print("named dim", str(ir.SymbolicDim("batch")), "sympy.core" in sys.modules)
expression = ir.SymbolicDim("N+1") + 1
print("expression", str(expression), "sympy.core" in sys.modules)
import sympy
print("sympy", sympy.Max(2, 3), isinstance(expression._expr, sympy.Expr))
"""


def _run(code: str) -> str:
    """``code``'s stdout in a fresh interpreter (what is imported is the point)."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          timeout=120)
    return done.stdout


def _lines() -> list[str]:
    return _run(PROBE).splitlines()


def test_sympy_loads_only_when_an_expression_is_evaluated():
    assert _lines() == [
        "after import False False",
        "named dim batch False",
        "expression N + 2 True",
        "sympy 3 True",
    ]


def test_nothing_is_deferred_once_onnx_ir_is_imported():
    code = ("import sys, onnx_ir; from onnxq.deferred_imports import defer_symbolic_shapes; "
            "print(defer_symbolic_shapes(), type(sys.modules['sympy']).__name__)")
    assert _run(code).split() == ["False", "module"]


REFERENCE_PROBE = """
import sys
import numpy as np, onnx, onnx_ir as ir, onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
import onnxq
from onnxq import api

def const(name, array):
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(array), name))

def run(model, x):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]

def fold(proto):
    model, _ = api.optimize(ir.serde.deserialize_model(proto), "default")
    return ir.to_proto(model)

x = np.random.default_rng(0).standard_normal((1, 2, 5, 5)).astype(np.float32)
X = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 5, 5])
# TF-style "same" padding as exporters compute it: every input of Pad's pads is a small constant
pads = helper.make_graph([
    const("n", np.array([4], np.int64)), const("p", np.array([0, 1, 0, 1], np.int64)),
    const("pair", np.array([-1, 2], np.int64)), const("flat", np.array([-1], np.int64)),
    const("s", np.array([-1], np.int64)), const("e", np.array([-2**62], np.int64)),
    const("a", np.array([0], np.int64)), const("st", np.array([-1], np.int64)),
    helper.make_node("ConstantOfShape", ["n"], ["zeros"],
                     value=numpy_helper.from_array(np.array([0], np.int64))),
    helper.make_node("Concat", ["p", "zeros"], ["both"], axis=0),
    helper.make_node("Reshape", ["both", "pair"], ["rows"]),
    helper.make_node("Slice", ["rows", "s", "e", "a", "st"], ["reversed"]),
    helper.make_node("Transpose", ["reversed"], ["columns"], perm=[1, 0]),
    helper.make_node("Reshape", ["columns", "flat"], ["ordered"]),
    helper.make_node("Cast", ["ordered"], ["pads"], to=TensorProto.INT64),
    helper.make_node("Pad", ["x", "pads"], ["y"]),
], "pads", [X], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
proto = helper.make_model(pads, opset_imports=[helper.make_opsetid("", 17)])
folded = fold(proto)
print("pads", [n.op_type for n in folded.graph.node], type(sys.modules["onnx.reference"]).__name__,
      np.array_equal(run(proto, x), run(folded, x)))
added = helper.make_graph([
    const("c1", np.ones(5, np.float32)), const("c2", np.full(5, 2, np.float32)),
    helper.make_node("Add", ["c1", "c2"], ["c"]), helper.make_node("Add", ["x", "c"], ["y"]),
], "add", [X], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
proto = helper.make_model(added, opset_imports=[helper.make_opsetid("", 17)])
folded = fold(proto)
print("add", [n.op_type for n in folded.graph.node], type(sys.modules["onnx.reference"]).__name__,
      np.array_equal(run(proto, x), run(folded, x)))
from onnx.reference import ReferenceEvaluator
print("later imports", ReferenceEvaluator.__name__, onnx.reference is sys.modules["onnx.reference"])
"""


def test_constant_folding_of_shape_arithmetic_leaves_onnx_reference_unloaded():
    """Pads computed from constants fold with numpy (``onnxq.small_ops``); the first op only the reference
    evaluates loads it, and from then on it is the real module everywhere."""
    assert _run(REFERENCE_PROBE).splitlines() == [
        "pads ['Pad'] DeferredModule True",
        "add ['Add'] module True",
        "later imports ReferenceEvaluator True",
    ]


def test_the_installed_onnxscript_takes_the_numpy_evaluator():
    """The folder's evaluator is a private attribute of onnxscript: a version without it folds as before
    (onnx.reference loaded, 11 MiB more); this test says so when it happens."""
    from onnxq.passes.fold_constants import _small_ops_first

    with _small_ops_first() as active:
        assert active


SUBMODULE_FIRST = """
import sys, onnxq
from onnx.reference.op_run import OpRun
print(type(sys.modules["onnx.reference"]).__name__)
from onnx.reference import ReferenceEvaluator
from onnx.reference.ops import _op_list
print(type(sys.modules["onnx.reference"]).__name__, OpRun is _op_list.OpRun,
      OpRun is sys.modules["onnx.reference.op_run"].OpRun)
"""


def test_a_submodule_imported_first_is_the_one_the_package_uses():
    """``from onnx.reference.op_run import OpRun`` (ORT's quantizer does such imports) loads that submodule
    alone; the package reuses it once imported. A placeholder without ``__path__`` made the import system
    import the package and then load the submodule again: two OpRun classes."""
    assert _run(SUBMODULE_FIRST).splitlines() == ["DeferredModule", "module True True"]
