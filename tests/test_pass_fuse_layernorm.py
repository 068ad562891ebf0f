"""fuse-layernorm: decomposed LayerNorm → LayerNormalization-17, on models written as onnx.parser text."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnx.parser
import onnx_ir as ir
import pytest

from pass_helpers import load_checked as _load
from pass_helpers import op_counts as _ops

from onnxq import numerics, runtime_compat
from onnxq.errors import OpsetError
from onnxq.pass_api import get_pass
from onnxq.passes.fuse_layernorm import FuseLayerNormPass
from onnxq.pipeline import parse_pipeline

_DECOMPOSED_OPS = {"ReduceMean", "Sub", "Pow", "Sqrt", "Div", "Reciprocal"}


def _floats(values: np.ndarray) -> str:
    return ", ".join(repr(float(v)) for v in np.asarray(values).reshape(-1))


def _layernorm_text(
    *,
    opset: int = 17,
    ir_version: int = 8,
    x_shape: str = "N,S,16",
    norm_shape: tuple[int, ...] = (16,),
    axes: tuple[int, ...] = (-1,),
    square: str = "pow",
    divide: str = "div",
    affine: str = "scale_bias",
    epsilon_inside: bool = True,
    swap: bool = False,
) -> str:
    """A decomposed LayerNorm as exporters write it; ``swap`` puts constants on the left of Add/Mul."""
    rng = np.random.default_rng(1)
    size = int(np.prod(norm_shape))
    dims = ",".join(map(str, norm_shape))
    gamma, beta = rng.uniform(0.5, 1.5, size), rng.uniform(-0.5, 0.5, size)
    params = [f"float[{dims}] gamma = {{{_floats(gamma)}}}", f"float[{dims}] beta = {{{_floats(beta)}}}"]

    def binary(op: str, a: str, b: str) -> str:
        return f"{op}({b}, {a})" if swap else f"{op}({a}, {b})"

    if opset >= 18:
        axes_text = ", ".join(map(str, axes))
        reduce_lines = [f"axes = Constant<value = int64[{len(axes)}] {{{axes_text}}}>()"]
        mean, var = "ReduceMean(x, axes)", "ReduceMean(sq, axes)"
    else:
        reduce_lines = []
        mean, var = f"ReduceMean<axes={list(axes)}>(x)", f"ReduceMean<axes={list(axes)}>(sq)"
    lines = reduce_lines + [
        f"m = {mean}",
        "d = Sub(x, m)",
        "two = Constant<value = float {2.0}>()",
        "sq = Pow(d, two)" if square == "pow" else "sq = Mul(d, d)",
        f"v = {var}",
        "eps = Constant<value = float {1e-5}>()",
    ]
    if epsilon_inside:
        lines += [f"ve = {binary('Add', 'v', 'eps')}", "s = Sqrt(ve)"]
    else:  # ε added after the square root: not a LayerNorm
        lines += ["sv = Sqrt(v)", f"s = {binary('Add', 'sv', 'eps')}"]
    if divide == "div":
        lines.append("n = Div(d, s)")
    else:
        lines += ["r = Reciprocal(s)", f"n = {binary('Mul', 'd', 'r')}"]
    tail = {
        "scale_bias": [f"ng = {binary('Mul', 'n', 'gamma')}", f"y = {binary('Add', 'ng', 'beta')}"],
        "scale": [f"y = {binary('Mul', 'n', 'gamma')}"],
        "bias": [f"y = {binary('Add', 'n', 'beta')}"],
        "none": ["y = Identity(n)"],
    }[affine]
    body = "\n  ".join(lines + tail)
    return f"""
<ir_version: {ir_version}, opset_import: ["" : {opset}]>
layernorm (float[{x_shape}] x) => (float[{x_shape}] y) <{", ".join(params)}> {{
  {body}
}}
"""


def _assert_same_numerics(text: str, model: ir.Model, shapes=None, rtol: float = 1e-4) -> None:
    original = _load(text)
    feeds = numerics.random_inputs(original, shapes)
    expected, actual = numerics.run_model(original, feeds), numerics.run_model(model, feeds)
    for name, ref in expected.items():
        assert numerics.relative_error(ref, actual[name]) <= rtol, name


def _fuse(text: str, **options) -> tuple[ir.Model, int]:
    model = _load(text)
    pass_ = FuseLayerNormPass(**options)
    result = pass_(model)
    assert result.modified == (pass_.rewrites > 0)
    onnx.checker.check_model(ir.to_proto(result.model), full_check=True)
    return result.model, pass_.rewrites


@pytest.mark.parametrize(
    "variant",
    [
        dict(opset=17, ir_version=8),
        dict(opset=17, ir_version=8, square="mul", divide="reciprocal", swap=True),
        dict(opset=18, ir_version=9, square="mul"),
        dict(opset=20, ir_version=10, axes=(2,), divide="reciprocal"),
        dict(opset=17, ir_version=8, x_shape="N,4,8", norm_shape=(4, 8), axes=(-2, -1)),
        dict(opset=18, ir_version=9, x_shape="N,4,8", norm_shape=(4, 8), axes=(1, 2)),
    ],
    ids=["pow-div", "mul-reciprocal-swapped", "opset18-axes-input", "positive-axis", "2-axes", "2-pos-axes"],
)
def test_fuses_layernorm_with_scale_and_bias(variant):
    text = _layernorm_text(**variant)
    model, count = _fuse(text)
    assert count == 1
    ops = _ops(model)
    assert ops["LayerNormalization"] == 1 and not _DECOMPOSED_OPS & set(ops) and "Mul" not in ops
    (node,) = [n for n in model.graph if n.op_type == "LayerNormalization"]
    assert len(node.inputs) == 3
    assert node.attributes.get_int("axis") == -len(variant.get("norm_shape", (16,)))
    assert node.attributes.get_float("epsilon") == pytest.approx(1e-5)
    norm_shape = variant.get("norm_shape", (16,))
    _assert_same_numerics(text, model, shapes={"x": (2, 3, 16) if norm_shape == (16,) else (2, *norm_shape)})


@pytest.mark.parametrize("affine", ["scale", "bias", "none"])
def test_fuses_layernorm_without_full_affine_tail(affine):
    text = _layernorm_text(affine=affine, swap=True)
    model, count = _fuse(text)
    assert count == 1
    (node,) = [n for n in model.graph if n.op_type == "LayerNormalization"]
    assert len(node.inputs) == (3 if affine == "bias" else 2)
    scale = node.inputs[1].const_value.numpy()
    assert scale.shape == (16,)
    if affine != "scale":
        np.testing.assert_array_equal(scale, np.ones(16, np.float32))
    _assert_same_numerics(text, model)


def test_broadcast_constant_scale_is_stored_at_the_normalized_shape():
    text = _layernorm_text(affine="scale").replace("float[16] gamma", "float[1,1,16] gamma")
    model, count = _fuse(text)
    assert count == 1
    (node,) = [n for n in model.graph if n.op_type == "LayerNormalization"]
    assert node.inputs[1].const_value.shape == (16,)
    _assert_same_numerics(text, model)


def test_dynamic_hidden_dim_takes_the_normalized_shape_from_a_constant_scale():
    text = _layernorm_text(x_shape="N,S,D")
    model, count = _fuse(text)
    assert count == 1 and _ops(model)["LayerNormalization"] == 1
    _assert_same_numerics(text, model, shapes={"x": (2, 3, 16)})
    # Without γ/β nothing says how large the normalized dim is: the ones scale cannot be built.
    model, count = _fuse(_layernorm_text(x_shape="N,S,D", affine="none"))
    assert count == 0


def test_float16_layernorm_keeps_its_dtype():
    # onnx.parser writes float16 constants as raw bits; build the fp16 model by converting the fp32 one.
    proto = onnx.parser.parse_model(_layernorm_text())
    for init in proto.graph.initializer:
        array = onnx.numpy_helper.to_array(init).astype(np.float16)
        init.CopyFrom(onnx.numpy_helper.from_array(array, init.name))
    for node in proto.graph.node:
        if node.op_type == "Constant" and node.attribute[0].t.data_type == onnx.TensorProto.FLOAT:
            array = onnx.numpy_helper.to_array(node.attribute[0].t).astype(np.float16)
            node.attribute[0].t.CopyFrom(onnx.numpy_helper.from_array(array))
    for value in [*proto.graph.input, *proto.graph.output]:
        value.type.tensor_type.elem_type = onnx.TensorProto.FLOAT16
    onnx.checker.check_model(proto, full_check=True)
    original, model = ir.serde.deserialize_model(proto), ir.serde.deserialize_model(proto)
    pass_ = FuseLayerNormPass()
    pass_(model)
    assert pass_.rewrites == 1
    (node,) = [n for n in model.graph if n.op_type == "LayerNormalization"]
    assert node.inputs[1].dtype == ir.DataType.FLOAT16 and model.graph.outputs[0].dtype == ir.DataType.FLOAT16
    onnx.checker.check_model(ir.to_proto(model), full_check=True)
    feeds = numerics.random_inputs(original)
    # The decomposed graph computes in fp16, the fused op in fp32: compare at fp16 precision.
    expected, actual = numerics.run_model(original, feeds)["y"], numerics.run_model(model, feeds)["y"]
    assert numerics.relative_error(expected, actual) <= 5e-3


def test_opset11_model_is_upgraded_to_17_and_keeps_its_numerics():
    text = _layernorm_text(opset=11, ir_version=7)
    model, count = _fuse(text)
    assert count == 1
    assert runtime_compat.default_opset(model) == 17
    assert _ops(model)["LayerNormalization"] == 1 and not _DECOMPOSED_OPS & set(_ops(model))
    _assert_same_numerics(text, model)


def test_opset11_model_without_layernorm_is_not_converted():
    text = _layernorm_text(opset=11, ir_version=7, epsilon_inside=False)
    model, count = _fuse(text)
    assert count == 0 and runtime_compat.default_opset(model) == 11


def test_upgrade_off_leaves_an_old_opset_model_alone():
    model, count = _fuse(_layernorm_text(opset=11, ir_version=7), upgrade_opset=False)
    assert count == 0
    assert runtime_compat.default_opset(model) == 11 and _ops(model)["ReduceMean"] == 2


def test_failed_conversion_warns_and_leaves_the_model(monkeypatch, caplog):
    def refuse(model, target):
        raise OpsetError("converter says no")

    monkeypatch.setattr(runtime_compat, "upgrade_opset", refuse)
    with caplog.at_level(logging.WARNING, logger="onnxq.passes.fuse_layernorm"):
        model, count = _fuse(_layernorm_text(opset=11, ir_version=7))
    assert count == 0 and _ops(model)["ReduceMean"] == 2
    assert "converter says no" in caplog.text


@pytest.mark.parametrize(
    "variant",
    [
        dict(epsilon_inside=False),  # Sqrt(v) + ε
        dict(x_shape="N,16,S", axes=(1,)),  # reduction over a non-last axis
        dict(opset=18, ir_version=9, x_shape="N,4,16", norm_shape=(16,), axes=(1,)),
    ],
    ids=["epsilon-after-sqrt", "non-last-axis", "non-last-axis-opset18"],
)
def test_does_not_fire_on_lookalikes(variant):
    model, count = _fuse(_layernorm_text(**variant))
    assert count == 0 and "LayerNormalization" not in _ops(model)


def test_scale_that_broadcasts_over_the_batch_axis_is_not_fused_into_it():
    text = _layernorm_text(x_shape="2,3,16", affine="scale_bias").replace(
        "float[16] gamma = {", "float[2,1,16] gamma = {" + "1.0, " * 16
    )
    model, count = _fuse(text)
    # n·γ cannot be absorbed (γ varies over the batch); the bare LayerNorm still fuses underneath it.
    assert count == 1 and _ops(model)["Mul"] == 1
    _assert_same_numerics(text, model)


def test_second_run_is_a_no_op_and_pipeline_text_sets_the_option():
    model, _ = _fuse(_layernorm_text())
    again = FuseLayerNormPass()
    again(model)
    assert again.rewrites == 0
    assert get_pass("fuse-layernorm") is FuseLayerNormPass
    (parsed,) = parse_pipeline("fuse-layernorm{upgrade-opset=false}")
    assert isinstance(parsed, FuseLayerNormPass) and parsed.options.upgrade_opset is False
