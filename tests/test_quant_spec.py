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


def _whole_tensor_quantize(x, scale, zero, spec, axis=None):
    """The one-shot formula: clip(round(x / s) + z) in float64 over the whole tensor at once."""
    if axis is not None and np.ndim(scale) == 1:
        shape = [1] * x.ndim
        shape[axis] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    q = np.round(x.astype(np.float64) / scale.astype(np.float64)) + zero.astype(np.float64)
    return np.clip(q, spec.qmin, spec.qmax).astype(spec.dtype.numpy)


@pytest.mark.parametrize("shape, axis, dtype", [
    ((1280, 1000), 0, "int8"),      # more rows than one chunk
    ((1000, 1280), 1, "int8"),      # per-channel along the chunked axis' neighbour
    ((3, 300_000), 1, "uint8"),     # one row larger than a chunk
    ((96, 40, 3, 3), 0, "int4"),
    ((70_000,), None, "int16"),     # per tensor
    ((), None, "int8"),
])
def test_chunked_quantize_equals_the_whole_tensor_formula(shape, axis, dtype):
    rng = np.random.default_rng(3)
    x = (rng.standard_normal(shape) * 3).astype(np.float32)
    spec = QuantSpec(QDType.parse(dtype)) if axis is None else weight_spec(dtype, axis)
    reduce = None if axis is None else tuple(i for i in range(x.ndim) if i != axis)
    scale, zero = qparams.qparams_from_range(x.min(axis=reduce), x.max(axis=reduce), spec)
    q = qparams.quantize(x, scale, zero, spec, axis=axis)
    expected = _whole_tensor_quantize(x, scale, zero, spec, axis=axis)
    assert q.dtype == expected.dtype and q.shape == expected.shape and q.tobytes() == expected.tobytes()
    back = qparams.dequantize(q, scale, zero, axis)
    shaped = (scale, zero) if axis is None else (scale.reshape([-1 if i == axis else 1 for i in range(x.ndim)]),
                                                 zero.reshape([-1 if i == axis else 1 for i in range(x.ndim)]))
    one_shot = ((q.astype(np.float64) - shaped[1].astype(np.float64)) * shaped[0]).astype(np.float32)
    assert back.dtype == np.float32 and back.tobytes() == one_shot.tobytes()


def test_weight_quantization_temporaries_stay_small():
    """A 5 MB classifier weight: float64 temporaries over the whole tensor cost 20 MiB; chunks cost ~2 MiB."""
    import tracemalloc

    w = np.random.default_rng(4).standard_normal((1280, 1000)).astype(np.float32)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        q, _, _ = qparams.quantize_weight(w, weight_spec("int8", 1))
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert q.nbytes == w.size
    assert peak < q.nbytes + 6 * 2**20, f"{peak / 2**20:.1f} MiB of temporaries"
