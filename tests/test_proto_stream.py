"""The streamed writer writes ``ir.save``'s bytes exactly, holding one initializer at a time."""

from __future__ import annotations

import gc
import tracemalloc

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from onnxq import model_io, proto_stream

MODEL = """
<ir_version: 9, opset_import: ["" : 21], producer_name: "test", doc_string: "streamed">
g (float[N, 256] x) => (float[N, 256] y) {
  h = MatMul(x, w0)
  k = Add(h, b)
  y = MatMul(k, w1)
}
"""


def _model(weights: int = 2, rows: int = 256) -> ir.Model:
    proto = onnx.parser.parse_model(MODEL)
    proto.graph.initializer.append(onnx.numpy_helper.from_array(np.arange(256, dtype=np.float32), "b"))
    model = ir.serde.deserialize_model(proto)  # "b" stays a TensorProtoTensor (copied verbatim)
    rng = np.random.default_rng(0)
    matmul_weights = [node.inputs[1] for node in model.graph if node.op_type == "MatMul"]
    for i in range(weights):
        value = matmul_weights[i] if i < len(matmul_weights) else ir.Value(name=f"w{i}")
        value.const_value = ir.Tensor(rng.standard_normal((rows, 256), dtype=np.float32))
        value.const_value.doc_string = "spliced" if i else ""
        model.graph.register_initializer(value)
    model.graph.initializers["b"].const_value.metadata_props["origin"] = "test"
    small = ir.Value(name="small", const_value=ir.Tensor(np.ones(3, np.int64)))
    model.graph.register_initializer(small)
    packed = ir.Value(name="int4", const_value=ir.Tensor(np.arange(-7, 8, dtype=np.int8), dtype=ir.DataType.INT4))
    model.graph.register_initializer(packed)
    model.graph.metadata_props["k"] = "v"
    model.metadata_props["m"] = "n"
    return model


@pytest.mark.parametrize("splice_bytes", [1, proto_stream.SPLICE_BYTES])
def test_streamed_bytes_equal_ir_save(tmp_path, monkeypatch, splice_bytes):
    monkeypatch.setattr(proto_stream, "SPLICE_BYTES", splice_bytes)
    model = _model()
    ir.save(model, tmp_path / "whole.onnx")
    proto_stream.save_streamed(model, tmp_path / "streamed.onnx")
    assert (tmp_path / "streamed.onnx").read_bytes() == (tmp_path / "whole.onnx").read_bytes()
    onnx.checker.check_model(str(tmp_path / "streamed.onnx"), full_check=True)
    assert model.graph.initializers["w0"].const_value is not None  # the model is left as it was


@pytest.mark.parametrize("streamed", [True, False])
def test_save_model_holds_one_tensor_not_the_model(tmp_path, monkeypatch, streamed):
    if not streamed:  # the control: what the whole-model serialization holds
        monkeypatch.setattr(proto_stream, "save_streamed", lambda *a: (_ for _ in ()).throw(ValueError("off")))
    model = _model(weights=16, rows=1024)  # 16 weights of 1 MiB
    weights = model_io.weights_nbytes(model)
    gc.collect()
    tracemalloc.start()
    try:
        model_io.save_model(model, tmp_path / "m.onnx", validate=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # ir.save holds the serialized model (every weight) at once; the streamed writer about one tensor
    assert (peak < weights / 4) == streamed, f"peak {peak / 2**20:.1f} MiB for {weights / 2**20:.1f} MiB"


def test_fields_out_of_order_are_refused():
    in_order = onnx.TensorProto(dims=[2], data_type=1, name="t").SerializeToString()
    head, tail = proto_stream.split_fields(in_order, 9)
    assert head == in_order and tail == b""
    with pytest.raises(ValueError, match="out of order"):
        proto_stream.split_fields(b"\x42\x01t" + b"\x08\x02", 9)  # name (8), then dims (1)
