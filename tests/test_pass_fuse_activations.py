"""fuse-activations: Clip-based HardSigmoid/HardSwish → standard ops; SiLU and unfused HardSwish tagged."""

from __future__ import annotations


import onnx
import onnx.parser
import onnx_ir as ir
import pytest

from pass_helpers import load_checked as _load
from pass_helpers import op_counts as _ops

from onnxq import numerics
from onnxq.pass_api import get_pass
from onnxq.passes.fuse_activations import PATTERN_KEY, FuseActivationsPass

_IR_FOR_OPSET = {7: 3, 10: 5, 11: 6, 13: 7, 14: 7, 17: 8, 18: 8, 20: 9}


def _clip(opset: int, source: str, high: float = 6.0) -> list[str]:
    """Relu6(source) as exporters write it: bounds as inputs from opset 11, as attributes before."""
    if opset >= 11:
        return ["lo = Constant<value = float {0.0}>()", f"hi = Constant<value = float {{{high}}}>()",
                f"c = Clip({source}, lo, hi)"]
    return [f"c = Clip<min = 0.0, max = {high}>({source})"]


def _activation_text(form: str, *, opset: int = 14, high: float = 6.0, ir_version: int | None = None) -> str:
    three = "three = Constant<value = float {3.0}>()"
    shifted = [three, "t = Add(x, three)", *_clip(opset, "t", high)]
    shifted_swapped = [three, "t = Add(three, x)", *_clip(opset, "t", high)]
    relu6_of_offset = ["t = Add(x, offset)", *_clip(opset, "t", high)]
    six, sixth = "six = Constant<value = float {6.0}>()", "sixth = Constant<value = float {0.16666667}>()"
    lines = {
        "hardsigmoid-div": [*shifted, six, "y = Div(c, six)"],
        "hardsigmoid-mul": [*shifted_swapped, sixth, "y = Mul(sixth, c)"],
        # paddle2onnx's decomposed hard_swish: Add, Clip, Mul(x, ·), Div; 3 and 6 as 1-element initializers.
        "hardswish-paddle": [*relu6_of_offset, "m = Mul(x, c)", "y = Div(m, s6)"],
        "hardswish-mul-sixth": [*shifted, "m = Mul(c, x)", sixth, "y = Mul(m, sixth)"],
        "hardswish-inner-div": [*shifted, six, "h = Div(c, six)", "y = Mul(h, x)"],
        "hardswish-hardsigmoid": ["h = HardSigmoid<alpha = 0.16666667, beta = 0.5>(x)", "y = Mul(x, h)"],
        "hardsigmoid-default-gate": ["h = HardSigmoid(x)", "y = Mul(x, h)"],
        "silu": ["s = Sigmoid(x)", "y = Mul(x, s)"],
        "silu-swapped": ["s = Sigmoid(x)", "y = Mul(s, x)"],
        "sigmoid-of-other": ["s = Sigmoid(z)", "y = Mul(x, s)"],
        "silu-shared-gate": ["s = Sigmoid(x)", "m = Mul(x, s)", "y = Add(m, s)"],
    }[form]
    body = "\n  ".join(lines)
    inits = "<float[1] offset = {3.0}, float[1] s6 = {6.0}>" if form == "hardswish-paddle" else ""
    ir_version = ir_version or _IR_FOR_OPSET[opset]
    return f"""
<ir_version: {ir_version}, opset_import: ["" : {opset}]>
act (float[N,C,H,W] x, float[N,C,H,W] z) => (float[N,C,H,W] y) {inits} {{
  {body}
}}
"""


def _tags(model: ir.Model) -> dict[str, str]:
    return {n.op_type: n.metadata_props[PATTERN_KEY] for n in model.graph if PATTERN_KEY in n.metadata_props}


def _run_pass(text: str) -> tuple[ir.Model, int]:
    model = _load(text)
    pass_ = FuseActivationsPass()
    model = pass_(model).model
    onnx.checker.check_model(ir.to_proto(model), full_check=True)
    feeds = numerics.random_inputs(_load(text), {"x": (1, 3, 4, 4), "z": (1, 3, 4, 4)})
    feeds["x"] *= 4  # reach both Clip bounds
    expected, actual = numerics.run_model(_load(text), feeds)["y"], numerics.run_model(model, feeds)["y"]
    assert numerics.relative_error(expected, actual) <= 1e-4
    return model, pass_.rewrites


def _second_run_count(model: ir.Model) -> int:
    again = FuseActivationsPass()
    again(model)
    return again.rewrites


@pytest.mark.parametrize("form", ["hardsigmoid-div", "hardsigmoid-mul"])
@pytest.mark.parametrize("opset", [7, 10, 11, 13, 18])
def test_fuses_hardsigmoid(form, opset):
    model, count = _run_pass(_activation_text(form, opset=opset))
    assert count == 1 and _ops(model) == {"HardSigmoid": 1}
    (node,) = [n for n in model.graph if n.op_type == "HardSigmoid"]
    assert node.attributes.get_float("alpha") == pytest.approx(1 / 6)
    assert node.attributes.get_float("beta") == 0.5
    assert _second_run_count(model) == 0


@pytest.mark.parametrize(
    "form", ["hardswish-paddle", "hardswish-mul-sixth", "hardswish-inner-div", "hardswish-hardsigmoid"]
)
@pytest.mark.parametrize("opset", [14, 18, 20])
def test_fuses_hardswish_from_opset14(form, opset):
    model, count = _run_pass(_activation_text(form, opset=opset))
    assert count == 1 and _ops(model) == {"HardSwish": 1}
    assert _second_run_count(model) == 0


@pytest.mark.parametrize("form", ["hardswish-paddle", "hardswish-mul-sixth", "hardswish-inner-div"])
@pytest.mark.parametrize("opset", [10, 13])
def test_hardswish_below_opset14_becomes_tagged_mul_of_hardsigmoid(form, opset):
    model, count = _run_pass(_activation_text(form, opset=opset))
    assert count == 1 and _ops(model) == {"HardSigmoid": 1, "Mul": 1}
    assert _tags(model) == {"HardSigmoid": "hardswish", "Mul": "hardswish"}
    assert _second_run_count(model) == 0


def test_existing_hardswish_pair_below_opset14_is_tagged_once():
    model, count = _run_pass(_activation_text("hardswish-hardsigmoid", opset=13))
    assert count == 1 and _ops(model) == {"HardSigmoid": 1, "Mul": 1}
    assert _tags(model) == {"HardSigmoid": "hardswish", "Mul": "hardswish"}
    assert _second_run_count(model) == 0


@pytest.mark.parametrize("form", ["silu", "silu-swapped"])
@pytest.mark.parametrize("opset", [13, 20])
def test_silu_is_tagged_not_rewritten(form, opset):
    model, count = _run_pass(_activation_text(form, opset=opset, ir_version=10 if opset == 20 else None))
    assert count == 1 and _ops(model) == {"Sigmoid": 1, "Mul": 1}
    assert _tags(model) == {"Sigmoid": "silu", "Mul": "silu"}
    assert _second_run_count(model) == 0
    serialized = ir.to_proto(model)
    assert {p.key: p.value for p in serialized.graph.node[0].metadata_props} == {PATTERN_KEY: "silu"}


@pytest.mark.parametrize(
    "form,opset,high",
    [
        ("sigmoid-of-other", 13, 6.0),  # x · Sigmoid(z)
        ("silu-shared-gate", 13, 6.0),  # σ(x) also used outside the product: not one unit
        ("hardswish-paddle", 14, 5.0),  # Clip(0, 5)
        ("hardswish-paddle", 10, 5.0),  # Clip(0, 5) as attributes
        ("hardsigmoid-div", 13, 5.0),
        ("hardsigmoid-default-gate", 14, 6.0),  # HardSigmoid(alpha=0.2): not HardSwish's gate
    ],
)
def test_does_not_fire_on_lookalikes(form, opset, high):
    text = _activation_text(form, opset=opset, high=high)
    model, count = _run_pass(text)
    assert count == 0 and _tags(model) == {} and _ops(model) == _ops(_load(text))


def test_pass_is_registered():
    assert get_pass("fuse-activations") is FuseActivationsPass
