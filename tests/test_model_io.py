"""Model I/O: checked lazy load, IR/opset normalisation, atomic validated save, external data."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import helper

from onnxq import model_io, numerics, runtime_compat
from onnxq.errors import InvalidModelError, OpsetError, OutputPathError, ValidationError


def _parse(text: str) -> onnx.ModelProto:
    return onnx.parser.parse_model(text)


RELU = """
<ir_version: 7, opset_import: ["" : 11]>
g (float[N, 4] x) => (float[N, 4] y) { y = Relu(x) }
"""


def test_ort_ir_probe_matches_runtime():
    version = runtime_compat.ort_max_ir_version()
    assert 7 <= version <= onnx.IR_VERSION
    assert runtime_compat.target_ir_version() == min(onnx.IR_VERSION, version)
    # The probe is right: ORT loads a model at that version.
    model = ir.serde.deserialize_model(_parse(RELU))
    model.ir_version = version
    numerics.run_model(model, {"x": np.ones((1, 4), np.float32)})


def test_save_writes_ir_version_ort_accepts_and_validates(tmp_path: Path):
    source = tmp_path / "in.onnx"
    onnx.save(_parse(RELU), source)
    loaded = model_io.load_model(source)
    out = model_io.save_model(loaded.model, tmp_path / "out.onnx", protected=[source])
    proto = onnx.load(out)
    # The lowest IR that holds the model (input IR 7, opset 11 needs 6): older runtimes load it too.
    assert proto.ir_version == 7 <= runtime_compat.target_ir_version()
    onnx.checker.check_model(proto, full_check=True)
    loaded.model.opset_imports[""] = 21  # opset 21 needs IR 10
    assert runtime_compat.output_ir_version(loaded.model) == 10
    assert [p.name for p in tmp_path.iterdir()] == sorted(["in.onnx", "out.onnx"]) or set(
        p.name for p in tmp_path.iterdir()
    ) == {"in.onnx", "out.onnx"}


def test_ai_onnx_domain_spelling_is_normalised(tmp_path: Path):
    proto = _parse(RELU)
    proto.opset_import[0].domain = "ai.onnx"
    onnx.save(proto, tmp_path / "m.onnx")
    model = model_io.load_model(tmp_path / "m.onnx").model
    assert model.opset_imports == {"": 11}


def test_upgrade_opset_keeps_numerics_and_weights():
    text = """
    <ir_version: 7, opset_import: ["" : 11]>
    g (float[2, 3, 4] x) => (float[2, 4] y) {
      w = Constant <value = float[4] {1, 2, 3, 4}> ()
      s = ReduceSum <axes = [1], keepdims = 0> (x)
      y = Add(s, w)
    }
    """
    model = ir.serde.deserialize_model(_parse(text))
    feeds = numerics.random_inputs(model)
    before = numerics.run_model(model, feeds)
    assert runtime_compat.upgrade_opset(model, 17)
    assert runtime_compat.default_opset(model) == 17
    reduce = next(n for n in model.graph if n.op_type == "ReduceSum")
    assert len(reduce.inputs) == 2  # axes moved to an input at opset 13
    after = numerics.run_model(model, feeds)
    assert numerics.relative_error(before["y"], after["y"]) == 0.0
    assert not runtime_compat.upgrade_opset(model, 13)  # never downgrades


def test_upgrade_opset_beyond_runtime_is_a_clean_error():
    model = ir.serde.deserialize_model(_parse(RELU))
    with pytest.raises(OpsetError, match="newer than the installed ONNX Runtime"):
        runtime_compat.upgrade_opset(model, runtime_compat.ort_max_opset() + 1)


def _external_model(tmp_path: Path, name: str = "big", size: int = 256) -> Path:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((size, size)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", size])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", size])],
        [onnx.numpy_helper.from_array(w, "w")],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    proto.ir_version = 8
    path = tmp_path / f"{name}.onnx"
    onnx.save(proto, path, save_as_external_data=True, location=f"{name}.bin", size_threshold=0)
    return path


def test_external_data_loads_lazily_and_saves_fresh_file(tmp_path: Path):
    source = _external_model(tmp_path)
    loaded = model_io.load_model(source)
    assert isinstance(loaded.model.graph.initializers["w"].const_value, ir.ExternalTensor)
    assert loaded.data_files == [(tmp_path / "big.bin").resolve()]
    source_bytes = (tmp_path / "big.bin").read_bytes()
    out = tmp_path / "out" / "o.onnx"
    out.parent.mkdir()
    model_io.save_model(loaded.model, out, protected=[source, *loaded.data_files], external_data=True)
    data = out.parent / "o.onnx.data"
    assert data.is_file() and data.stat().st_size >= len(source_bytes)
    first = data.read_bytes()
    # Saving again replaces (never appends): same bytes, same size.
    model_io.save_model(model_io.load_model(source).model, out, external_data=True)
    assert data.read_bytes() == first
    assert (tmp_path / "big.bin").read_bytes() == source_bytes
    feeds = {"x": np.ones((2, 256), np.float32)}
    ref = numerics.run_model(str(source), feeds)["y"]
    got = numerics.run_model(str(out), feeds)["y"]
    assert numerics.relative_error(ref, got) == 0.0


def test_external_input_keeps_external_data_unless_embedding_is_asked(tmp_path: Path):
    source = _external_model(tmp_path)
    out = tmp_path / "elsewhere"
    out.mkdir()
    # Default: the output gets its own fresh data file (never a reference to the input's).
    model_io.save_model(model_io.load_model(source).model, out / "o.onnx")
    assert sorted(os.listdir(out)) == ["o.onnx", "o.onnx.data"]
    proto = onnx.load(out / "o.onnx", load_external_data=False)
    locations = {e.value for t in proto.graph.initializer for e in t.external_data if e.key == "location"}
    assert locations == {"o.onnx.data"}
    # Asked to embed: one self-contained file.
    model_io.save_model(model_io.load_model(source).model, out / "e.onnx", external_data=False)
    proto = onnx.load(out / "e.onnx", load_external_data=False)
    assert all(t.data_location == onnx.TensorProto.DEFAULT for t in proto.graph.initializer)
    assert not (out / "e.onnx.data").exists()


def test_output_data_file_may_not_replace_the_inputs_data(tmp_path: Path):
    source = _external_model(tmp_path, name="m")
    # Input data named like the output's data would be: m2.onnx.data
    os.rename(tmp_path / "m.bin", tmp_path / "m2.onnx.data")
    proto = onnx.load(source, load_external_data=False)
    for entry in proto.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = "m2.onnx.data"
    onnx.save(proto, source)
    loaded = model_io.load_model(source)
    with pytest.raises(OutputPathError, match="would overwrite the input's data"):
        model_io.save_model(
            loaded.model, tmp_path / "m2.onnx", protected=[source, *loaded.data_files], external_data=True
        )


def test_failed_validation_writes_nothing(tmp_path: Path, monkeypatch):
    source = tmp_path / "in.onnx"
    onnx.save(_parse(RELU), source)
    model = model_io.load_model(source).model
    relu = next(iter(model.graph))
    relu.op_type = "NoSuchOp"
    with pytest.raises(ValidationError, match="not written"):
        model_io.save_model(model, tmp_path / "out.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.onnx"]


def test_refuses_to_overwrite_input_unless_in_place(tmp_path: Path):
    source = tmp_path / "in.onnx"
    onnx.save(_parse(RELU), source)
    before = source.read_bytes()
    model = model_io.load_model(source).model
    with pytest.raises(OutputPathError, match="is the input file"):
        model_io.save_model(model, tmp_path / "." / "in.onnx", protected=[source])
    assert source.read_bytes() == before
    inode = source.stat().st_ino
    model_io.save_model(model, source, protected=[source], in_place=True)
    assert source.stat().st_ino != inode  # replaced by rename, not rewritten in place
    onnx.checker.check_model(onnx.load(source))


@pytest.mark.parametrize(
    "text, message",
    [
        ("""<ir_version: 8, opset_import: ["" : 13]>
            g (float[2] x) => (float[2] y) { a = Add(x, b)  b = Relu(a)  y = Identity(a) }""", "cycle"),
        ("""<ir_version: 8, opset_import: ["" : 13]>
            g (float[2] x) => (float[2] y) { y = Add(x, missing) }""", "dangling"),
    ],
)
def test_structural_errors_are_named(tmp_path: Path, text: str, message: str):
    path = tmp_path / "bad.onnx"
    onnx.save(_parse(text), path)
    with pytest.raises(InvalidModelError, match=message):
        model_io.load_model(path)


def test_unsorted_but_acyclic_graph_loads(tmp_path: Path):
    proto = _parse("""<ir_version: 8, opset_import: ["" : 13]>
        g (float[2] x) => (float[2] y) { a = Relu(x)  y = Neg(a) }""")
    nodes = list(proto.graph.node)
    del proto.graph.node[:]
    proto.graph.node.extend(reversed(nodes))
    path = tmp_path / "unsorted.onnx"
    onnx.save(proto, path)
    model = model_io.load_model(path).model
    assert len(model.graph) == 2
