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
