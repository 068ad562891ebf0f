"""The default pipeline on real torch exports: the graphs exporters write, not hand-written patterns.

Small torch modules are exported with torch's legacy (TorchScript) exporter at opsets 11, 13 and 17 with a
dynamic batch, as most third-party ONNX files were made, then loaded with ``onnxq.load``, optimized with the
``default`` pipeline and checked: BatchNormalization folded, LayerNorm written as explicit mean/variance
maths fused into LayerNormalization (raising the opset to 17), GELU fused into ``Gelu`` only where the
opset reaches 20, activations recognised, outputs within 1e-4 of the original under ONNX Runtime, and the
result saved.
"""

from __future__ import annotations

import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

import onnxq  # noqa: E402
from onnxq import numerics  # noqa: E402

pytestmark = pytest.mark.torch

OPSETS = (11, 13, 17)
BATCH = 2


class ConvBnRelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)))


class ConvTransposeBn(nn.Module):
    def __init__(self):
        super().__init__()
        self.up, self.bn = nn.ConvTranspose2d(8, 4, 2, stride=2), nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn(self.up(x))


class LinearBn1d(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.bn = nn.Linear(16, 32), nn.BatchNorm1d(32)

    def forward(self, x):
        return self.bn(self.fc(x))


class ExplicitLayerNorm(nn.Module):
    """LayerNorm as mean/variance maths, so every exporter and opset writes it decomposed."""

    def __init__(self, width: int, eps: float = 1e-5):
        super().__init__()
        self.weight, self.bias, self.eps = (
            nn.Parameter(torch.ones(width)),
            nn.Parameter(torch.zeros(width)),
            eps,
        )

    def forward(self, x):
        mean = x.mean(-1, keepdim=True)
        variance = ((x - mean) ** 2).mean(-1, keepdim=True)
        return (x - mean) / torch.sqrt(variance + self.eps) * self.weight + self.bias


class TransformerBlock(nn.Module):
    """Pre-norm attention + GELU MLP; ``approximate`` picks erf ("none") or tanh GELU."""

    def __init__(self, approximate: str, width: int = 32):
        super().__init__()
        self.width = width
        self.ln1, self.ln2 = ExplicitLayerNorm(width), ExplicitLayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.mlp = nn.Sequential(
            nn.Linear(width, 4 * width), nn.GELU(approximate=approximate), nn.Linear(4 * width, width)
        )

    def forward(self, x):
        q, k, v = self.qkv(self.ln1(x)).split(self.width, dim=-1)
        attention = torch.softmax(q @ k.transpose(-1, -2) / self.width**0.5, dim=-1)
        x = x + self.proj(attention @ v)
        return x + self.mlp(self.ln2(x))


class Activations(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 8)
        self.hardswish, self.hardsigmoid, self.silu = nn.Hardswish(), nn.Hardsigmoid(), nn.SiLU()

    def forward(self, x):
        y = self.hardswish(self.conv(x))
        y = self.silu(y) * self.hardsigmoid(y)
        return self.fc(y.mean((2, 3)))


#: name -> (constructor, input shape at batch BATCH)
CASES = {
    "conv_bn_relu": (ConvBnRelu, (BATCH, 3, 16, 16)),
    "convtranspose_bn": (ConvTransposeBn, (BATCH, 8, 8, 8)),
    "linear_bn1d": (LinearBn1d, (BATCH, 16)),
    "block_gelu_erf": (lambda: TransformerBlock("none"), (BATCH, 10, 32)),
    "block_gelu_tanh": (lambda: TransformerBlock("tanh"), (BATCH, 10, 32)),
    "activations": (Activations, (BATCH, 3, 16, 16)),
}
BATCHNORM_CASES = ("conv_bn_relu", "convtranspose_bn", "linear_bn1d")


def _module(name: str):
    """The module with seeded weights and non-trivial BN statistics (fresh BN folds to almost identity)."""
    torch.manual_seed(0)
    module = CASES[name][0]()
    with torch.no_grad():
        for sub in module.modules():
            if isinstance(sub, nn.modules.batchnorm._BatchNorm):
                sub.running_mean.uniform_(-1, 1)
                sub.running_var.uniform_(0.5, 2)
                sub.weight.uniform_(0.5, 1.5)
                sub.bias.uniform_(-0.5, 0.5)
    return module.eval()


def _export(name: str, opset: int, folder: Path) -> Path:
    path = folder / f"{name}_op{opset}.onnx"
    example = torch.randn(*CASES[name][1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # PRESERVE keeps BatchNormalization (EVAL would let the exporter fold it into Conv itself).
        torch.onnx.export(
            _module(name),
            (example,),
            str(path),
            dynamo=False,
            opset_version=opset,
            training=torch.onnx.TrainingMode.PRESERVE,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
        )
    return path


def _ops(model) -> Counter:
    return Counter(node.op_type for node in model.graph)


def _optimize_and_compare(path: Path, shape: tuple[int, ...], passes: str = "default"):
    model = onnxq.load(path)
    before = _ops(model)
    feeds = {"x": np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
    reference = numerics.run_model(model, feeds)
    optimized, report = onnxq.optimize(model, passes, input_shapes={"x": shape})
    actual = numerics.run_model(optimized, feeds)
    for output, value in reference.items():
        assert numerics.relative_error(value, actual[output]) <= 1e-4, f"{path.name}: output {output} drifted"
    saved = onnxq.save(optimized, path.with_suffix(".opt.onnx"))
    assert onnxq.load(saved) is not None
    return before, _ops(optimized), optimized.opset_imports.get("", 0), report


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("name", list(CASES))
def test_default_pipeline_on_torch_export(tmp_path: Path, name: str, opset: int):
    before, after, final_opset, _ = _optimize_and_compare(_export(name, opset, tmp_path), CASES[name][1])
    assert after["BatchNormalization"] == 0
    assert after["Identity"] == 0
    if name in BATCHNORM_CASES:
        assert before["BatchNormalization"] == 1
    if name.startswith("block"):
        assert before["LayerNormalization"] == 0 and after["LayerNormalization"] == 2
        assert final_opset >= 17  # fuse-layernorm raises the opset where it fuses
        assert after["ReduceMean"] == 0 and after["Sqrt"] == 0
        # Gelu is a standard op only from opset 20: below it the decomposition must stay as exported.
        assert after["Gelu"] == 0 and final_opset < 20
        form = "Erf" if name.endswith("erf") else "Tanh"
        assert after[form] == before[form] == 1
    else:
        assert final_opset == opset  # nothing to fuse that needs a newer opset
    if name == "activations":
        assert after["Sigmoid"] == 1  # SiLU is recognised, not rewritten: no standard op before 24
        if opset >= 14:
            assert after["HardSwish"] == 1
        else:
            assert after["HardSwish"] == 0 and after["HardSigmoid"] == 2


@pytest.mark.parametrize("name", ["block_gelu_erf", "block_gelu_tanh"])
def test_gelu_fuses_once_the_opset_reaches_20(tmp_path: Path, name: str):
    path = _export(name, 13, tmp_path)
    before, after, final_opset, _ = _optimize_and_compare(
        path, CASES[name][1], "default,fuse-gelu{upgrade_opset=true}"
    )
    assert final_opset == 20
    assert after["Gelu"] == 1 and after["Erf"] == 0 and after["Tanh"] == 0
    assert before["Erf" if name.endswith("erf") else "Tanh"] == 1


def test_optimized_model_keeps_dynamic_batch_without_input_shapes(tmp_path: Path):
    path = _export("block_gelu_erf", 13, tmp_path)
    model = onnxq.load(path)
    optimized, _ = onnxq.optimize(model, "default")
    for batch in (1, 3):
        feeds = {"x": np.random.default_rng(batch).standard_normal((batch, 10, 32)).astype(np.float32)}
        expected = numerics.run_model(onnxq.load(path), feeds)["y"]
        assert numerics.relative_error(expected, numerics.run_model(optimized, feeds)["y"]) <= 1e-4
