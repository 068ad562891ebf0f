"""Quantization recipe: the target's defaults, overridable from a TOML file and CLI flags.

    # recipe.toml
    precision = "a8w8"          # default precision for the target
    method = "percentile"       # minmax | percentile | entropy | mse
    percentile = 99.99
    calibration_size = 128
    holdout = 16                # held-back calibration samples used to verify
    max_error = 0.1             # budget: relative L2 error of every output on the held-back samples
                                # (default 0.1; 0.03 for a model with a [batch, classes] output)
    moving_average = 0.01       # optional, minmax only
    bias_correction = true      # Conv/Gemm biases absorb the mean shift of their rounded weights
    [precision_by]              # op type or node-name glob -> precision name or "float"
    Softmax = "float"
    "/head/*" = "a16w8"
    exclude = ["/model.22/*"]   # node-name globs or op types kept float
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from onnxq.errors import OptionError
from onnxq.quant.annotate import FLOAT, Overrides

METHODS = ("minmax", "percentile", "entropy", "mse")
#: Default accuracy budget: worst relative L2 error ||q − f|| / ||f|| over outputs on held-back samples,
#: 0.1 (20 dB SQNR): enough for maps, boxes, embeddings and sequences (see README, BENCHMARKS.md).
DEFAULT_MAX_ERROR = 0.1
#: Default budget of a model with a classifier output ([batch, classes]): its job is the argmax, and a
#: 1000-way logit vector has near-ties that 0.1 flips. EfficientNet-Lite0 on the zoo's 96 eval crops: top-1
#: agreement 83% at 0.1, 98% at 0.05, 100% at 0.03 (1.7x FP32 speed still). See ``default_budget``.
CLASSIFIER_MAX_ERROR = 0.03


@dataclass(frozen=True)
class Recipe:
    precision: str | None = None
    method: str = "minmax"
    percentile: float = 99.999
    moving_average: float | None = None
    calibration_size: int | None = None
    holdout: int | None = None  # None: a quarter of the samples, at most 16
    max_error: float | None = None  # None: DEFAULT_MAX_ERROR, or CLASSIFIER_MAX_ERROR for classifiers
    fallback: bool = True
    bias_correction: bool = True  # take the mean shift of rounded weights out of Conv/Gemm biases
    precision_by: dict[str, str] = field(default_factory=dict)
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise OptionError(f"unknown calibration method '{self.method}'; known: {', '.join(METHODS)}")
        if not 50.0 < self.percentile <= 100.0:
            raise OptionError(f"percentile must be in (50, 100], got {self.percentile}")
        if self.max_error is not None and not (self.max_error > 0 and self.max_error != float("inf")):  # and nan
            raise OptionError(f"max_error must be positive and finite, got {self.max_error}")
        if (self.holdout is not None and self.holdout < 0) or (self.calibration_size is not None and self.calibration_size < 1):
            raise OptionError("holdout must be >= 0 and calibration_size >= 1")
        if self.moving_average is not None and not 0 < self.moving_average <= 1:
            raise OptionError(f"moving_average must be in (0, 1], got {self.moving_average}")

    def overrides(self) -> Overrides:
        rules = tuple((pattern, FLOAT) for pattern in self.exclude)
        return Overrides(rules + tuple(sorted(self.precision_by.items())))

    def with_options(self, **options) -> Recipe:
        """Apply CLI flags that were given (None means not given)."""
        return replace(self, **{k: v for k, v in options.items() if v is not None})

    @classmethod
    def from_toml(cls, path: Path) -> Recipe:
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise OptionError(f"recipe file '{path}' does not exist") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise OptionError(f"recipe file '{path}' is not valid TOML: {exc}") from None
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise OptionError(f"recipe '{path}': unknown keys {unknown}; known: {', '.join(sorted(known))}")
        if "exclude" in data:
            data["exclude"] = tuple(data["exclude"])
        try:
            return cls(**data)
        except TypeError as exc:
            raise OptionError(f"recipe '{path}': {exc}") from None


#: Ops between a classifier's last linear layer and its output (scores, probabilities, a reshape).
CLASSIFIER_TAIL_OPS = frozenset({"Softmax", "LogSoftmax", "Sigmoid", "Identity", "Reshape", "Flatten", "Squeeze",
                                 "Add"})
CLASSIFIER_HEAD_OPS = frozenset({"Gemm", "MatMul"})


def default_budget(outputs) -> float:
    """The budget when none is given: ``CLASSIFIER_MAX_ERROR`` if an output is a classifier's, else
    ``DEFAULT_MAX_ERROR``. ``outputs``: one ``(shape, head)`` per float output, ``shape`` a tuple (ints for
    fixed dims, anything else for symbolic ones) or None, ``head`` the op type that computes it once
    ``CLASSIFIER_TAIL_OPS`` are looked through. A classifier's output is ``[batch, classes]`` (a fixed
    class count ≥ 2) computed by a linear layer (Gemm/MatMul): a pooled, normalised embedding ([batch, 384]
    from a Div) is not one. Sequences of class scores ([batch, steps, vocabulary]: a recogniser, a language
    model) are judged like other tensors: their task metrics held at 0.1 (BENCHMARKS.md)."""
    for shape, head in outputs:
        if (shape is not None and len(shape) == 2 and isinstance(shape[1], int) and shape[1] >= 2
                and head in CLASSIFIER_HEAD_OPS):
            return CLASSIFIER_MAX_ERROR
    return DEFAULT_MAX_ERROR
