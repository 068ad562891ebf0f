"""Write a small model that looks like what third-party exporters produce, for the README's main job.

No torch needed: the graph is written with onnx.helper at opset 13 / IR 7 with a dynamic batch dim, and
contains everything the default pipeline rewrites: Conv + unfolded BatchNormalization, decomposed
HardSwish (paddle2onnx style), Identity/Dropout no-ops, a decomposed LayerNorm, an erf-form GELU, and
MatMul + Add heads. Weights are seeded, so the file is byte-identical on every run.

    python tools/make_demo_model.py demo.onnx [--calib demo.calib.npz]
"""

from __future__ import annotations

import argparse

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def build(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)

    def const(name: str, array: np.ndarray) -> onnx.TensorProto:
        return numpy_helper.from_array(np.asarray(array, dtype=np.float32), name)

    c1, c2, d = 8, 16, 16
    inits = [
        const("conv1.w", rng.normal(0, 0.3, (c1, 3, 3, 3))),
        const("conv1.b", rng.normal(0, 0.1, c1)),
        const("bn1.scale", rng.uniform(0.5, 1.5, c1)),
        const("bn1.bias", rng.normal(0, 0.1, c1)),
        const("bn1.mean", rng.normal(0, 0.1, c1)),
        const("bn1.var", rng.uniform(0.5, 2.0, c1)),
        const("conv2.w", rng.normal(0, 0.2, (c2, c1, 3, 3))),
        const("bn2.scale", rng.uniform(0.5, 1.5, c2)),
        const("bn2.bias", rng.normal(0, 0.1, c2)),
        const("bn2.mean", rng.normal(0, 0.1, c2)),
        const("bn2.var", rng.uniform(0.5, 2.0, c2)),
        const("three", [3.0]), const("six", [6.0]), const("zero", [0.0]),
        const("ln.gamma", rng.uniform(0.8, 1.2, d)), const("ln.beta", rng.normal(0, 0.1, d)),
        const("ln.eps", [1e-5]), const("two", [2.0]),
        const("sqrt2", [np.sqrt(2.0)]), const("one", [1.0]), const("half", [0.5]),
        const("fc1.w", rng.normal(0, 0.25, (d, 32))), const("fc1.b", rng.normal(0, 0.1, 32)),
        const("fc2.w", rng.normal(0, 0.2, (32, 10))), const("fc2.b", rng.normal(0, 0.1, 10)),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "axes_last"),
        numpy_helper.from_array(np.array([0, -1], dtype=np.int64), "flat_shape"),
    ]
    n = helper.make_node
    nodes = [
        n("Conv", ["x", "conv1.w", "conv1.b"], ["c1"], pads=[1, 1, 1, 1], strides=[2, 2]),
        n("BatchNormalization", ["c1", "bn1.scale", "bn1.bias", "bn1.mean", "bn1.var"], ["b1"], epsilon=1e-5),
        # HardSwish written out: x * clip(x + 3, 0, 6) / 6
        n("Add", ["b1", "three"], ["hs_a"]),
        n("Clip", ["hs_a", "zero", "six"], ["hs_c"]),
        n("Mul", ["b1", "hs_c"], ["hs_m"]),
        n("Div", ["hs_m", "six"], ["h1"]),
        n("Identity", ["h1"], ["h1_id"]),
        n("Conv", ["h1_id", "conv2.w"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2]),
        n("BatchNormalization", ["c2", "bn2.scale", "bn2.bias", "bn2.mean", "bn2.var"], ["b2"], epsilon=1e-5),
        n("Relu", ["b2"], ["r2"]),
        n("GlobalAveragePool", ["r2"], ["gap"]),
        n("Reshape", ["gap", "flat_shape"], ["feat"]),
        n("Dropout", ["feat"], ["feat_d"]),
        # LayerNorm written out over the last axis.
        n("ReduceMean", ["feat_d"], ["ln_mu"], axes=[-1]),
        n("Sub", ["feat_d", "ln_mu"], ["ln_d"]),
        n("Pow", ["ln_d", "two"], ["ln_sq"]),
        n("ReduceMean", ["ln_sq"], ["ln_var"], axes=[-1]),
        n("Add", ["ln_var", "ln.eps"], ["ln_ve"]),
        n("Sqrt", ["ln_ve"], ["ln_std"]),
        n("Div", ["ln_d", "ln_std"], ["ln_n"]),
        n("Mul", ["ln_n", "ln.gamma"], ["ln_g"]),
        n("Add", ["ln_g", "ln.beta"], ["ln_out"]),
        n("MatMul", ["ln_out", "fc1.w"], ["fc1_m"]),
        n("Add", ["fc1_m", "fc1.b"], ["fc1"]),
        # GELU, erf form: 0.5 * x * (1 + erf(x / sqrt(2)))
        n("Div", ["fc1", "sqrt2"], ["g_d"]),
        n("Erf", ["g_d"], ["g_e"]),
        n("Add", ["g_e", "one"], ["g_a"]),
        n("Mul", ["fc1", "g_a"], ["g_m"]),
        n("Mul", ["g_m", "half"], ["gelu"]),
        n("MatMul", ["gelu", "fc2.w"], ["fc2_m"]),
        n("Add", ["fc2_m", "fc2.b"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes, "demo_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="onnxq-demo")
    model.ir_version = 7
    onnx.checker.check_model(model, full_check=True)
    return model


def calibration_data(samples: int = 32, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x": rng.normal(0, 1, (samples, 1, 3, 32, 32)).astype(np.float32)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output")
    parser.add_argument("--calib", help="also write calibration inputs (.npz)")
    args = parser.parse_args()
    onnx.save(build(), args.output)
    if args.calib:
        np.savez(args.calib, **calibration_data())


if __name__ == "__main__":
    main()
