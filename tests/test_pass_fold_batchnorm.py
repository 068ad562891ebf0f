"""fold-bn: BatchNormalization folded into Conv/ConvTranspose/Gemm/MatMul, or lowered to Mul + Add."""

from __future__ import annotations

import collections
import logging

import numpy as np
import onnx
import onnx.parser
import onnx_ir as ir
import pytest
from onnx import numpy_helper

from onnxq import numerics
from onnxq.pass_api import get_pass
from onnxq.pipeline import parse_pipeline

RNG = np.random.default_rng(7)


def bn_stats(channels: int, dtype=np.float32) -> dict[str, np.ndarray]:
    """Non-trivial statistics, so a wrong axis or formula shows in the numerics."""
    return {
        "gamma": RNG.uniform(-2.0, 2.0, channels).astype(dtype),
        "beta": RNG.standard_normal(channels).astype(dtype),
        "mean": RNG.standard_normal(channels).astype(dtype),
        "var": RNG.uniform(0.5, 2.0, channels).astype(dtype),
    }


def build(text: str, **constants: np.ndarray) -> ir.Model:
    proto = onnx.parser.parse_model(text)
    for name, array in constants.items():
        proto.graph.initializer.append(numpy_helper.from_array(array, name))
    onnx.checker.check_model(proto)
    return ir.serde.deserialize_model(proto)


def histogram(model: ir.Model) -> dict[str, int]:
    nodes = ir.traversal.RecursiveGraphIterator(model.graph)
    return dict(collections.Counter(node.op_type for node in nodes))


def run_fold(model: ir.Model, *, rewrites: int, rtol: float = 1e-4, **options) -> dict[str, int]:
    """Run fold-bn (then dce); check count, validity and numerics; return the op histogram."""
    feeds = numerics.random_inputs(model)
    expected = numerics.run_model(model, feeds)
    fold = get_pass("fold-bn")(**options)
    fold(model)
    assert fold.rewrites == rewrites
    get_pass("dce")()(model)
    onnx.checker.check_model(ir.to_proto(model), full_check=True)
    actual = numerics.run_model(model, feeds)
    assert list(actual) == list(expected)
    _, error = numerics.worst_output_error(expected, actual)
    assert error <= rtol
    return histogram(model)


def test_conv_with_bias():
    model = build(
        """
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[N,3,8,8] x) => (float[N,4,6,6] y) {
          c = Conv(x, w, b)
          y = BatchNormalization<epsilon: float = 0.001>(c, gamma, beta, mean, var)
        }
        """,
        w=RNG.standard_normal((4, 3, 3, 3)).astype(np.float32),
        b=RNG.standard_normal(4).astype(np.float32),
        **bn_stats(4),
    )
    assert run_fold(model, rewrites=1) == {"Conv": 1}


def test_depthwise_conv_without_bias():
    model = build(
        """
        <ir_version: 7, opset_import: ["" : 11]>
        g (float[N,4,8,8] x) => (float[N,4,8,8] y) {
          c = Conv<group: int = 4, pads: ints = [1, 1, 1, 1]>(x, w)
          y = BatchNormalization(c, gamma, beta, mean, var)
        }
        """,
        w=RNG.standard_normal((4, 1, 3, 3)).astype(np.float32),
        **bn_stats(4),
    )
    assert run_fold(model, rewrites=1) == {"Conv": 1}
    conv = next(iter(model.graph))
    assert len(conv.inputs) == 3  # the fold adds the bias


def test_grouped_conv_transpose():
    # W is [C_in, C_out/group, k, k] = [4, 3, 3, 3] with group 2: 6 output channels.
    model = build(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[N,4,5,5] x) => (float[N,6,7,7] y) {
          c = ConvTranspose<group: int = 2>(x, w, b)
          y = BatchNormalization(c, gamma, beta, mean, var)
        }
        """,
        w=RNG.standard_normal((4, 3, 3, 3)).astype(np.float32),
        b=RNG.standard_normal(6).astype(np.float32),
        **bn_stats(6),
    )
    assert run_fold(model, rewrites=1) == {"ConvTranspose": 1}


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm(trans_b: int):
    weight_shape = (5, 6) if trans_b else (6, 5)
    model = build(
        f"""
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[M,6] x) => (float[M,5] y) {{
          c = Gemm<transB: int = {trans_b}, alpha: float = 0.5, beta: float = 2.0>(x, w, bias)
          y = BatchNormalization(c, gamma, beta, mean, var)
        }}
        """,
        w=RNG.standard_normal(weight_shape).astype(np.float32),
        bias=RNG.standard_normal((1, 5)).astype(np.float32),
        **bn_stats(5),
    )
    assert run_fold(model, rewrites=1) == {"Gemm": 1}
    gemm = next(iter(model.graph))
    assert "beta" not in gemm.attributes  # folded into C


def test_matmul_rank2_becomes_matmul_add():
    model = build(
        """
        <ir_version: 9, opset_import: ["" : 15]>
        g (float[M,6] x) => (float[M,5] y) {
          c = MatMul(x, w)
          y = BatchNormalization(c, gamma, beta, mean, var)
        }
        """,
        w=RNG.standard_normal((6, 5)).astype(np.float32),
        **bn_stats(5),
    )
    assert run_fold(model, rewrites=1) == {"MatMul": 1, "Add": 1}


def test_float16_conv():
    model = build(
        """
        <ir_version: 8, opset_import: ["" : 15]>
        g (float16[1,3,8,8] x) => (float16[1,4,6,6] y) {
          c = Conv(x, w, b)
          y = BatchNormalization(c, gamma, beta, mean, var)
        }
        """,
        w=RNG.standard_normal((4, 3, 3, 3)).astype(np.float16),
        b=RNG.standard_normal(4).astype(np.float16),
        **bn_stats(4, np.float16),
    )
    assert run_fold(model, rewrites=1, rtol=1e-2) == {"Conv": 1}
    assert model.graph.node(0).inputs[1].dtype == ir.DataType.FLOAT16


def test_constant_node_weights_and_double():
    # ORT CPU has no double Conv; Gemm covers double weights given as Constant nodes.
    model = build(
        """
        <ir_version: 10, opset_import: ["" : 18]>
        g (double[N,2] x) => (double[N,3] y) {
          w = Constant<value: tensor = double[2,3] {1.0, -2.0, 0.5, 3.0, -1.5, 0.25}>()
          gamma = Constant<value: tensor = double[3] {0.5, -1.25, 2.0}>()
          c = Gemm(x, w)
          y = BatchNormalization(c, gamma, beta, mean, var)
        }
        """,
        beta=RNG.standard_normal(3),
        mean=RNG.standard_normal(3),
        var=RNG.uniform(0.5, 2.0, 3),
    )
    assert run_fold(model, rewrites=1) == {"Gemm": 1}
    assert model.graph.node(0).inputs[1].dtype == ir.DataType.DOUBLE


def test_shared_weight_folds_into_separate_copies():
    model = build(
        """
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[N,3,6,6] x) => (float[N,4,4,4] y1, float[N,4,4,4] y2) {
          c1 = Conv(x, w)
          c2 = Conv(x, w)
          y1 = BatchNormalization(c1, gamma, beta, mean, var)
          y2 = BatchNormalization(c2, gamma2, beta, mean, var)
        }
        """,
        w=RNG.standard_normal((4, 3, 3, 3)).astype(np.float32),
        gamma2=RNG.uniform(0.5, 1.5, 4).astype(np.float32),
        **bn_stats(4),
    )
    assert run_fold(model, rewrites=2) == {"Conv": 2}
    first, second = (node.inputs[1] for node in model.graph)
    assert first is not second and first.name != second.name


def test_conv_output_with_two_consumers_is_not_folded():
    model = build(
        """
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[N,3,6,6] x) => (float[N,4,4,4] y, float[N,4,4,4] r) {
          c = Conv(x, w, b)
          y = BatchNormalization(c, gamma, beta, mean, var)
          r = Relu(c)
        }
        """,
        w=RNG.standard_normal((4, 3, 3, 3)).astype(np.float32),
        b=RNG.standard_normal(4).astype(np.float32),
        **bn_stats(4),
    )
    get_pass("infer-shapes")()(model)  # the lowering needs the BN input's rank
    w_before = model.graph.initializers["w"].const_value.numpy().copy()
    assert run_fold(model, rewrites=1) == {"Conv": 1, "Mul": 1, "Add": 1, "Relu": 1}
    np.testing.assert_array_equal(model.graph.node(0).inputs[1].const_value.numpy(), w_before)
    scale = next(n for n in model.graph if n.op_type == "Mul").inputs[1]
    assert scale.const_value.shape == ir.Shape([4, 1, 1])


def test_non_constant_conv_weight_is_lowered_not_folded():
    model = build(
        """
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[1,3,6,6] x, float[4,3,3,3] w) => (float[1,4,4,4] y) {
          c = Conv(x, w)
          y = BatchNormalization(c, gamma, beta, mean, var)
        }
        """,
        **bn_stats(4),
    )
    get_pass("infer-shapes")()(model)
    assert run_fold(model, rewrites=1) == {"Conv": 1, "Mul": 1, "Add": 1}


def test_matmul_rank3_is_lowered_over_axis_1():
    # BN normalises axis 1 (S here), not the MatMul's output features: folding into W would be wrong.
    model = build(
        """
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[2,4,6] x) => (float[2,4,5] y) {
          c = MatMul(x, w)
          y = BatchNormalization(c, gamma, beta, mean, var)
        }
        """,
        w=RNG.standard_normal((6, 5)).astype(np.float32),
        **bn_stats(4),
    )
    get_pass("infer-shapes")()(model)
    assert run_fold(model, rewrites=1) == {"MatMul": 1, "Mul": 1, "Add": 1}
    scale = next(n for n in model.graph if n.op_type == "Mul").inputs[1]
    assert scale.const_value.shape == ir.Shape([4, 1])


def test_rank2_standalone_bn_scale_is_1d():
    model = build(
        """
        <ir_version: 8, opset_import: ["" : 14]>
        g (float[N,5] x) => (float[N,5] y) {
          y = BatchNormalization(x, gamma, beta, mean, var)
        }
        """,
        **bn_stats(5),
    )
    assert run_fold(model, rewrites=1) == {"Mul": 1, "Add": 1}
    assert model.graph.node(0).inputs[1].const_value.shape == ir.Shape([5])


def test_training_mode_is_not_touched():
    model = build(
        """
        <ir_version: 8, opset_import: ["" : 15]>
        g (float[2,4,6,6] x) => (float[2,4,6,6] y) {
          c = Conv<pads: ints = [1, 1, 1, 1]>(x, w)
          y = BatchNormalization<training_mode: int = 1>(c, gamma, beta, mean, var)
        }
        """,
        w=RNG.standard_normal((4, 4, 3, 3)).astype(np.float32),
        **bn_stats(4),
    )
    fold = get_pass("fold-bn")()
    assert not fold(model).modified
    assert histogram(model) == {"Conv": 1, "BatchNormalization": 1}


def test_spatial_0_is_not_touched():
    model = build(
        """
        <ir_version: 7, opset_import: ["" : 8]>
        g (float[1,2,3] x) => (float[1,2,3] y) {
          y = BatchNormalization<spatial: int = 0>(x, gamma, beta, mean, var)
        }
        """,
        **{k: RNG.uniform(0.5, 2.0, (2, 3)).astype(np.float32) for k in ("gamma", "beta", "mean", "var")},
    )
    fold = get_pass("fold-bn")()
    fold(model)
    assert fold.rewrites == 0 and histogram(model) == {"BatchNormalization": 1}


def test_unknown_rank_is_left_and_logged(caplog: pytest.LogCaptureFixture):
    model = build(
        """
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[N,4,6,6] x) => (float[N,4,6,6] y) {
          r = Relu(x)
          y = BatchNormalization(r, gamma, beta, mean, var)
        }
        """,
        **bn_stats(4),
    )
    fold = get_pass("fold-bn")()
    with caplog.at_level(logging.INFO, logger="onnxq.passes.fold_batchnorm"):
        fold(model)
    assert fold.rewrites == 0 and "BatchNormalization" in histogram(model)
    assert "rank is unknown" in caplog.text
    # With shapes inferred the same BN is lowered.
    get_pass("infer-shapes")()(model)
    assert run_fold(model, rewrites=1) == {"Relu": 1, "Mul": 1, "Add": 1}


def test_lower_standalone_option_from_pipeline_text():
    (fold,) = parse_pipeline("fold-bn{lower-standalone=false}")
    model = build(
        """
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[N,4,6,6] x) => (float[N,4,6,6] y) {
          y = BatchNormalization(x, gamma, beta, mean, var)
        }
        """,
        **bn_stats(4),
    )
    fold(model)
    assert fold.rewrites == 0 and histogram(model) == {"BatchNormalization": 1}


def test_bn_in_if_branch_is_folded():
    model = build(
        """
        <ir_version: 8, opset_import: ["" : 13]>
        g (bool cond, float[1,3,6,6] x) => (float[1,4,4,4] y) {
          y = If(cond) <
            then_branch = then_g () => (float[1,4,4,4] t) {
              c = Conv(x, w)
              t = BatchNormalization(c, gamma, beta, mean, var)
            },
            else_branch = else_g () => (float[1,4,4,4] e) {
              e = Conv(x, w)
            }
          >
        }
        """,
        w=RNG.standard_normal((4, 3, 3, 3)).astype(np.float32),
        **bn_stats(4),
    )
    feeds = {"cond": np.array(True), "x": RNG.standard_normal((1, 3, 6, 6)).astype(np.float32)}
    expected = numerics.run_model(model, feeds)
    fold = get_pass("fold-bn")()
    fold(model)
    assert fold.rewrites == 1 and "BatchNormalization" not in histogram(model)
    onnx.checker.check_model(ir.to_proto(model), full_check=True)
    assert numerics.relative_error(expected["y"], numerics.run_model(model, feeds)["y"]) <= 1e-4
