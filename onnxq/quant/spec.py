"""Quantization intent as data: what a tensor should become, validated when it is written down.

* ``QuantSpec``: dtype, granularity (per-tensor, per-channel with axis, per-block with axis and block size),
  symmetric or affine. Invalid combinations fail in ``__post_init__`` with a message that says what is wrong.
  A per-block spec may quantize its block scales too (``block_scale_bits``, LPBQ, Qualcomm's "low power
  blockwise quantization"): each block scale is an integer ``k`` in ``[1, 2^bits]`` times one float scale per
  output channel (``channel_axis``), so the runtime stores 4-bit weights plus a few bits per block.
* ``SharedSpec``: tensors that must share one scale (Concat inputs and output, a residual Add where the
  target needs it): the engine unions their calibrated ranges.
* ``DerivedSpec``: a tensor whose parameters follow from others, e.g. the int32 bias of Conv/Gemm with
  ``scale = s_act · s_w`` and zero point 0.

Backends decide *what* gets which spec (their capability tables); one engine decides *how* (calibration,
Q/DQ insertion). Nothing here knows about any backend.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import ml_dtypes
import numpy as np
import onnx_ir as ir


class QDType(enum.Enum):
    """Integer types Q/DQ can carry, with their ranges and the opset that first allows them."""

    INT8 = ("int8", 8, True, 10)
    UINT8 = ("uint8", 8, False, 10)
    INT16 = ("int16", 16, True, 21)
    UINT16 = ("uint16", 16, False, 21)
    INT4 = ("int4", 4, True, 21)
    UINT4 = ("uint4", 4, False, 21)
    INT32 = ("int32", 32, True, 10)  # bias only (DequantizeLinear accepts int32)

    def __init__(self, label: str, bits: int, signed: bool, min_opset: int):
        self.label, self.bits, self.signed, self.min_opset = label, bits, signed, min_opset

    @property
    def qmin(self) -> int:
        return -(1 << (self.bits - 1)) if self.signed else 0

    @property
    def qmax(self) -> int:
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1

    @property
    def numpy(self) -> np.dtype:
        special = {"int4": ml_dtypes.int4, "uint4": ml_dtypes.uint4}
        return np.dtype(special.get(self.label, self.label))

    @property
    def ir(self) -> ir.DataType:
        return ir.DataType[self.label.upper()]

    @classmethod
    def parse(cls, text: str) -> QDType:
        for member in cls:
            if member.label == text.lower():
                return member
        raise ValueError(f"unknown quantized dtype '{text}'; known: {', '.join(m.label for m in cls)}")


class Granularity(enum.Enum):
    PER_TENSOR = "per-tensor"
    PER_CHANNEL = "per-channel"
    PER_BLOCK = "per-block"


@dataclass(frozen=True)
class QuantSpec:
    """How one tensor is quantized."""

    dtype: QDType
    granularity: Granularity = Granularity.PER_TENSOR
    axis: int | None = None
    block_size: int | None = None
    symmetric: bool = False
    #: per-block only: the output-channel axis, which LPBQ's float scales run along
    channel_axis: int | None = None
    #: per-block only (LPBQ): block scales are integers in [1, 2^bits] times a float scale per channel
    block_scale_bits: int | None = None
    #: LPBQ only: write the integer block scales as uint8 read through a DequantizeLinear by the per-channel
    #: scale (the explicit LPBQ chain) rather than as float32 block scales of the same values
    int_block_scales: bool = False
    #: symmetric signed only: the largest integer written, below the dtype's own top, for a runtime that
    #: saturates stored values above it (the QNN HTP reads int16 weights above 32639 as 32639); the scale
    #: then maps the largest magnitude to this level
    max_level: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.dtype, QDType):
            raise TypeError(f"QuantSpec.dtype must be a QDType, got {self.dtype!r}")
        if self.dtype is QDType.INT32:
            raise ValueError("int32 is only for derived bias specs (DerivedSpec), not for QuantSpec")
        if self.granularity is Granularity.PER_TENSOR:
            if self.axis is not None or self.block_size is not None:
                raise ValueError("a per-tensor spec takes no axis and no block_size")
        elif self.granularity is Granularity.PER_CHANNEL:
            if self.axis is None:
                raise ValueError("a per-channel spec needs an axis")
            if self.block_size is not None:
                raise ValueError("a per-channel spec takes no block_size (use per-block)")
        elif self.granularity is Granularity.PER_BLOCK:
            if self.axis is None or self.block_size is None:
                raise ValueError("a per-block spec needs an axis and a block_size")
            if self.block_size < 2 or self.block_size & (self.block_size - 1):
                raise ValueError(f"block_size must be a power of two >= 2, got {self.block_size}")
        if self.dtype in (QDType.INT4, QDType.UINT4) and self.granularity is Granularity.PER_TENSOR:
            raise ValueError("4-bit quantization per tensor loses too much; use per-channel or per-block")
        if self.channel_axis is not None and self.granularity is not Granularity.PER_BLOCK:
            raise ValueError("channel_axis is for per-block specs (per-channel specs use axis)")
        if self.block_scale_bits is not None:
            if self.granularity is not Granularity.PER_BLOCK or not self.symmetric:
                raise ValueError("quantized block scales (LPBQ) need a symmetric per-block spec")
            if self.channel_axis is None or self.channel_axis == self.axis:
                raise ValueError("quantized block scales (LPBQ) need a channel_axis other than the block "
                                 "axis")
            if not 1 <= self.block_scale_bits <= 7:
                raise ValueError(f"block_scale_bits must be in 1..7 (uint8 storage), got "
                                 f"{self.block_scale_bits}")
        elif self.int_block_scales:
            raise ValueError("int_block_scales needs block_scale_bits (integer block scales are LPBQ's)")
        if self.max_level is not None:
            if not (self.symmetric and self.dtype.signed):
                raise ValueError("max_level narrows a symmetric signed spec")
            if not 0 < self.max_level <= self.dtype.qmax:
                raise ValueError(f"max_level must be in 1..{self.dtype.qmax} for {self.dtype.label}, got "
                                 f"{self.max_level}")

    @property
    def qmin(self) -> int:
        return self.dtype.qmin

    @property
    def qmax(self) -> int:
        """The largest integer this spec writes: the dtype's top, or ``max_level``."""
        return self.dtype.qmax if self.max_level is None else self.max_level

    @property
    def min_opset(self) -> int:
        """Lowest default-domain opset at which a Q/DQ pair can carry this spec."""
        needed = self.dtype.min_opset
        if self.granularity is Granularity.PER_CHANNEL:
            needed = max(needed, 13)
        if self.granularity is Granularity.PER_BLOCK:
            needed = max(needed, 21)
        return needed

    def describe(self) -> str:
        parts = [self.dtype.label, self.granularity.value]
        if self.axis is not None:
            parts.append(f"axis={self.axis}")
        if self.block_size is not None:
            parts.append(f"block={self.block_size}")
        if self.block_scale_bits is not None:
            parts.append(f"lpbq(channel_axis={self.channel_axis}, {self.block_scale_bits}-bit block scales"
                         + (", uint8+DQ" if self.int_block_scales else "") + ")")
        if self.max_level is not None:
            parts.append(f"max={self.max_level}")
        parts.append("sym" if self.symmetric else "asym")
        return " ".join(parts)


@dataclass(frozen=True)
class SharedSpec:
    """Tensors in one ``group`` share a single scale/zero point (ranges are unioned)."""

    group: str
    spec: QuantSpec

    def __post_init__(self) -> None:
        if not self.group:
            raise ValueError("a SharedSpec needs a non-empty group name")
        if self.spec.granularity is not Granularity.PER_TENSOR:
            raise ValueError("shared specs must be per-tensor (one scale for all members)")


@dataclass(frozen=True)
class DerivedSpec:
    """Bias of Conv/Gemm/MatMul: int32, ``scale = s_activation · s_weight``, zero point 0."""

    activation: str
    weight: str
    axis: int = 0

    def __post_init__(self) -> None:
        if not self.activation or not self.weight:
            raise ValueError("a DerivedSpec names the activation and weight tensors its scale derives from")


AnySpec = QuantSpec | SharedSpec | DerivedSpec


def activation_spec(dtype: str, *, symmetric: bool = False) -> QuantSpec:
    return QuantSpec(QDType.parse(dtype), Granularity.PER_TENSOR, symmetric=symmetric)


def weight_spec(dtype: str, axis: int | None, *, block_size: int | None = None,
                channel_axis: int | None = None, block_scale_bits: int | None = None,
                int_block_scales: bool = False, max_level: int | None = None) -> QuantSpec:
    """Symmetric weights: per-channel on ``axis``, per-block along ``axis`` if ``block_size`` (LPBQ with
    ``block_scale_bits`` and the output channels on ``channel_axis``), else per-tensor; ``max_level``: see
    ``QuantSpec``."""
    qdtype = QDType.parse(dtype)
    if block_size is not None:
        return QuantSpec(qdtype, Granularity.PER_BLOCK, axis=axis, block_size=block_size, symmetric=True,
                         channel_axis=channel_axis, block_scale_bits=block_scale_bits,
                         int_block_scales=int_block_scales, max_level=max_level)
    if axis is None:
        return QuantSpec(qdtype, Granularity.PER_TENSOR, symmetric=True, max_level=max_level)
    return QuantSpec(qdtype, Granularity.PER_CHANNEL, axis=axis, symmetric=True, max_level=max_level)
