"""collect_statistics on real models: equal to a naive all-in-memory reference, flat memory."""

from __future__ import annotations

import gc
import tracemalloc

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from onnxq import numerics
from onnxq.calibration import CalibrationData, HistogramObserver, TensorStats, collect_statistics
from onnxq.errors import CalibrationDataError, OptionError
from onnxq.quant.spec import QDType

CONV_RELU_MATMUL = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1, 3, H, W] x) => (float[1, H, W, 5] y) <float[8, 3, 3, 3] w, float[8] b, float[8, 5] m> {
  conv = Conv <pads = [1, 1, 1, 1]> (x, w, b)
  relu = Relu(conv)
  nhwc = Transpose <perm = [0, 2, 3, 1]> (relu)
  y = MatMul(nhwc, m)
}
"""
TENSORS = ["x", "conv", "relu", "nhwc", "y", "w"]


def conv_relu_matmul() -> ir.Model:
    proto = onnx.parser.parse_model(CONV_RELU_MATMUL)
    rng = np.random.default_rng(0)
    for name, shape in (("w", (8, 3, 3, 3)), ("b", (8,)), ("m", (8, 5))):
        proto.graph.initializer.append(onnx.numpy_helper.from_array(
            rng.standard_normal(shape).astype(np.float32), name))
    return ir.serde.deserialize_model(proto)


def variable_samples(count: int = 64) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(1)
    samples = []
    for i in range(count):
        height, width = (int(v) for v in rng.integers(3, 13, size=2))
        x = rng.standard_normal((1, 3, height, width)) * (1 + i % 5)
        samples.append({"x": x.astype(np.float32)})
    return samples


def naive_activations(model: ir.Model, samples) -> dict[str, np.ndarray]:
    """Every requested tensor of every sample, concatenated (exposed by hand, run with run_model)."""
    proto = ir.to_proto(model)
    for name in ("conv", "relu", "nhwc"):
        proto.graph.output.append(onnx.ValueInfoProto(name=name))
    outputs = [numerics.run_model(proto.SerializeToString(), s) for s in samples]
    values = {n: np.concatenate([np.ravel(o[n]) for o in outputs]) for n in ("conv", "relu", "nhwc", "y")}
    values["x"] = np.concatenate([np.ravel(s["x"]) for s in samples])
    values["w"] = model.graph.initializers["w"].const_value.numpy().ravel()
    return values


@pytest.fixture(scope="module")
def reference():
    model = conv_relu_matmul()
    samples = variable_samples()
    return model, samples, naive_activations(model, samples)


def test_minmax_equals_the_naive_reference(reference):
    model, samples, values = reference
    before = ir.to_proto(model).SerializeToString()
    calls = []
    stats = collect_statistics(model, TENSORS, samples, progress=lambda *args: calls.append(args))
    for name in TENSORS:
        expected = (float(values[name].min()), float(values[name].max()))
        assert (stats[name].min, stats[name].max) == expected, name
        assert stats[name].histogram is None
    assert stats["relu"].min == 0.0 and stats["x"].count == values["x"].size
    assert calls == [(i, 64) for i in range(1, 65)]
    assert ir.to_proto(model).SerializeToString() == before  # the caller's model is untouched
    assert [v.name for v in model.graph.outputs] == ["y"]


@pytest.mark.parametrize("method", ["percentile", "entropy", "mse"])
def test_histograms_equal_the_one_shot_reference(reference, method):
    model, samples, values = reference
    stream = (s for s in samples)  # a one-shot generator is enough: one pass
    stats = collect_statistics(model, TENSORS, stream, method=method, num_bins=512)
    for name in TENSORS:
        one_shot = HistogramObserver(512)
        one_shot.update(values[name])
        assert stats[name].histogram.state == one_shot.state, name
        assert (stats[name].min, stats[name].max) == (float(values[name].min()), float(values[name].max()))
        expected = TensorStats(name, one_shot.min, one_shot.max, one_shot)
        for symmetric, qdtype in ((True, QDType.INT8), (False, QDType.UINT8)):
            got = stats[name].range(method, qdtype=qdtype, symmetric=symmetric, percentile=99.9)
            assert got == expected.range(method, qdtype=qdtype, symmetric=symmetric, percentile=99.9)
            assert got[0] < got[1]


def test_per_channel_and_moving_average(reference):
    model, samples, _ = reference
    proto = ir.to_proto(model)
    proto.graph.output.append(onnx.ValueInfoProto(name="conv"))
    convs = [numerics.run_model(proto.SerializeToString(), s)["conv"] for s in samples]
    stats = collect_statistics(model, ["conv"], samples, per_channel_axes={"conv": 1})
    np.testing.assert_array_equal(stats["conv"].min, np.min([c.min(axis=(0, 2, 3)) for c in convs], axis=0))
    np.testing.assert_array_equal(stats["conv"].max, np.max([c.max(axis=(0, 2, 3)) for c in convs], axis=0))
    lo, hi = stats["conv"].range("minmax", qdtype=QDType.INT8, symmetric=True)
    assert lo.shape == hi.shape == (8,)

    averaged = collect_statistics(model, ["conv"], samples, moving_average=0.1)
    expect_lo, expect_hi = float(convs[0].min()), float(convs[0].max())
    for c in convs[1:]:
        expect_lo += 0.1 * (float(c.min()) - expect_lo)
        expect_hi += 0.1 * (float(c.max()) - expect_hi)
    assert averaged["conv"].min == pytest.approx(expect_lo)
    assert averaged["conv"].max == pytest.approx(expect_hi)


def test_calibration_data_with_holdout_is_not_calibrated_on(reference):
    model, samples, _ = reference
    data = CalibrationData.from_source(samples, model, holdout=16)
    stats = collect_statistics(model, ["x"], data)
    calibrated = np.concatenate([s["x"].ravel() for s in samples[:48]])
    assert (stats["x"].min, stats["x"].max) == (float(calibrated.min()), float(calibrated.max()))


def test_bad_requests(reference):
    model, samples, _ = reference
    with pytest.raises(OptionError, match="tensor 'nope'"):
        collect_statistics(model, ["nope"], samples)
    with pytest.raises(OptionError, match="unknown calibration method 'kl'"):
        collect_statistics(model, ["x"], samples, method="kl")
    with pytest.raises(CalibrationDataError, match="sample 0: unknown input 'image'"):
        collect_statistics(model, ["relu"], [{"image": samples[0]["x"]}])


BIG_ACTIVATION = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1, 3, 64, 64] x) => (float[1, 64, 64, 64] y) <float[64, 3, 1, 1] w> {
  conv = Conv(x, w)
  y = Relu(conv)
}
"""


def _reset_peak_rss() -> int | None:
    """Reset the kernel's resident-set high-water mark (Linux); the current RSS in bytes, or None."""
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
        return _proc_status_bytes("VmRSS")
    except OSError:
        return None


def _proc_status_bytes(key: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def _peak_memory(model: ir.Model, count: int, method: str) -> tuple[int, int | None]:
    """(peak traced Python/numpy allocations, peak RSS growth or None) while collecting over ``count``."""
    def samples():
        rng = np.random.default_rng(count)
        for _ in range(count):
            yield {"x": rng.standard_normal((1, 3, 64, 64), dtype=np.float32)}

    gc.collect()
    rss_before = _reset_peak_rss()
    tracemalloc.start()
    try:
        stats = collect_statistics(model, ["conv", "y"], samples(), method=method)
        _, traced_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    rss_growth = None if rss_before is None else _proc_status_bytes("VmHWM") - rss_before
    assert stats["y"].count == count * 64 * 64 * 64
    return traced_peak, rss_growth


@pytest.mark.parametrize("method", ["minmax", "percentile"])
def test_memory_is_flat_in_the_number_of_samples(method):
    proto = onnx.parser.parse_model(BIG_ACTIVATION)
    weights = np.random.default_rng(0).standard_normal((64, 3, 1, 1)).astype(np.float32)
    proto.graph.initializer.append(onnx.numpy_helper.from_array(weights, "w"))
    model = ir.serde.deserialize_model(proto)
    activation_bytes = 64 * 64 * 64 * 4  # 1 MiB per sample and tensor: a naive collector holds 2 × 256 MiB
    few, few_rss = _peak_memory(model, 16, method)
    many, many_rss = _peak_memory(model, 256, method)
    mib = lambda n: "n/a" if n is None else f"{n / 2**20:.2f} MiB"  # noqa: E731
    print(f"{method}: peak traced allocations 16 samples {mib(few)}, 256 samples {mib(many)}; "
          f"peak RSS growth 16 samples {mib(few_rss)}, 256 samples {mib(many_rss)}")
    assert many < 1.5 * few + 64 * 1024  # (+64 KiB: allocator noise when the peak is tiny)
    assert many < 16 * activation_bytes
    # ORT's output buffers are not numpy allocations (tracemalloc misses them): check the process too.
    if few_rss is not None and many_rss is not None:
        assert many_rss < max(few_rss, 0) + 32 * activation_bytes


def test_model_with_external_weights(tmp_path, reference, monkeypatch):
    from onnxq import model_io

    model, samples, values = reference
    ir.save(model, tmp_path / "m.onnx", external_data="m.onnx.data", size_threshold_bytes=0)
    loaded = model_io.load_model(tmp_path / "m.onnx").model
    assert isinstance(loaded.graph.initializers["w"].const_value, ir.ExternalTensor)
    monkeypatch.chdir(tmp_path.parent)  # the weights are found from the model's folder, not the cwd
    stats = collect_statistics(loaded, ["relu", "w"], samples[:8])
    first = numerics_relu_max(model, samples[:8])
    assert stats["relu"].max == first and stats["w"].max == float(values["w"].max())


def numerics_relu_max(model: ir.Model, samples) -> float:
    proto = ir.to_proto(model)
    proto.graph.output.append(onnx.ValueInfoProto(name="relu"))
    return max(float(numerics.run_model(proto.SerializeToString(), s)["relu"].max()) for s in samples)
