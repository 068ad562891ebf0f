"""Typed errors of onnxq.

Every error a user can cause (a bad file, a bad option, a bad path) is an ``OnnxqError``: the CLI prints
its message as one line on stderr and exits with ``exit_code`` (2 for bad input), with no traceback unless
``--debug``. Messages name the problem and, where there is a closed set of valid choices, list them.
"""

from __future__ import annotations

from collections.abc import Iterable


class OnnxqError(Exception):
    """Base class of every error onnxq raises on purpose."""

    exit_code = 2


class InvalidModelError(OnnxqError):
    """The file is not a well-formed ONNX model (not protobuf, truncated, cycle, dangling input, ...)."""


class UnsafeModelError(OnnxqError):
    """The model asks for something onnxq refuses on principle (path traversal, absurd allocation)."""


class OpsetError(OnnxqError):
    """An opset the installed onnx/ONNX Runtime cannot convert to or run."""


class OutputPathError(OnnxqError):
    """The output path cannot be written safely (a directory, unwritable, the input itself)."""


class OptionError(OnnxqError):
    """A command-line or API option is malformed."""


class UnknownNameError(OptionError):
    """A name (pass, pipeline, target, ...) that is not one of the known choices."""

    def __init__(self, kind: str, name: str, choices: Iterable[str]):
        self.kind, self.name, self.choices = kind, name, sorted(choices)
        super().__init__(f"unknown {kind} '{name}'; known: {', '.join(self.choices)}")


class VerificationError(OnnxqError):
    """A pipeline changed the model's numerics beyond the tolerance (raised by ``--verify``)."""

    exit_code = 1


class ValidationError(OnnxqError):
    """A model onnxq produced failed onnx.checker or ONNX Runtime loading; it was not written."""

    exit_code = 1


class CalibrationDataError(OnnxqError):
    """Calibration samples that cannot be used: unreadable file, wrong input names, shapes, dtypes, NaN/Inf,
    an empty set. The message names the input and the sample."""
