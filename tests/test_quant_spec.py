"""Quantization intent: spec validation, qparams maths, weight quantization per tensor/channel/block."""

from __future__ import annotations

import numpy as np
import pytest

from onnxq.quant import qparams
from onnxq.quant.spec import DerivedSpec, Granularity, QDType, QuantSpec, SharedSpec, weight_spec


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(dtype=QDType.INT8, granularity=Granularity.PER_CHANNEL), "needs an axis"),
        (dict(dtype=QDType.INT8, axis=0), "per-tensor spec takes no axis"),
        (dict(dtype=QDType.INT4, granularity=Granularity.PER_BLOCK, axis=0, block_size=24), "power of two"),
        (dict(dtype=QDType.INT4, granularity=Granularity.PER_BLOCK, axis=0), "needs an axis and a block_size"),
        (dict(dtype=QDType.INT4), "4-bit quantization per tensor"),
        (dict(dtype=QDType.INT32), "only for derived bias"),
        (dict(dtype="int8"), "must be a QDType"),
        (dict(dtype=QDType.INT8, granularity=Granularity.PER_CHANNEL, axis=0, block_size=32), "no block_size"),
    ],
)
def test_invalid_specs_say_what_is_wrong(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        QuantSpec(**kwargs)


def test_min_opset_follows_granularity_and_dtype():
    assert QuantSpec(QDType.UINT8).min_opset == 10
    assert weight_spec("int8", 0).min_opset == 13
    assert QuantSpec(QDType.UINT16).min_opset == 21
    assert weight_spec("int4", 1, block_size=32).min_opset == 21


def test_shared_and_derived_specs_validate():
    with pytest.raises(ValueError, match="per-tensor"):
        SharedSpec("g", weight_spec("int8", 0))
    with pytest.raises(ValueError, match="non-empty group"):
        SharedSpec("", QuantSpec(QDType.UINT8))
    with pytest.raises(ValueError, match="names the activation and weight"):
        DerivedSpec("", "w")
    assert QDType.parse("UINT8") is QDType.UINT8
    with pytest.raises(ValueError, match="known: int8"):
        QDType.parse("int3")


def test_affine_qparams_represent_zero_and_range_ends():
    spec = QuantSpec(QDType.UINT8)
    scale, zero = qparams.qparams_from_range(-1.0, 3.0, spec)
    assert scale == pytest.approx(4.0 / 255) and zero.dtype == np.uint8
    x = np.array([-1.0, 0.0, 3.0], np.float32)
    back = qparams.dequantize(qparams.quantize(x, scale, zero, spec), scale, zero)
    assert back[1] == 0.0 and np.max(np.abs(back - x)) <= scale / 2 + 1e-7


def test_symmetric_int8_zero_point_is_zero_and_range_includes_zero():
    spec = QuantSpec(QDType.INT8, symmetric=True)
    scale, zero = qparams.qparams_from_range(0.5, 2.0, spec)  # widened to include 0
    assert zero == 0 and scale == pytest.approx(2.0 / 127.5)


def test_degenerate_range_gets_safe_scale(caplog):
    scale, zero = qparams.qparams_from_range(0.0, 0.0, QuantSpec(QDType.UINT8), name="const")
    assert scale == 1.0 and zero == 0 and np.isfinite(scale)
    assert "const" in caplog.text
    with pytest.raises(ValueError, match="not finite"):
        qparams.qparams_from_range(0.0, np.inf, QuantSpec(QDType.UINT8))


def test_per_channel_weights_error_bounded_per_channel():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 4, 3, 3)).astype(np.float32) * np.arange(1, 9, dtype=np.float32)[:, None, None, None]
    spec = weight_spec("int8", 0)
    q, scale, zero = qparams.quantize_weight(w, spec)
    assert q.dtype == np.int8 and scale.shape == (8,) and np.all(zero == 0)
    back = qparams.dequantize(q, scale, zero, axis=0)
    per_channel_err = np.abs(back - w).reshape(8, -1).max(axis=1)
    assert np.all(per_channel_err <= scale / 2 + 1e-6)


def test_per_block_weights_layout_matches_dequantize_linear():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((64, 6)).astype(np.float32)
    spec = weight_spec("int4", 0, block_size=32)
    q, scale, zero = qparams.quantize_weight(w, spec)
    assert scale.shape == (2, 6) and q.shape == w.shape
    expanded = np.repeat(scale, 32, axis=0)
    back = q.astype(np.float32) * expanded
    assert np.max(np.abs(back - w) - expanded / 2) <= 1e-6
    with pytest.raises(ValueError, match="not a multiple of block"):
        qparams.quantize_weight(rng.standard_normal((48, 6)), spec)
