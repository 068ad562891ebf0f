"""Streaming calibration: validated samples → mergeable statistics → clipping ranges.

* ``data``: ``CalibrationData`` reads .npz files, folders of .npz, Python iterables and ONNX Runtime
  ``CalibrationDataReader``s, validates each sample against the model, holds back verification samples.
* ``observers``: ``MinMaxObserver`` and the exact power-of-two ``HistogramObserver`` (streaming equals
  one-shot, whatever the batching).
* ``collect``: ``collect_statistics`` runs the model once per sample with the wanted tensors exposed.
* ``ranges``: ``TensorStats`` and ``compute_range`` for minmax, percentile, entropy and mse.
"""

from onnxq.calibration.collect import collect_statistics
from onnxq.calibration.data import CalibrationData
from onnxq.calibration.observers import HistogramObserver, MinMaxObserver
from onnxq.calibration.ranges import METHODS, TensorStats, compute_range
from onnxq.errors import CalibrationDataError

__all__ = [
    "METHODS",
    "CalibrationData",
    "CalibrationDataError",
    "HistogramObserver",
    "MinMaxObserver",
    "TensorStats",
    "collect_statistics",
    "compute_range",
]
