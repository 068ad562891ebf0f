"""The onnxq model zoo: real models with real calibration and evaluation data, built reproducibly.

    python -m models list
    python -m models build digits_cnn [--out DIR] [--opset N]

Each build writes ``NAME.onnx``, ``NAME.calib.npz``, ``NAME.eval.npz`` and ``NAME.json`` (what the model is,
which exporter and opset made it, where the weights came from, measured metrics). See ``models.catalog``
for the models and ``models.artifacts`` for the sample-file layout.
"""

from models.artifacts import batches, read_samples, split_eval
from models.registry import (
    DEFAULT_CACHE_DIR,
    BuiltModel,
    ModelSpec,
    ZooError,
    build,
    get_spec,
    load_record,
    specs,
)

__all__ = [
    "DEFAULT_CACHE_DIR",
    "BuiltModel",
    "ModelSpec",
    "ZooError",
    "batches",
    "build",
    "get_spec",
    "load_record",
    "read_samples",
    "specs",
    "split_eval",
]
