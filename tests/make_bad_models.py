"""The bad-input corpus: files and command lines onnxq must refuse, each with the message it must print.

Nothing binary is committed: every case is a row of a table that writes its files into a folder at test
time (``write(folder) -> model path``), next to the substring its one-line ``onnxq: error:`` must contain.
``tests/test_bad_inputs.py`` and ``tests/test_safety.py`` run the rows; to look at the files by hand:

    python tests/make_bad_models.py /tmp/bad_models
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

MODEL_NAME = "m.onnx"
#: The base model of the command-line cases keeps its weights here, so ``-o o.onnx --external-data``
#: would overwrite them.
BASE_DATA_NAME = "o.onnx.data"

node = helper.make_node
X = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
Y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])


def make_model(nodes, *, inits=(), opset: int = 17, ir_version: int = 8, inputs=(X,), outputs=(Y,), functions=()):
    graph = helper.make_graph(list(nodes), "g", list(inputs), list(outputs), list(inits))
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(f.domain, 1) for f in functions]
    model = helper.make_model(graph, opset_imports=opsets, functions=list(functions))
    model.ir_version = ir_version
    return model


def good_model() -> onnx.ModelProto:
    """y = Relu(x @ w + b): small, valid, with initializers."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 4)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b")
    nodes = [node("MatMul", ["x", "w"], ["m"]), node("Add", ["m", "b"], ["a"]), node("Relu", ["a"], ["y"])]
    return make_model(nodes, inits=[w, b])


def external_tensor(name: str, location: str, dims=(1, 4), **entries: int) -> TensorProto:
    """A float tensor stored outside the protobuf, with hand-set external-data entries."""
    tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=list(dims))
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in {"location": location, **entries}.items():
        entry = tensor.external_data.add()
        entry.key, entry.value = key, str(value)
    return tensor


def huge_tensor(name: str = "w") -> TensorProto:
    """Dims claim 2**40 elements; the bytes are 4 (nothing would fit anyway)."""
    return TensorProto(name=name, data_type=TensorProto.FLOAT, dims=[2**20, 2**20], raw_data=b"\0" * 4)


def save_external(model: onnx.ModelProto, folder: Path, data_name: str = "m.data") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / MODEL_NAME
    onnx.save(model, path, save_as_external_data=True, location=data_name, size_threshold=0)
    return path


def _write_bytes(data: bytes | Callable[[], bytes]) -> Callable[[Path], Path]:
    def write(folder: Path) -> Path:
        path = folder / MODEL_NAME
        path.write_bytes(data() if callable(data) else data)
        return path

    return write


def _write_proto(build: Callable[[], onnx.ModelProto]) -> Callable[[Path], Path]:
    def write(folder: Path) -> Path:
        path = folder / MODEL_NAME
        onnx.save(build(), path)
        return path

    return write


def _truncated(fraction: float) -> Callable[[], bytes]:
    def data() -> bytes:
        full = good_model().SerializeToString()
        return full[: max(1, int(len(full) * fraction))]

    return data


def _cut_before_opsets() -> bytes:
    model = good_model()
    del model.opset_import[:]
    return model.SerializeToString()  # the full model's prefix: everything up to its opset_import field


def _external_data_cut(keep: int, **entries: int) -> Callable[[Path], Path]:
    """A valid external-data model whose data file then loses all but ``keep`` bytes."""

    def write(folder: Path) -> Path:
        path = save_external(good_model(), folder)
        data = folder / "m.data"
        if entries:  # rewrite the entries of 'w' by hand
            proto = onnx.load(path, load_external_data=False)
            w = next(t for t in proto.graph.initializer if t.name == "w")
            kept = {e.key: e.value for e in w.external_data}
            del w.external_data[:]
            for key, value in {**kept, **{k: str(v) for k, v in entries.items()}}.items():
                entry = w.external_data.add()
                entry.key, entry.value = key, value
            onnx.save(proto, path)
        data.write_bytes(data.read_bytes()[:keep])
        return path

    return write


def _missing_external_file(folder: Path) -> Path:
    path = save_external(good_model(), folder)
    (folder / "m.data").unlink()
    return path


def _raw_data_mismatch() -> onnx.ModelProto:
    w = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4, 4], raw_data=b"\0" * 40)
    return make_model([node("MatMul", ["x", "w"], ["y"])], inits=[w])


def _sparse_initializer() -> onnx.ModelProto:
    values = numpy_helper.from_array(np.ones(1, np.float32), "s")
    indices = numpy_helper.from_array(np.zeros(1, np.int64), "s_idx")
    model = make_model([node("Add", ["x", "s"], ["y"])])
    model.graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices, [1, 4]))
    return model


def _no_graph() -> onnx.ModelProto:
    model = onnx.ModelProto(ir_version=8)
    model.opset_import.append(helper.make_opsetid("", 17))
    return model


@dataclass(frozen=True)
class BadModel:
    """A model file onnxq must refuse on load (``optimize`` and ``inspect``) with a message containing ``expect``."""

    name: str
    write: Callable[[Path], Path]
    expect: str


BAD_MODELS: list[BadModel] = [
    BadModel("text-file", _write_bytes(b"this is not an onnx model\n"), "is not an ONNX model"),
    BadModel("png-bytes", _write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x06\0\0\0\x1f\x15\xc4\x89"),
             "is not an ONNX model"),
    BadModel("json-text", _write_bytes(b'{"graph": {"node": []}}'), "is not an ONNX model"),
    BadModel("empty-file", _write_bytes(b""), "is empty"),
    BadModel("random-bytes", _write_bytes(np.random.default_rng(0).bytes(4096)), "is not an ONNX model"),
    *(BadModel(f"truncated-{int(f * 100)}pct", _write_bytes(_truncated(f)), "truncated or corrupted")
      for f in (0.02, 0.25, 0.5, 0.75, 0.99)),
    BadModel("truncated-after-ir-version", _write_bytes(lambda: good_model().SerializeToString()[:2]),
             "holds no ONNX graph"),
    BadModel("truncated-before-opsets", _write_bytes(_cut_before_opsets), "declares no opset imports"),
    BadModel("no-graph", _write_proto(_no_graph), "holds no ONNX graph"),
    BadModel("cycle", _write_proto(lambda: make_model(
        [node("Add", ["x", "b"], ["a"], name="add"), node("Relu", ["a"], ["b"]), node("Relu", ["a"], ["y"])])),
        "has a cycle through node Add 'add'"),
    BadModel("dangling-input", _write_proto(lambda: make_model([node("Add", ["x", "ghost"], ["y"])])),
             "input 'ghost' of node Add (unnamed) is produced by no node"),
    BadModel("missing-initializer", _write_proto(lambda: make_model([node("MatMul", ["x", "w"], ["y"])])),
             "input 'w' of node MatMul (unnamed) is produced by no node and is neither a graph input nor an "
             "initializer"),
    BadModel("duplicate-output-name", _write_proto(lambda: make_model(
        [node("Relu", ["x"], ["y"]), node("Sigmoid", ["x"], ["y"])])), "'y' has been used as output names multiple"),
    BadModel("node-output-shadows-graph-input", _write_proto(lambda: make_model(
        [node("Relu", ["x"], ["x"]), node("Relu", ["x"], ["y"])])), "'x' has been used as output names multiple"),
    BadModel("unknown-op", _write_proto(lambda: make_model([node("Frobnicate", ["x"], ["y"])])),
             "No Op registered for Frobnicate"),
    BadModel("opset-99", _write_proto(lambda: make_model([node("Relu", ["x"], ["y"])], opset=99)),
             "uses ai.onnx opset 99, newer than the installed onnx knows"),
    BadModel("opset-1", _write_proto(lambda: make_model([node("Relu", ["x"], ["y"])], opset=1, ir_version=3)),
             "uses ai.onnx opset 1; ONNX Runtime runs opset 7 and newer"),
    BadModel("external-data-missing", _missing_external_file, "external data file 'm.data' of tensor 'w' is missing"),
    BadModel("external-data-truncated", _external_data_cut(70), "tensor 'b' reads bytes 64..80 of 'm.data', which has only 70"),
    BadModel("external-data-offset-past-end", _external_data_cut(80, offset=70),
             "tensor 'w' reads bytes 70..134 of 'm.data', which has only 80"),
    BadModel("external-data-length-too-small", _external_data_cut(80, length=8),
             "tensor 'w' needs 64 bytes (dims [4, 4]) but its external-data length is 8"),
    BadModel("external-data-negative-offset", _external_data_cut(80, offset=-4), "negative external-data offset"),
    BadModel("external-data-bad-offset", _external_data_cut(80, offset="4k"), "malformed external-data entry"),
    BadModel("raw-data-size-mismatch", _write_proto(_raw_data_mismatch), "holds 40 bytes of raw data, but its dims"),
    BadModel("sparse-initializer", _write_proto(_sparse_initializer), "has sparse initializers ('s')"),
    BadModel("huge-tensor", _write_proto(lambda: make_model([node("Add", ["x", "w"], ["y"])], inits=[huge_tensor()])),
             "tensor 'w' claims 1099511627776 elements"),
    BadModel("file-does-not-exist", lambda folder: folder / "absent.onnx", "does not exist"),
    BadModel("path-is-a-directory", lambda folder: folder, "is a directory, not an ONNX model file"),
]


@dataclass(frozen=True)
class BadCommand:
    """An ``optimize`` command line on a valid model that onnxq must refuse.

    ``args`` follow ``optimize {model}``; ``{model}``, ``{dir}`` (the model's folder) and ``{out}``
    (``{dir}/out.onnx``) are filled in. ``setup(folder)`` prepares extra files.
    """

    name: str
    args: tuple[str, ...]
    expect: str
    setup: Callable[[Path], None] | None = None
    needs_non_root: bool = False


def write_base_model(folder: Path) -> Path:
    """The valid model the command cases run on (weights in ``o.onnx.data``)."""
    return save_external(good_model(), folder, BASE_DATA_NAME)


def _symlink_to_model(folder: Path) -> None:
    (folder / "link.onnx").symlink_to(folder / MODEL_NAME)


def _read_only_folder(folder: Path) -> None:
    (folder / "ro").mkdir()
    (folder / "ro").chmod(0o500)


CHEAP = "fold-constants,dce,topo-sort"
OUT = ("-o", "{out}")

BAD_COMMANDS: list[BadCommand] = [
    BadCommand("unknown-pass", (*OUT, "--passes", "fold-constants,frobnicate"),
               "unknown pass or pipeline 'frobnicate'; known: cleanup, dce, default,"),
    BadCommand("passes-uppercase", (*OUT, "--passes", "Fold-Constants"), "cannot parse pipeline item 'Fold-Constants'"),
    BadCommand("passes-unclosed-brace", (*OUT, "--passes", "fold-constants{input_size_limit=8"),
               "cannot parse pipeline item 'fold-constants{input_size_limit=8'"),
    BadCommand("passes-stray-brace", (*OUT, "--passes", "dce}"), "cannot parse pipeline item 'dce}'"),
    BadCommand("passes-option-not-int", (*OUT, "--passes", "fold-constants{input_size_limit=abc}"),
               "option 'input_size_limit' expects int, got 'abc'"),
    BadCommand("passes-unknown-option", (*OUT, "--passes", "fold-constants{bogus=1}"),
               "unknown option of pass 'fold-constants' 'bogus'; known: input_size_limit"),
    BadCommand("passes-option-without-value", (*OUT, "--passes", "fold-constants{input_size_limit}"),
               "option 'input_size_limit' must be key=value"),
    BadCommand("passes-empty", (*OUT, "--passes", ""), "empty pass pipeline"),
    BadCommand("input-shape-not-integer", (*OUT, "--passes", CHEAP, "--input-shape", "x=1xfoo"),
               "--input-shape 'x=1xfoo': dims must be integers"),
    BadCommand("input-shape-no-name", (*OUT, "--passes", CHEAP, "--input-shape", "1x4"), "must look like NAME="),
    BadCommand("input-shape-zero-dim", (*OUT, "--passes", CHEAP, "--input-shape", "x=0x4"), "dims must be positive"),
    BadCommand("input-shape-unknown-input", (*OUT, "--passes", CHEAP, "--input-shape", "q=1x4"),
               "unknown model input 'q'; known: x"),
    BadCommand("input-shape-wrong-rank", (*OUT, "--passes", CHEAP, "--input-shape", "x=1x4x4"),
               "input 'x' has rank 2"),
    BadCommand("input-shape-conflicts-static-dim", (*OUT, "--passes", CHEAP, "--input-shape", "x=2x4"),
               "input 'x' axis 0 is fixed at 1"),
    BadCommand("no-output", ("--passes", CHEAP), "no output given: pass -o OUT, or --in-place"),
    BadCommand("output-is-a-directory", ("-o", "{dir}", "--passes", CHEAP), "is a directory; give a file path"),
    BadCommand("output-folder-missing", ("-o", "{dir}/missing/o.onnx", "--passes", CHEAP),
               "output folder '{dir}/missing' does not exist"),
    BadCommand("output-under-proc", ("-o", "/proc/onnxq-test.onnx", "--passes", CHEAP), "output folder '/proc'"),
    BadCommand("output-folder-read-only", ("-o", "{dir}/ro/o.onnx", "--passes", CHEAP),
               "output folder '{dir}/ro' is not writable", setup=_read_only_folder, needs_non_root=True),
    BadCommand("output-is-input", ("-o", "{model}", "--passes", CHEAP), "is the input file"),
    BadCommand("output-is-input-other-spelling", ("-o", "{dir}/../{dirname}/./m.onnx", "--passes", CHEAP),
               "is the input file"),
    BadCommand("output-is-symlink-to-input", ("-o", "{dir}/link.onnx", "--passes", CHEAP), "is the input file",
               setup=_symlink_to_model),
    BadCommand("output-is-input-data", ("-o", "{dir}/" + BASE_DATA_NAME, "--passes", CHEAP), "is the input file"),
    BadCommand("output-data-overwrites-input-data", ("-o", "{dir}/o.onnx", "--external-data", "--passes", CHEAP),
               "would overwrite the input's data"),
    BadCommand("verify-data-missing", (*OUT, "--passes", CHEAP, "--verify-data", "{dir}/none.npz"),
               "data file '{dir}/none.npz' does not exist"),
    BadCommand("verify-data-not-npz", (*OUT, "--passes", CHEAP, "--verify-data", "{model}"), "is not a readable .npz"),
]


def main(argv: list[str]) -> int:
    """Write every bad model into ``argv[0]/<case>/`` (for looking at them by hand)."""
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    root = Path(argv[0])
    for case in BAD_MODELS:
        folder = root / case.name
        folder.mkdir(parents=True, exist_ok=True)
        path = case.write(folder)
        print(f"{case.name:40s} {os.path.relpath(path, root):40s} expect: {case.expect}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
