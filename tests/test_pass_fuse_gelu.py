"""fuse-gelu: erf and tanh GELU decompositions → standard Gelu (opset 20), on onnx.parser models."""

from __future__ import annotations


import onnx
import onnx.parser
import onnx_ir as ir
import pytest

from pass_helpers import load_checked as _load
from pass_helpers import op_counts as _ops

from onnxq import numerics, runtime_compat
from onnxq.pass_api import get_pass
from onnxq.passes.fuse_gelu import FuseGeluPass


def _gelu_text(
    *,
    form: str = "erf",
    opset: int = 20,
    ir_version: int = 10,
    scale_op: str = "Div",
    erf_scale: float | None = None,
    cube: str = "pow",
    grouping: str = "(x*a)*h",
    swap: bool = False,
    outer: str = "x",
) -> str:
    """GELU as exporters write it; ``swap`` reverses every Add/Mul, ``outer`` is the x of ½·x·(…)."""

    def binary(op: str, a: str, b: str) -> str:
        return f"{op}({b}, {a})" if swap else f"{op}({a}, {b})"

    def const(name: str, value: float) -> str:
        return f"{name} = Constant<value = float {{{value!r}}}>()"

    if form == "erf":
        if erf_scale is None:
            erf_scale = 1.4142135 if scale_op == "Div" else 0.70710677
        divide = "t = Div(x, c)" if scale_op == "Div" else f"t = {binary('Mul', 'x', 'c')}"
        core = [const("c", erf_scale), divide, "e = Erf(t)"]
    else:
        if cube == "pow":
            cubed = [const("three", 3.0), "x3 = Pow(x, three)"]
        else:
            cubed = ["xx = Mul(x, x)", f"x3 = {binary('Mul', 'x', 'xx')}"]
        core = [
            *cubed,
            const("k", 0.044715),
            f"kx3 = {binary('Mul', 'x3', 'k')}",
            f"inner = {binary('Add', 'x', 'kx3')}",
            const("s", 0.7978846),
            f"u = {binary('Mul', 'inner', 's')}",
            "e = Tanh(u)",
        ]
    product = {
        "(x*a)*h": [f"p = {binary('Mul', outer, 'a')}", f"y = {binary('Mul', 'p', 'h')}"],
        "(x*h)*a": [f"p = {binary('Mul', outer, 'h')}", f"y = {binary('Mul', 'p', 'a')}"],
        "x*(a*h)": [f"p = {binary('Mul', 'a', 'h')}", f"y = {binary('Mul', outer, 'p')}"],
    }[grouping]
    lines = [*core, const("one", 1.0), f"a = {binary('Add', 'e', 'one')}", const("h", 0.5), *product]
    body = "\n  ".join(lines)
    return f"""
<ir_version: {ir_version}, opset_import: ["" : {opset}]>
gelu (float[N,S,16] x, float[N,S,16] z) => (float[N,S,16] y) {{
  {body}
}}
"""


def _fuse(text: str, **options) -> tuple[ir.Model, int]:
    model = _load(text)
    pass_ = FuseGeluPass(**options)
    model = pass_(model).model
    onnx.checker.check_model(ir.to_proto(model), full_check=True)
    assert all(node.domain == "" for node in model.graph), "no com.microsoft ops"
    return model, pass_.rewrites


def _assert_same_numerics(text: str, model: ir.Model) -> None:
    original = _load(text)
    feeds = numerics.random_inputs(original, {"x": (2, 3, 16), "z": (2, 3, 16)})
    expected, actual = numerics.run_model(original, feeds)["y"], numerics.run_model(model, feeds)["y"]
    assert numerics.relative_error(expected, actual) <= 1e-4


@pytest.mark.parametrize("grouping", ["(x*a)*h", "(x*h)*a", "x*(a*h)"])
@pytest.mark.parametrize("scale_op,swap", [("Div", False), ("Mul", False), ("Mul", True), ("Div", True)])
def test_fuses_erf_gelu(grouping, scale_op, swap):
    text = _gelu_text(grouping=grouping, scale_op=scale_op, swap=swap)
    model, count = _fuse(text)
    assert count == 1 and _ops(model) == {"Gelu": 1}
    (node,) = [n for n in model.graph if n.op_type == "Gelu"]
    assert node.attributes.get_string("approximate") == "none"
    _assert_same_numerics(text, model)


@pytest.mark.parametrize("grouping", ["(x*a)*h", "(x*h)*a", "x*(a*h)"])
@pytest.mark.parametrize("cube,swap", [("pow", False), ("mul", False), ("mul", True)])
def test_fuses_tanh_gelu(grouping, cube, swap):
    text = _gelu_text(form="tanh", grouping=grouping, cube=cube, swap=swap)
    model, count = _fuse(text)
    assert count == 1 and _ops(model) == {"Gelu": 1}
    (node,) = [n for n in model.graph if n.op_type == "Gelu"]
    assert node.attributes.get_string("approximate") == "tanh"
    _assert_same_numerics(text, model)


def test_wrong_erf_constant_does_not_fire():
    model, count = _fuse(_gelu_text(scale_op="Mul", erf_scale=0.6))
    assert count == 0 and "Gelu" not in _ops(model) and _ops(model)["Erf"] == 1


def test_product_with_another_tensor_does_not_fire():
    model, count = _fuse(_gelu_text(outer="z"))  # ½·z·(1 + erf(x/√2)) is not GELU
    assert count == 0 and "Gelu" not in _ops(model)


def test_opset17_model_stays_decomposed_when_upgrade_is_off():
    model, count = _fuse(_gelu_text(opset=17, ir_version=8))
    assert count == 0
    assert runtime_compat.default_opset(model) == 17 and _ops(model)["Erf"] == 1


def test_opset17_model_is_upgraded_when_asked():
    text = _gelu_text(form="tanh", opset=17, ir_version=8)
    model, count = _fuse(text, upgrade_opset=True)
    assert count == 1 and runtime_compat.default_opset(model) == 20 and _ops(model) == {"Gelu": 1}
    _assert_same_numerics(text, model)


def test_opset17_model_without_gelu_is_not_converted_even_when_asked():
    text = _gelu_text(opset=17, ir_version=8, erf_scale=0.6, scale_op="Mul")
    model, count = _fuse(text, upgrade_opset=True)
    assert count == 0 and runtime_compat.default_opset(model) == 17


def test_second_run_is_a_no_op_and_the_pass_is_registered():
    model, _ = _fuse(_gelu_text(form="tanh", cube="mul"))
    again = FuseGeluPass()
    again(model)
    assert again.rewrites == 0
    assert get_pass("fuse-gelu") is FuseGeluPass and FuseGeluPass.Options().upgrade_opset is False
