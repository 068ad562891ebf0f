"""Calibration memory: data read a sample at a time (compressed archives too), outputs dropped as observed,
the model run in segments so only one segment's activations are alive."""

from __future__ import annotations

import gc
import tracemalloc

import numpy as np
import onnx
import onnx_ir as ir

from onnxq.calibration import CalibrationData

IDENTITY = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1, 64, 64, 16] x) => (float[1, 64, 64, 16] y) {
  y = Identity(x)
}
"""


def test_held_back_samples_of_a_compressed_npz_do_not_pin_the_whole_array(tmp_path):
    model = ir.serde.deserialize_model(onnx.parser.parse_model(IDENTITY))
    samples = np.random.default_rng(0).standard_normal((16, 1, 64, 64, 16)).astype(np.float32)
    np.savez_compressed(tmp_path / "calib.npz", x=samples[:, 0])
    whole = samples.nbytes  # 4 MiB
    gc.collect()
    tracemalloc.start()
    try:
        data = CalibrationData.from_source(tmp_path / "calib.npz", model, holdout=4)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(data.holdout_samples) == 4
    # the 4 held-back copies and one sample in the stream's hands, never the whole decompressed array
    assert peak < 0.75 * whole, f"peak {peak / 2**20:.1f} MiB for a {whole / 2**20:.0f} MiB array"


def test_a_pass_over_a_compressed_npz_holds_one_sample(tmp_path):
    model = ir.serde.deserialize_model(onnx.parser.parse_model(IDENTITY))
    samples = np.random.default_rng(1).standard_normal((64, 1, 64, 64, 16)).astype(np.float32)
    np.savez_compressed(tmp_path / "calib.npz", x=samples[:, 0])
    data = CalibrationData.from_source(tmp_path / "calib.npz", model, holdout=0)
    gc.collect()
    tracemalloc.start()
    try:
        seen = sum(float(sample["x"][0, 0, 0, 0]) for sample in data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert np.isclose(seen, samples[:, 0, 0, 0, 0].astype(np.float64).sum())
    sample = samples[0].nbytes  # 256 KiB of a 16 MiB array
    assert peak < 6 * sample, f"peak {peak / 2**20:.2f} MiB for samples of {sample / 2**20:.2f} MiB"


def test_each_calibration_output_is_dropped_once_observed():
    """The largest output's observer (float64 temporaries for channel means) runs with no other output alive."""
    import weakref

    from onnxq.calibration import collect

    sizes = {"a": 1000, "b": 10, "c": 100_000, "d": 100}
    arrays = [np.zeros(n, np.float32) for n in sizes.values()]
    refs = [weakref.ref(a) for a in arrays]
    alive_at_update = {}

    class Recorder:
        def __init__(self, name):
            self.name = name

        def update(self, array):
            alive_at_update[self.name] = sum(r() is not None for r in refs)

    outputs, arrays = arrays, None  # as session.run hands them over: one list, no other reference
    collect._observe_outputs(outputs, list(sizes), {name: Recorder(name) for name in sizes})
    assert alive_at_update == {"b": 4, "d": 3, "a": 2, "c": 1}
    assert all(r() is None for r in refs)


def test_heap_is_trimmed_only_after_a_step_that_left_enough_behind(monkeypatch):
    """A trim costs page faults on what it returns: only growth of ``grown_mib`` since the last trim pays."""
    from onnxq import heap

    mib = 2**20
    resident = iter([100 * mib,  # at creation
                     120 * mib,  # +20: kept
                     140 * mib, 110 * mib,  # +40: trimmed, 110 after
                     130 * mib,  # +20 over 110: kept
                     150 * mib, 150 * mib])  # +40 over 110 and nothing freed: trimmed all the same
    trims = []
    monkeypatch.setattr(heap, "_resident_bytes", lambda: next(resident))
    monkeypatch.setattr(heap, "_malloc_trim", lambda: trims.append)
    trim = heap.TrimWhenGrown(32)
    assert [trim() for _ in range(4)] == [False, True, False, True]
    assert trims == [0, 0] and trim.trims == 2 and trim.mark == 150 * mib


def test_calibration_offers_the_heap_a_trim_after_every_sample(monkeypatch):
    """With a zero threshold every sample is trimmed: the loop calls the trimmer once per sample it ran."""
    from onnxq import heap
    from onnxq.calibration import collect

    made = []
    real = heap.TrimWhenGrown

    def recording(grown_mib):
        made.append(real(grown_mib))
        return made[-1]

    monkeypatch.setattr(heap, "TrimWhenGrown", recording)
    monkeypatch.setattr(collect, "TRIM_GROWN_MIB", 0)
    proto = onnx.parser.parse_model("""
<ir_version: 8, opset_import: ["" : 17]>
g (float[1, 64] x) => (float[1, 64] y) {
  h = Relu(x)
  y = Neg(h)
}
""")
    model = ir.serde.deserialize_model(proto)
    samples = [{"x": np.full((1, 64), i - 2.0, np.float32)} for i in range(5)]
    stats = collect.collect_statistics(model, ["h"], samples)
    assert (stats["h"].min, stats["h"].max) == (0.0, 2.0)
    if heap._malloc_trim() is not None and heap._resident_bytes() is not None:  # glibc on Linux
        assert len(made) == 1 and made[0].trims == len(samples)
