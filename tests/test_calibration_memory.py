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
