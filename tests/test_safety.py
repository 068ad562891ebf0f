"""Untrusted models: external data may not leave the model's folder, absurd tensors are refused before any
allocation, and nothing in the package deserializes pickles."""

from __future__ import annotations

import re
import tracemalloc
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxq
from make_bad_models import X, Y, external_tensor, huge_tensor, make_model, node
from strategies import default_pipeline
from onnxq import safety
from onnxq.cli import main
from onnxq.errors import InvalidModelError, UnsafeModelError

ROOT = Path(__file__).resolve().parents[1]
SECRET = np.arange(4, dtype=np.float32).reshape(1, 4)
NAME = "secret_w"


# Where a tensor can hide in a model: each builder wraps the tensor ``t`` (named NAME) into a valid graph.
def _in_initializer(t: TensorProto) -> onnx.ModelProto:
    return make_model([node("Add", ["x", NAME], ["y"])], inits=[t])


def _in_if_branch(t: TensorProto) -> onnx.ModelProto:
    out = helper.make_tensor_value_info("t", TensorProto.FLOAT, [1, 4])
    then = helper.make_graph([node("Add", ["x", NAME], ["t"])], "then", [], [out], [t])
    other = helper.make_graph([node("Identity", ["x"], ["t"])], "else", [], [out])
    cond = numpy_helper.from_array(np.array(True), "cond")
    return make_model([node("If", ["cond"], ["y"], then_branch=then, else_branch=other)], inits=[cond])


def _in_constant(t: TensorProto) -> onnx.ModelProto:
    return make_model([node("Constant", [], ["c"], value=t), node("Add", ["x", "c"], ["y"])])


def _in_function(t: TensorProto) -> onnx.ModelProto:
    body = [node("Constant", [], ["c"], value=t), node("Add", ["a", "c"], ["o"])]
    function = helper.make_function("lib", "AddSecret", ["a"], ["o"], body, [helper.make_opsetid("", 17)])
    return make_model([node("AddSecret", ["x"], ["y"], domain="lib")], functions=[function])


PLACES = {
    "initializer": _in_initializer,
    "if-subgraph": _in_if_branch,
    "constant-attribute": _in_constant,
    "function-body": _in_function,
}

#: location text (``{secret}`` is the absolute path of a file outside the model folder) -> expected message
LOCATIONS = {
    "absolute": ("{secret}", "at absolute path"),
    "dotdot": ("../secret.bin", "outside the model's folder ('..')"),
    "nested-dotdot": ("sub/../../secret.bin", "outside the model's folder ('..')"),
    "backslash-dotdot": ("..\\secret.bin", "outside the model's folder ('..')"),
    "windows-drive": ("C:\\secret.bin", "at absolute path"),
    "symlink-out": ("link.bin", "which resolves outside the model's folder"),
    "symlinked-folder-out": ("linkdir/secret.bin", "which resolves outside the model's folder"),
    "nul-byte": ("secret.bin\0.txt", "NUL byte"),
}


def _layout(tmp_path: Path) -> tuple[Path, Path]:
    """tmp/secret.bin (outside), tmp/model/ with symlinks that lead out of it."""
    secret = tmp_path / "secret.bin"
    secret.write_bytes(SECRET.tobytes())
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "link.bin").symlink_to(secret)
    (folder / "linkdir").symlink_to(tmp_path)
    return secret, folder


def _assert_refused_by_cli(model: Path, tmp_path: Path, expect: str, capsys) -> None:
    before = sorted(p.name for p in model.parent.iterdir())
    for argv in (["inspect", str(model)], ["optimize", str(model), "-o", str(model.parent / "o.onnx")]):
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 2, err
        assert len(err.splitlines()) == 1 and err.startswith("onnxq: error: ") and expect in err, err
    assert sorted(p.name for p in model.parent.iterdir()) == before


@pytest.mark.parametrize("location", LOCATIONS, ids=str)
@pytest.mark.parametrize("place", PLACES, ids=str)
def test_external_data_outside_the_model_folder_is_refused(place: str, location: str, tmp_path: Path, capsys):
    secret, folder = _layout(tmp_path)
    text, expect = LOCATIONS[location]
    tensor = external_tensor(NAME, text.replace("{secret}", str(secret)), offset=0, length=16)
    model = folder / "m.onnx"
    onnx.save(PLACES[place](tensor), model)
    with pytest.raises(UnsafeModelError, match=re.escape(f"tensor '{NAME}'")) as info:
        onnxq.load(model)
    assert expect in str(info.value)
    _assert_refused_by_cli(model, tmp_path, f"tensor '{NAME}'", capsys)


@pytest.mark.parametrize("external_out", [False, True], ids=["embedded-out", "external-out"])
@pytest.mark.parametrize("place", PLACES, ids=str)
def test_external_data_inside_the_model_folder_loads_and_saves(
    place: str, external_out: bool, tmp_path: Path
):
    """The negative test: relative locations inside the folder work wherever the tensor is, and the output
    never refers back to the input's data files (onnx.checker refuses symlinked data even inside)."""
    _, folder = _layout(tmp_path)
    (folder / "data").mkdir()
    (folder / "data" / "w.bin").write_bytes(SECRET.tobytes())
    for location in ("data/w.bin", "./data/w.bin"):
        model = folder / "m.onnx"
        onnx.save(PLACES[place](external_tensor(NAME, location, offset=0, length=16)), model)
        out = onnxq.optimize(onnxq.load(model), "dce")[0]
        onnxq.save(out, tmp_path / "o.onnx", external_data=external_out)
        saved = onnx.load(tmp_path / "o.onnx", load_external_data=False)
        assert all(
            t.data_location != TensorProto.EXTERNAL or t.external_data[0].value == "o.onnx.data"
            for t in safety.iter_model_tensors(saved)
        )
        got = onnxq.numerics.run_model(str(tmp_path / "o.onnx"), {"x": np.zeros((1, 4), np.float32)})["y"]
        np.testing.assert_array_equal(got, SECRET)


@pytest.mark.parametrize("place", PLACES, ids=str)
def test_tensor_claiming_2_to_the_40_elements_is_refused_before_allocation(
    place: str, tmp_path: Path, capsys
):
    model = tmp_path / "m.onnx"
    onnx.save(PLACES[place](huge_tensor(NAME)), model)
    tracemalloc.start()
    try:
        with pytest.raises(
            UnsafeModelError, match=re.escape(f"tensor '{NAME}' claims 1099511627776 elements")
        ):
            onnxq.load(model)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 * 2**20
    _assert_refused_by_cli(model, tmp_path, "claims 1099511627776 elements", capsys)


def test_huge_external_tensor_is_refused_before_reading_its_file(tmp_path: Path, capsys):
    (tmp_path / "w.bin").write_bytes(b"\0" * 16)
    tensor = external_tensor(NAME, "w.bin", dims=(2**20, 2**20), offset=0)
    model = tmp_path / "m.onnx"
    onnx.save(_in_initializer(tensor), model)
    with pytest.raises(UnsafeModelError, match="claims 1099511627776 elements"):
        onnxq.load(model)
    _assert_refused_by_cli(model, tmp_path, "claims 1099511627776 elements", capsys)


def _bomb(op: str) -> onnx.ModelProto:
    """A few bytes of model whose constant folding would produce 2**40 elements, reduced to a scalar."""

    def i64(value, name: str) -> TensorProto:
        return numpy_helper.from_array(np.array(value, np.int64), name)

    def f32(value, name: str) -> TensorProto:
        return numpy_helper.from_array(np.array(value, np.float32), name)

    shape = i64([2**20, 2**20], "shape")
    make = {
        "ConstantOfShape": ([node("ConstantOfShape", ["shape"], ["big"])], [shape]),
        "Expand": ([node("Expand", ["one", "shape"], ["big"])], [f32([1.0], "one"), shape]),
        "Tile": ([node("Tile", ["one", "shape"], ["big"])], [f32([[1.0]], "one"), shape]),
        "Range": (
            [node("Range", ["start", "limit", "step"], ["big"])],
            [f32(0.0, "start"), f32(2.0**40, "limit"), f32(1.0, "step")],
        ),
    }
    nodes, inits = make[op]
    tail = [node("ReduceSum", ["big"], ["total"], keepdims=0), node("Add", ["x", "total"], ["y"])]
    return make_model(nodes + tail, inits=inits)


@pytest.mark.parametrize("op", ["ConstantOfShape", "Expand", "Tile", "Range"])
def test_constant_folding_bomb_does_not_allocate_it(op: str, tmp_path: Path, capsys):
    model = tmp_path / "m.onnx"
    onnx.save(_bomb(op), model)
    code = main(["optimize", str(model), "-o", str(tmp_path / "o.onnx"), "--passes", default_pipeline()])
    err = capsys.readouterr().err
    assert code == 0, err  # a valid model: written with the big op left unfolded (the folder's size limit)
    assert any(n.op_type == op for n in onnx.load(tmp_path / "o.onnx").graph.node)


def test_verify_with_absurd_input_dims_is_refused(tmp_path: Path, capsys):
    big = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2**20, 2**20])
    model = tmp_path / "m.onnx"
    onnx.save(make_model([node("Relu", ["x"], ["y"])], inputs=(big,), outputs=(big,)), model)
    code = main(["optimize", str(model), "-o", str(tmp_path / "o.onnx"), "--passes", "dce", "--verify"])
    err = capsys.readouterr().err
    assert code == 2 and "internal error" not in err, err


def test_negative_dims_are_refused(tmp_path: Path):
    tensor = TensorProto(name=NAME, data_type=TensorProto.FLOAT, dims=[-1, 4], raw_data=b"")
    model = tmp_path / "m.onnx"
    onnx.save(_in_initializer(tensor), model)
    with pytest.raises(InvalidModelError, match="negative dimension"):
        onnxq.load(model)


def test_graph_size_limit(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(safety, "MAX_GRAPH_ITEMS", 2)
    model = tmp_path / "m.onnx"
    onnx.save(
        make_model([node("Relu", ["x"], ["a"]), node("Relu", ["a"], ["b"]), node("Relu", ["b"], ["y"])]),
        model,
    )
    with pytest.raises(UnsafeModelError, match="more than 2 nodes"):
        onnxq.load(model)


def test_verify_data_with_pickled_objects_is_refused(tmp_path: Path, capsys):
    model = tmp_path / "m.onnx"
    onnx.save(make_model([node("Relu", ["x"], ["y"])], inputs=(X,), outputs=(Y,)), model)
    data = tmp_path / "feeds.npz"
    np.savez(data, x=np.array([{"payload": 1}], dtype=object))
    code = main(
        [
            "optimize",
            str(model),
            "-o",
            str(tmp_path / "o.onnx"),
            "--passes",
            "dce",
            "--verify-data",
            str(data),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1 and "is not a readable .npz file" in err
    assert not (tmp_path / "o.onnx").exists()


_UNSAFE = [
    (re.compile(r"^\s*(import|from)\s+(c?pickle|dill|joblib|shelve|marshal)\b", re.M), "pickle-like module"),
    (re.compile(r"allow_pickle\s*=\s*True"), "np.load(allow_pickle=True)"),
    (re.compile(r"\byaml\.(unsafe_)?load\((?![^)]*SafeLoader)"), "yaml.load without SafeLoader"),
]


def _source_files() -> list[Path]:
    files = [p for folder in ("onnxq", "passes", "backends") for p in (ROOT / folder).rglob("*.py")]
    assert len(files) > 10
    return files


def test_package_source_never_loads_pickles():
    problems = []
    for path in _source_files():
        text = path.read_text(encoding="utf-8")
        for pattern, what in _UNSAFE:
            problems += [
                f"{path.relative_to(ROOT)}: {what}: {m.group(0).strip()}" for m in pattern.finditer(text)
            ]
        for match in re.finditer(r"\btorch\.load\(", text):
            call = text[match.end() : match.end() + 400].split(")\n")[0]
            if not re.search(r"weights_only\s*=\s*True", call):
                problems.append(f"{path.relative_to(ROOT)}: torch.load without weights_only=True")
    assert problems == []


def test_the_source_scan_catches_what_it_looks_for():
    bad = "import pickle\nx = np.load(f, allow_pickle=True)\ny = yaml.load(s)\n"
    assert [what for pattern, what in _UNSAFE if pattern.search(bad)] == [w for _, w in _UNSAFE]
    assert not any(p.search("yaml.load(s, Loader=yaml.SafeLoader)") for p, _ in _UNSAFE)
