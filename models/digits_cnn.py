"""digits_cnn: a small CNN trained on scikit-learn's digits in a few seconds, exported with BN unfolded.

Why it exists: the fastest model in the zoo with a real accuracy figure, so tests can check that a rewrite
or quantization keeps what the model *does* (test accuracy), not just that numbers stay close. Its two
BatchNormalization nodes are kept in the export on purpose: our ``fold-bn`` pass has to remove them.

Network: Conv3x3(1->16)+BN+ReLU, Conv3x3(16->32)+BN+ReLU, MaxPool2, Linear(32*4*4 -> 10), on 8x8 inputs
scaled to [0, 1]. Trained with AdamW for 20 epochs (seed 0, one thread): about 98 % test accuracy.
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

CALIBRATION_SAMPLES = 128


class DigitsCNN(nn.Module):
    """Two conv blocks and a linear classifier; BN after each conv so there is something to fold."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Linear(32 * 4 * 4, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def build(context: BuildContext) -> BuiltModel:
    split = load_digits_split(size=8, seed=context.seed)
    with deterministic_torch(context.seed):
        model = DigitsCNN()
        losses = train_classifier(model, split.x_train, split.y_train, epochs=20, lr=3e-3, seed=context.seed)
        logits = predict(model, split.x_test)
        test_accuracy = accuracy(logits, split.y_test)
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
    logger.info("digits_cnn: test accuracy %.4f (final train loss %.4f)", test_accuracy, losses[-1])
    return BuiltModel(
        calib={"image": split.calibration(CALIBRATION_SAMPLES, seed=context.seed)},
        eval_inputs={"image": split.x_test},
        labels=split.y_test,
        batch_axes={"image": 0},
        exporter=exporter,
        source={"weights": "trained here (seed 0, 20 epochs AdamW)", "data": "sklearn.datasets.load_digits"},
        metrics={
            "test_accuracy": round(test_accuracy, 4),
            "final_train_loss": round(losses[-1], 4),
            "test_samples": int(len(split.y_test)),
        },
        extra_eval={"reference:logits": logits},
        notes=[
            "BatchNormalization left unfolded on purpose (exported without constant folding)",
            "input: 8x8 grey levels / 16, shape [batch, 1, 8, 8]",
        ],
    )
