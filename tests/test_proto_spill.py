"""Loading with the weights spilled to a session folder: the same model as ``onnx.load``, the weights on disk.

The spilled load must give exactly the tensors a plain load gives (byte for byte), leave shape-like and
small tensors inline, refuse nothing a plain load accepts and accept nothing it refuses, and hold a
fraction of the weights in memory. Saving a model whose weights live in the folder writes the bytes a
model held in memory writes.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from onnxq import model_io, numerics, proto_spill
from onnxq.errors import InvalidModelError
from onnxq.session_files import ALIGNMENT, SessionFiles, spillable

MODEL = """
<ir_version: 8, opset_import: ["" : 17], producer_name: "spill-test">
g (float[N, ROWS] x) => (float[N, 8, 8] y) <float[ROWS, 64] w, int64[3] shape, float[1] s, float[64] b> {
  h = MatMul(x, w)
  a = Add(h, b)
  r = Reshape(a, shape)
  y = Mul(r, s)
}
"""


def _proto(rows: int = 64) -> onnx.ModelProto:
    proto = onnx.parser.parse_model(MODEL.replace("ROWS", str(rows)))
    rng = np.random.default_rng(0)
    proto.graph.initializer.extend([
        onnx.numpy_helper.from_array(rng.standard_normal((rows, 64)).astype(np.float32), "w"),
        onnx.numpy_helper.from_array(np.array([-1, 8, 8], np.int64), "shape"),
        onnx.numpy_helper.from_array(np.array([0.5], np.float32), "s"),
        onnx.numpy_helper.from_array(rng.standard_normal(64).astype(np.float32), "b"),  # 256 B: inline
    ])
    proto.graph.initializer[0].doc_string = "the weight"
    return proto


def _restored(proto: onnx.ModelProto, spilled: dict, data_path) -> onnx.ModelProto:
    """``proto`` with each spilled tensor's bytes read back from the data file into ``raw_data``."""
    restored = onnx.ModelProto()
    restored.CopyFrom(proto)
    data = data_path.read_bytes()
    for tensor in restored.graph.initializer:
        if tensor.name in spilled:
            where = spilled[tensor.name]
            tensor.raw_data = data[where.offset: where.offset + where.length]
    return restored


def test_spilled_proto_plus_data_file_is_the_file(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(_proto(), path)
    proto, spilled = proto_spill.load_spilling(path, tmp_path / "w.data", spillable)
    assert sorted(spilled) == ["w"]  # int64 shape, 4-byte scale and 256-byte bias stay inline
    assert spilled["w"].offset % ALIGNMENT == 0 and spilled["w"].length == 64 * 64 * 4
    assert not proto.graph.initializer[0].HasField("raw_data") and proto.ByteSize() < 1000
    assert _restored(proto, spilled, tmp_path / "w.data") == onnx.load(path)


def test_truncated_or_foreign_files_raise_and_leave_no_data_file(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(_proto(), path)
    whole = path.read_bytes()
    cases = {"truncated": whole[: len(whole) // 2], "text": b"not a model at all\n" * 50}
    for name, content in cases.items():
        broken = tmp_path / f"{name}.onnx"
        broken.write_bytes(content)
        data = tmp_path / f"{name}.data"
        with pytest.raises(ValueError):
            proto_spill.load_spilling(broken, data, spillable)
        assert not data.exists()


def test_load_with_spill_gives_the_tensors_a_plain_load_gives(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(_proto(), path)
    plain = model_io.load_model(path).model
    with SessionFiles() as files:
        loaded = files.load(path)
        model = loaded.model
        assert loaded.data_files == []  # the folder is not the input's: nothing there to protect
        kinds = {name: files.owns(v.const_value) for name, v in model.graph.initializers.items()}
        assert kinds == {"w": True, "shape": False, "s": False, "b": False}
        for name, value in plain.graph.initializers.items():
            assert model.graph.initializers[name].const_value.tobytes() == value.const_value.tobytes()
        assert model.graph.initializers["w"].const_value.doc_string == "the weight"
        # the same model, serialized once its weights are back in memory
        files.materialize(model)
        assert numerics.model_bytes(model) == numerics.model_bytes(plain)
    assert path.read_bytes() == onnx.load(path).SerializeToString()  # the input is untouched


@pytest.mark.parametrize("defect", ["raw size", "checker"])
def test_spilled_load_refuses_what_a_plain_load_refuses(tmp_path, defect):
    proto = _proto()
    if defect == "raw size":
        proto.graph.initializer[0].raw_data = proto.graph.initializer[0].raw_data[:-4]
    else:
        proto.graph.node[0].op_type = "NoSuchOp"
    path = tmp_path / "bad.onnx"
    path.write_bytes(proto.SerializeToString())
    with pytest.raises(InvalidModelError) as plain:
        model_io.load_model(path)
    with SessionFiles() as files, pytest.raises(InvalidModelError) as spilled:
        files.load(path)
    # the same one-line message (the checker's names the input, not the folder's weightless copy)
    assert str(spilled.value) == str(plain.value)
    assert defect == "raw size" or str(path) in str(spilled.value)


def test_saving_a_model_whose_weights_live_in_the_folder_writes_the_in_memory_bytes(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(_proto(rows=8192), path)  # a 2 MiB weight: spliced by the streamed writer
    with SessionFiles() as files:
        model = files.load(path).model
        model_io.save_model(model, tmp_path / "from_folder.onnx", external_data=False, scratch=files)
        leftovers = sorted(p.name for p in files.folder.iterdir())
        files.materialize(model)
        model_io.save_model(model, tmp_path / "from_memory.onnx", external_data=False)
    assert (tmp_path / "from_folder.onnx").read_bytes() == (tmp_path / "from_memory.onnx").read_bytes()
    assert [name for name in leftovers if name.startswith("validated")] == []  # the twin goes


def test_validation_of_an_embedded_output_checks_its_weightless_twin(tmp_path):
    """The twin has the output's graph and weight bytes: a defect in the graph still fails validation."""
    from onnxq.errors import ValidationError

    proto = _proto(rows=8192)
    proto.graph.node[1].op_type = "NoSuchOp"
    path = tmp_path / "bad.onnx"
    path.write_bytes(proto.SerializeToString())
    with SessionFiles() as files, pytest.raises(ValidationError, match="onnx.checker"):
        model_io.validate_model_file(path, scratch=files)


def test_quantize_leaves_the_callers_model_as_it_was():
    model = ir.serde.deserialize_model(_proto())
    before_nodes = [(n.op_type, n.name) for n in model.graph]
    before_tensors = {name: v.const_value for name, v in model.graph.initializers.items()}
    rng = np.random.default_rng(1)
    samples = [{"x": rng.standard_normal((1, 64)).astype(np.float32)} for _ in range(12)]
    from onnxq.quant.quantize import quantize

    quantized, report = quantize(model, samples)
    assert [(n.op_type, n.name) for n in model.graph] == before_nodes
    assert {name: v.const_value for name, v in model.graph.initializers.items()} == before_tensors
    # without a folder of the caller's, the result holds its weights itself (quantize's folder is gone)
    values = quantized.graph.initializers.values()
    assert not any(isinstance(v.const_value, ir.ExternalTensor) for v in values)
    assert report.qdq_nodes > 0 and len(numerics.model_bytes(quantized)) > 0


PEAK_PROBE = """
import sys, numpy as np, onnx
from pathlib import Path
from onnxq import model_io
from onnxq.session_files import SessionFiles
def peak_mib():
    return int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) / 1024
files = SessionFiles()
before = peak_mib()
loaded = files.load(sys.argv[1]) if sys.argv[2] == "spill" else model_io.load_model(sys.argv[1])
print(peak_mib() - before)
files.close()
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_spilled_load_holds_a_fraction_of_the_weights(tmp_path):
    """64 MiB of weights: a plain load peaks at about twice that (file bytes, then the parsed proto); the
    spilled load copies them file to file and parses only the graph."""
    path = tmp_path / "big.onnx"
    onnx.save(_proto(rows=256 * 1024), path)
    weights = 64 * 256 * 1024 * 4 / 2**20
    growth = {}
    for mode in ("spill", "plain"):
        done = subprocess.run([sys.executable, "-c", PEAK_PROBE, str(path), mode], capture_output=True,
                              text=True, check=True, timeout=120)
        growth[mode] = float(done.stdout.split()[-1])
    assert growth["plain"] > weights, growth  # the probe sees a plain load's copies
    assert growth["spill"] < weights / 4, growth
