"""mobilenet_v2ish: a small MobileNetV2-style network trained on the digits upsampled to 32x32.

Why it exists: depthwise convolutions (per-channel weight ranges differ wildly, the classic per-tensor
INT8 failure), inverted-residual Adds whose two inputs must share a scale, ReLU6 that exporters write as
Clip, and a BatchNormalization after every conv (kept unfolded so ``fold-bn`` has work on Conv with
groups). Trained rather than random so the accuracy figure means something.

Layout (input [batch, 1, 32, 32]): stem Conv3x3 1->16 + BN + ReLU6; inverted residual blocks
(expansion t, out channels c, stride s): (1,16,1) (4,24,2) (4,24,1)+res (4,32,2) (4,32,1)+res (4,48,1);
head Conv1x1 48->128 + BN + ReLU6, global average pool, Linear 128->10.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from models.datasets.digits import load_digits_split
from models.export import export_torch
from models.registry import BuildContext, BuiltModel
from models.training import accuracy, deterministic_torch, predict, train_classifier

logger = logging.getLogger(__name__)

IMAGE_SIZE, EPOCHS, CALIBRATION_SAMPLES = 32, 8, 128
#: (expansion, out_channels, stride) per inverted residual block
BLOCKS = ((1, 16, 1), (4, 24, 2), (4, 24, 1), (4, 32, 2), (4, 32, 1), (4, 48, 1))


def conv_bn(
    cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, relu6: bool = True
) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if relu6:
        layers.append(nn.ReLU6())
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """Expand (1x1) -> depthwise (3x3) -> project (1x1, linear); residual Add when shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int):
        super().__init__()
        hidden = cin * expansion
        layers = [conv_bn(cin, hidden, 1)] if expansion != 1 else []
        layers += [conv_bn(hidden, hidden, 3, stride, groups=hidden), conv_bn(hidden, cout, 1, relu6=False)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.residual else self.body(x)


class MobileNetV2ish(nn.Module):
    def __init__(self, classes: int = 10):
        super().__init__()
        layers: list[nn.Module] = [conv_bn(1, 16, 3)]
        channels = 16
        for expansion, out_channels, stride in BLOCKS:
            layers.append(InvertedResidual(channels, out_channels, stride, expansion))
            channels = out_channels
        layers += [conv_bn(channels, 128, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(128, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def build(context: BuildContext) -> BuiltModel:
    split = load_digits_split(size=IMAGE_SIZE, seed=context.seed)
    with deterministic_torch(context.seed):
        model = MobileNetV2ish()
        losses = train_classifier(
            model, split.x_train, split.y_train, epochs=EPOCHS, lr=4e-3, weight_decay=1e-4, seed=context.seed
        )
        logits = predict(model, split.x_test)
        exporter = export_torch(
            model,
            (torch.from_numpy(split.x_test[:2]),),
            context.onnx_path,
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
            opset=context.opset,
            exporter=context.exporter,
            keep_batchnorm=True,
        )
    test_accuracy = accuracy(logits, split.y_test)
    logger.info("mobilenet_v2ish: test accuracy %.4f", test_accuracy)
    return BuiltModel(
        calib={"image": split.calibration(CALIBRATION_SAMPLES, seed=context.seed)},
        eval_inputs={"image": split.x_test},
        labels=split.y_test,
        batch_axes={"image": 0},
        exporter=exporter,
        source={
            "weights": f"trained here (seed {context.seed}, {EPOCHS} epochs AdamW)",
            "data": "sklearn.datasets.load_digits, bilinear upsampling 8x8 -> 32x32",
        },
        metrics={
            "test_accuracy": round(test_accuracy, 4),
            "final_train_loss": round(losses[-1], 4),
            "test_samples": int(len(split.y_test)),
            "parameters": sum(p.numel() for p in model.parameters()),
        },
        extra_eval={"reference:logits": logits},
        notes=[
            "BatchNormalization left unfolded on purpose (exported without constant folding)",
            "ReLU6 exports as Clip(0, 6)",
        ],
    )
