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


def make_model(
    nodes, *, inits=(), opset: int = 17, ir_version: int = 8, inputs=(X,), outputs=(Y,), functions=()
):
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


def _retyped(tensor: int | None = None, value: int | None = None) -> onnx.ModelProto:
    """The good model with initializer 'w' or input 'x' set to a data type number onnx does not define."""
    model = good_model()
    if tensor is not None:
        model.graph.initializer[0].data_type = tensor
    if value is not None:
        model.graph.input[0].type.tensor_type.elem_type = value
    return model


def _sparse_initializer() -> onnx.ModelProto:
    values = numpy_helper.from_array(np.ones(1, np.float32), "s")
    indices = numpy_helper.from_array(np.zeros(1, np.int64), "s_idx")
    model = make_model([node("Add", ["x", "s"], ["y"])])
    model.graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices, [1, 4]))
    return model


def _with_if(then_nodes: list[onnx.NodeProto]) -> onnx.ModelProto:
    """y = If(cond) with ``then_nodes`` (writing 't') as the then-branch."""
    out = helper.make_tensor_value_info("t", TensorProto.FLOAT, [1, 4])
    then = helper.make_graph(then_nodes, "then", [], [out])
    other = helper.make_graph([node("Identity", ["x"], ["t"])], "else", [], [out])
    cond = numpy_helper.from_array(np.array(True), "cond")
    return make_model([node("If", ["cond"], ["y"], then_branch=then, else_branch=other)], inits=[cond])


def _with_ir_version(version: int) -> Callable[[], onnx.ModelProto]:
    def build() -> onnx.ModelProto:
        model = good_model()
        model.ir_version = version
        return model

    return build


def _op_type_not_utf8() -> bytes:
    return good_model().SerializeToString().replace(b"MatMul", b"M\xffTMul")  # same length: still parses


def _producer_not_utf8() -> bytes:
    model = good_model()
    model.producer_name = "PRODUCER"
    return model.SerializeToString().replace(b"PRODUCER", b"PRO\xe2UCER")


def _no_graph() -> onnx.ModelProto:
    model = onnx.ModelProto(ir_version=8)
    model.opset_import.append(helper.make_opsetid("", 17))
    return model


@dataclass(frozen=True)
class BadModel:
    """A file onnxq must refuse on load (``optimize``, ``inspect``) with a message containing ``expect``."""

    name: str
    write: Callable[[Path], Path]
    expect: str


def _graph(nodes: list[onnx.NodeProto], **kwargs) -> Callable[[Path], Path]:
    return _write_proto(lambda: make_model(nodes, **kwargs))


n = node
PNG = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x06\0\0\0\x1f\x15\xc4\x89"
ONES = numpy_helper.from_array(np.ones((1, 1, 1, 1), np.float32), "w")
DANGLING = "is produced by no node and is neither a graph input nor an initializer"

# fmt: off
BAD_MODELS: list[BadModel] = [
    BadModel("text-file", _write_bytes(b"this is not an onnx model\n"), "is not an ONNX model"),
    BadModel("png-bytes", _write_bytes(PNG), "is not an ONNX model"),
    BadModel("json-text", _write_bytes(b'{"graph": {"node": []}}'), "is not an ONNX model"),
    BadModel("empty-file", _write_bytes(b""), "is empty"),
    BadModel("random-bytes", _write_bytes(np.random.default_rng(0).bytes(4096)), "is not an ONNX model"),
    *(BadModel(f"truncated-{int(f * 100)}pct", _write_bytes(_truncated(f)), "truncated or corrupted")
      for f in (0.02, 0.25, 0.5, 0.75, 0.99)),
    BadModel("truncated-after-ir-version", _write_bytes(lambda: good_model().SerializeToString()[:2]),
             "holds no ONNX graph"),
    BadModel("truncated-before-opsets", _write_bytes(_cut_before_opsets), "declares no opset imports"),
    BadModel("no-graph", _write_proto(_no_graph), "holds no ONNX graph"),
    BadModel("name-not-utf8", _write_bytes(_op_type_not_utf8),
             "field onnx.NodeProto.op_type holds bytes that are not valid UTF-8"),
    BadModel("producer-not-utf8", _write_bytes(_producer_not_utf8),
             "field onnx.ModelProto.producer_name holds bytes that are not valid UTF-8"),
    BadModel("cycle", _graph([n("Add", ["x", "b"], ["a"], name="add"), n("Relu", ["a"], ["b"]),
                              n("Relu", ["a"], ["y"])]), "has a cycle through node Add 'add'"),
    BadModel("dangling-input", _graph([n("Add", ["x", "ghost"], ["y"])]),
             f"input 'ghost' of node Add (unnamed) {DANGLING}"),
    BadModel("missing-initializer", _graph([n("MatMul", ["x", "w"], ["y"])]),
             f"input 'w' of node MatMul (unnamed) {DANGLING}"),
    BadModel("dangling-input-in-if-branch", _write_proto(lambda: _with_if([n("Add", ["x", "ghost"], ["t"])])),
             f"input 'ghost' of node Add (unnamed) {DANGLING}"),
    BadModel("cycle-in-if-branch", _write_proto(lambda: _with_if(
        [n("Relu", ["b"], ["a"]), n("Relu", ["a"], ["b"]), n("Identity", ["a"], ["t"])])),
        "graph 'then' has a cycle through node Relu"),
    BadModel("no-graph-outputs", _graph([n("Relu", ["x"], ["y"])], outputs=()),
             "the model's graph has no outputs"),
    BadModel("ir-version-99", _write_proto(_with_ir_version(99)), "ir_version 99 is higher than the checker"),
    BadModel("ir-version-unset", _write_proto(_with_ir_version(0)), "does not have an ir_version set"),
    BadModel("attribute-of-wrong-type", _graph([n("Conv", ["x", "w"], ["y"], strides=[1.5])], inits=[ONES]),
             "Mismatched attribute type in ' : strides'"),
    BadModel("duplicate-output-name", _graph([n("Relu", ["x"], ["y"]), n("Sigmoid", ["x"], ["y"])]),
             "'y' has been used as output names multiple"),
    BadModel("node-output-shadows-graph-input", _graph([n("Relu", ["x"], ["x"]), n("Relu", ["x"], ["y"])]),
             "'x' has been used as output names multiple"),
    BadModel("unknown-op", _graph([n("Frobnicate", ["x"], ["y"])]), "No Op registered for Frobnicate"),
    BadModel("opset-99", _graph([n("Relu", ["x"], ["y"])], opset=99),
             "uses ai.onnx opset 99, newer than the installed onnx knows"),
    BadModel("opset-1", _graph([n("Relu", ["x"], ["y"])], opset=1, ir_version=3),
             "uses ai.onnx opset 1; ONNX Runtime runs opset 7 and newer"),
    BadModel("external-data-missing", _missing_external_file,
             "external data file 'm.data' of tensor 'w' is missing"),
    BadModel("external-data-truncated", _external_data_cut(70),
             "tensor 'b' reads bytes 64..80 of 'm.data', which has only 70"),
    BadModel("external-data-offset-past-end", _external_data_cut(80, offset=70),
             "tensor 'w' reads bytes 70..134 of 'm.data', which has only 80"),
    BadModel("external-data-length-too-small", _external_data_cut(80, length=8),
             "tensor 'w' needs 64 bytes (dims [4, 4]) but its external-data length is 8"),
    BadModel("external-data-negative-offset", _external_data_cut(80, offset=-4), "negative external-data"),
    BadModel("external-data-bad-offset", _external_data_cut(80, offset="4k"), "malformed external-data"),
    BadModel("raw-data-size-mismatch", _write_proto(_raw_data_mismatch), "holds 40 bytes of raw data, but"),
    BadModel("tensor-unknown-data-type", _write_proto(lambda: _retyped(tensor=33)),
             "tensor 'w' has an unknown data type 33"),
    BadModel("input-unknown-elem-type", _write_proto(lambda: _retyped(value=33)), "Invalid tensor data type 33"),
    BadModel("sparse-initializer", _write_proto(_sparse_initializer), "has sparse initializers ('s')"),
    BadModel("huge-tensor", _graph([n("Add", ["x", "w"], ["y"])], inits=[huge_tensor()]),
             "tensor 'w' claims 1099511627776 elements"),
    BadModel("file-does-not-exist", lambda folder: folder / "absent.onnx", "does not exist"),
    BadModel("path-is-a-directory", lambda folder: folder, "is a directory, not an ONNX model file"),
]
# fmt: on


@dataclass(frozen=True)
class BadCommand:
    """An ``optimize`` (``BAD_COMMANDS``) or ``quantize`` (``bad_quantize_commands.py``) command line on a
    valid model that onnxq must refuse.

    ``args`` (shell words) follow ``optimize {model}`` / ``quantize {model}``; ``{model}``, ``{dir}`` (the
    model's folder), ``{dirname}``, ``{out}`` (``{dir}/out.onnx``) and ``{calib}`` (quantize only) are
    filled in. ``setup(folder)`` prepares extra files.
    """

    name: str
    args: str
    expect: str
    setup: Callable[[Path], None] | None = None
    needs_non_root: bool = False
    #: a known library bug makes the case fail: the test marks it ``xfail(strict=True)`` with this reason
    bug: str = ""


def write_base_model(folder: Path) -> Path:
    """The valid model the command cases run on (weights in ``o.onnx.data``)."""
    return save_external(good_model(), folder, BASE_DATA_NAME)


def _symlink_to_model(folder: Path) -> None:
    (folder / "link.onnx").symlink_to(folder / MODEL_NAME)


def _read_only_folder(folder: Path) -> None:
    (folder / "ro").mkdir()
    (folder / "ro").chmod(0o500)


CHEAP = "fold-constants,dce,topo-sort"
C = BadCommand

# fmt: off
BAD_COMMANDS: list[BadCommand] = [
    C("unknown-pass", "-o {out} --passes fold-constants,frobnicate",
      "unknown pass or pipeline 'frobnicate'; known: cleanup, dce, default,"),
    C("passes-uppercase", "-o {out} --passes Fold-Constants", "cannot parse pipeline item 'Fold-Constants'"),
    C("passes-unclosed-brace", "-o {out} --passes 'fold-constants{input_size_limit=8'",
      "cannot parse pipeline item 'fold-constants{input_size_limit=8'"),
    C("passes-stray-brace", "-o {out} --passes 'dce}'", "cannot parse pipeline item 'dce}'"),
    C("passes-option-not-int", "-o {out} --passes 'fold-constants{input_size_limit=abc}'",
      "option 'input_size_limit' expects int, got 'abc'"),
    C("passes-unknown-option", "-o {out} --passes 'fold-constants{bogus=1}'",
      "unknown option of pass 'fold-constants' 'bogus'; known: input_size_limit"),
    C("passes-option-without-value", "-o {out} --passes 'fold-constants{input_size_limit}'",
      "option 'input_size_limit' must be key=value"),
    C("passes-empty", "-o {out} --passes ''", "empty pass pipeline"),
    C("input-shape-not-integer", f"-o {{out}} --passes {CHEAP} --input-shape x=1xfoo",
      "--input-shape 'x=1xfoo': dims must be integers"),
    C("input-shape-no-name", f"-o {{out}} --passes {CHEAP} --input-shape 1x4", "must look like NAME="),
    C("input-shape-zero-dim", f"-o {{out}} --passes {CHEAP} --input-shape x=0x4", "dims must be positive"),
    C("input-shape-unknown-input", f"-o {{out}} --passes {CHEAP} --input-shape q=1x4",
      "unknown model input 'q'; known: x"),
    C("input-shape-wrong-rank", f"-o {{out}} --passes {CHEAP} --input-shape x=1x4x4", "input 'x' has rank 2"),
    C("input-shape-conflicts-static-dim", f"-o {{out}} --passes {CHEAP} --input-shape x=2x4",
      "input 'x' axis 0 is fixed at 1"),
    C("no-output", f"--passes {CHEAP}", "no output given: pass -o OUT, or --in-place"),
    C("output-is-a-directory", f"-o {{dir}} --passes {CHEAP}", "is a directory; give a file path"),
    C("output-folder-missing", f"-o {{dir}}/missing/o.onnx --passes {CHEAP}",
      "output folder '{dir}/missing' does not exist"),
    C("output-under-proc", f"-o /proc/onnxq-test.onnx --passes {CHEAP}", "output folder '/proc'"),
    C("output-folder-read-only", f"-o {{dir}}/ro/o.onnx --passes {CHEAP}",
      "output folder '{dir}/ro' is not writable",
      setup=_read_only_folder, needs_non_root=True),
    C("output-is-input", f"-o {{model}} --passes {CHEAP}", "is the input file"),
    C("output-is-input-other-spelling", f"-o {{dir}}/../{{dirname}}/./m.onnx --passes {CHEAP}",
      "is the input file"),
    C("output-is-symlink-to-input", f"-o {{dir}}/link.onnx --passes {CHEAP}", "is the input file",
      setup=_symlink_to_model),
    C("output-is-input-data", f"-o {{dir}}/{BASE_DATA_NAME} --passes {CHEAP}", "is the input file"),
    C("output-data-overwrites-input-data", f"-o {{dir}}/o.onnx --external-data --passes {CHEAP}",
      "would overwrite the input's data"),
    C("verify-data-missing", f"-o {{out}} --passes {CHEAP} --verify-data {{dir}}/none.npz",
      "data file '{dir}/none.npz' does not exist"),
    C("verify-data-not-npz", f"-o {{out}} --passes {CHEAP} --verify-data {{model}}", "not a readable .npz"),
]
# fmt: on


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
