"""Small, deterministic torch training loops for the zoo's own models.

Determinism comes from: one intra-op thread (parallel reductions sum in varying order), a seeded
``torch.Generator`` for initialisation and shuffling, ``torch.use_deterministic_algorithms``, and no data
loader workers. With that, a build on the same machine and torch version gives bit-identical weights,
hence a bit-identical ONNX file.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import numpy as np

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def deterministic_torch(seed: int) -> Iterator[None]:
    """Seed torch, pin it to one thread and deterministic kernels; restore the previous settings after."""
    import torch

    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def train_classifier(
    model,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    lr: float,
    batch_size: int = 64,
    weight_decay: float = 0.0,
    seed: int = 0,
) -> list[float]:
    """Train with AdamW + cosine decay on cross-entropy; return the mean loss per epoch."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    inputs, targets = torch.from_numpy(x), torch.from_numpy(y)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * ((len(x) + batch_size - 1) // batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    losses = []
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        total = 0.0
        for start in range(0, len(x), batch_size):
            index = order[start : start + batch_size]
            loss = torch.nn.functional.cross_entropy(model(inputs[index]), targets[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(index)
        losses.append(total / len(x))
    model.eval()
    logger.debug("training losses per epoch: %s", ", ".join(f"{v:.3f}" for v in losses))
    return losses


def predict(model, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Model outputs (eval mode, no grad) for ``x``, as one float32 array."""
    import torch

    model.eval()
    outputs = []
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            outputs.append(model(torch.from_numpy(x[start : start + batch_size])).numpy())
    return np.concatenate(outputs)


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(-1) == labels).mean())
