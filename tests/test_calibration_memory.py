"""Calibration data never holds more than one decompressed array (plus the held-back copies) at a time."""

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
    # one decompressed array at a time (and the zip reader's buffer), not one per held-back sample
    assert peak < 2.5 * whole, f"peak {peak / 2**20:.1f} MiB for a {whole / 2**20:.0f} MiB array"


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
