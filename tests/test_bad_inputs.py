"""Bad input gets one clear line on stderr and exit code 2; a failed run writes nothing and loses nothing.

The corpus (files and command lines, each with the message it must print) is the tables in
``make_bad_models.py`` and, for ``quantize``, ``bad_quantize_commands.py``. Every case runs the real CLI in-process and checks the whole contract: exit code,
exactly one ``onnxq: error:`` line containing the expected text, no traceback, and the folder exactly as
before (no output, no ``.*.tmp`` staging folder, input files byte-identical).
"""

from __future__ import annotations

import errno
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from bad_quantize_commands import BAD_QUANTIZE_COMMANDS, write_quantize_inputs
from make_bad_models import (
    BAD_COMMANDS,
    BAD_MODELS,
    CHEAP,
    BadCommand,
    BadModel,
    good_model,
    write_base_model,
)
from onnxq import model_io, numerics, pass_api
from onnxq.backends.registry import BACKENDS
from onnxq.cli import main
from onnxq.errors import ValidationError

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def snapshot(root: Path) -> dict[str, bytes | str]:
    """Everything under ``root``: file bytes, symlink targets, folders."""
    state: dict[str, bytes | str] = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        if path.is_symlink():
            state[key] = f"-> {os.readlink(path)}"
        elif path.is_dir():
            state[key] = "dir"
        else:
            state[key] = path.read_bytes()
    return state


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, expect: str, exit_code: int = 2) -> None:
    assert code == exit_code, err
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert lines[0].startswith("onnxq: error: "), lines[0]
    assert expect in lines[0], lines[0]
    assert "Traceback" not in err and "internal error" not in err


@pytest.mark.parametrize("command", ["optimize", "inspect"])
@pytest.mark.parametrize("case", BAD_MODELS, ids=lambda c: c.name)
def test_bad_model_is_refused(case: BadModel, command: str, tmp_path: Path, capsys):
    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    model = case.write(tmp_path / "in")
    before = snapshot(tmp_path)
    argv = ["inspect", str(model)]
    if command == "optimize":
        argv = ["optimize", str(model), "-o", str(tmp_path / "out" / "o.onnx"), "--passes", CHEAP]
    code, out, err = run_cli(argv, capsys)
    assert_one_line_error(code, err, case.expect)
    assert out == ""
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("case", BAD_COMMANDS, ids=lambda c: c.name)
def test_bad_command_line_is_refused(case: BadCommand, tmp_path: Path, capsys):
    if case.needs_non_root and IS_ROOT:
        pytest.skip("root may write into a 0o500 folder; the /proc and missing-folder cases cover it")
    folder = tmp_path / "work"
    model = write_base_model(folder)
    if case.setup:
        case.setup(folder)
    values = {
        "model": str(model),
        "dir": str(folder),
        "dirname": folder.name,
        "out": str(folder / "out.onnx"),
    }

    def fill(text: str) -> str:
        for key, value in values.items():
            text = text.replace("{" + key + "}", value)
        return text

    argv = ["optimize", str(model), *map(fill, shlex.split(case.args))]
    before = snapshot(tmp_path)
    code, out, err = run_cli(argv, capsys)
    assert_one_line_error(code, err, fill(case.expect))
    assert snapshot(tmp_path) == before


def _with_known_bugs(cases: list[BadCommand]) -> list:
    return [pytest.param(c, id=c.name, marks=[pytest.mark.xfail(strict=True, reason=c.bug)] if c.bug else [])
            for c in cases]


@pytest.mark.parametrize("case", _with_known_bugs(BAD_QUANTIZE_COMMANDS))
def test_bad_quantize_command_line_is_refused(case: BadCommand, tmp_path: Path, capsys):
    folder = tmp_path / "work"
    model, calib = write_quantize_inputs(folder)
    if case.setup:
        case.setup(folder)
    values = {"model": str(model), "calib": str(calib), "dir": str(folder), "dirname": folder.name,
              "out": str(folder / "out.onnx")}

    def fill(text: str) -> str:
        for key, value in values.items():
            text = text.replace("{" + key + "}", value)
        return text

    before = snapshot(tmp_path)
    code, out, err = run_cli(["quantize", str(model), *map(fill, shlex.split(case.args))], capsys)
    assert_one_line_error(code, err, fill(case.expect))
    assert out == ""
    assert snapshot(tmp_path) == before


def test_unknown_target_lists_every_valid_choice(tmp_path: Path, capsys):
    model, calib = write_quantize_inputs(tmp_path)
    argv = ["quantize", str(model), "-o", str(tmp_path / "q.onnx"), "--calib", str(calib), "--target", "nope"]
    code, _, err = run_cli(argv, capsys)
    assert_one_line_error(code, err, "unknown target 'nope'; known: " + ", ".join(sorted(BACKENDS)))


def test_quantize_entry_point_exit_code_in_a_subprocess(tmp_path: Path):
    model, calib = write_quantize_inputs(tmp_path)
    exe = Path(sys.executable).with_name("onnxq")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "onnxq.cli"]
    argv = ["quantize", str(model), "-o", str(tmp_path / "q.onnx"), "--calib", str(calib), "--method", "kl"]
    result = subprocess.run(
        [*cmd, *argv],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert_one_line_error(result.returncode, result.stderr, "unknown calibration method 'kl'")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calib.npz", "m.onnx"]


def test_unknown_pass_lists_every_valid_choice(tmp_path: Path, capsys):
    model = write_base_model(tmp_path)
    code, _, err = run_cli(
        ["optimize", str(model), "-o", str(tmp_path / "o.onnx"), "--passes", "nope"], capsys
    )
    assert_one_line_error(code, err, "unknown pass or pipeline 'nope'")
    for name in [*pass_api.available_passes(), "default", "cleanup"]:
        assert name in err


@pytest.mark.parametrize(
    "argv_tail,expect",
    [
        (["--passes", "frobnicate"], "unknown pass or pipeline 'frobnicate'"),
        ([], "truncated or corrupted"),
    ],
)
def test_entry_point_exit_code_in_a_subprocess(tmp_path: Path, argv_tail, expect):
    path = tmp_path / "m.onnx"
    data = good_model().SerializeToString()
    path.write_bytes(data if argv_tail else data[: len(data) // 2])
    exe = Path(sys.executable).with_name("onnxq")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "onnxq.cli"]
    result = subprocess.run(
        [*cmd, "optimize", str(path), "-o", str(tmp_path / "o.onnx"), *argv_tail],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert_one_line_error(result.returncode, result.stderr, expect)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_debug_flag_does_not_leak_into_the_next_run(tmp_path: Path, capsys):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"not onnx")
    code, _, err = run_cli(["--debug", "inspect", str(path)], capsys)
    assert code == 2 and "Traceback" in err
    code, _, err = run_cli(["inspect", str(path)], capsys)
    assert_one_line_error(code, err, "is not an ONNX model")


# --- nothing lost -------------------------------------------------------------------------------------


def _folded_model_path(folder: Path, *, external: bool = False) -> Path:
    """A model that fold-constants changes: y = x + (c1 + c2)."""
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1, 4] x) => (float[1, 4] y) <float[4] c1 = {1, 2, 3, 4}, float[4] c2 = {5, 6, 7, 8}>
    { c = Add(c1, c2)
      y = Add(x, c) }
    """
    path = folder / "m.onnx"
    model = onnx.parser.parse_model(text)
    if external:
        onnx.save(model, path, save_as_external_data=True, location="m.onnx.data", size_threshold=0)
    else:
        onnx.save(model, path)
    return path


def _outputs(path: Path) -> np.ndarray:
    return numerics.run_model(str(path), {"x": np.arange(4, dtype=np.float32).reshape(1, 4)})["y"]


def test_validation_failure_during_save_leaves_nothing(tmp_path: Path, capsys, monkeypatch):
    model = _folded_model_path(tmp_path)
    before = snapshot(tmp_path)

    def refuse(path: Path, *, scratch=None) -> None:
        assert path.exists() and path.parent.name.endswith(".tmp")  # staged beside the destination
        raise ValidationError("the produced model fails onnx.checker, so it was not written: test")

    monkeypatch.setattr(model_io, "validate_model_file", refuse)
    code, _, err = run_cli(
        ["optimize", str(model), "-o", str(tmp_path / "o.onnx"), "--passes", CHEAP], capsys
    )
    assert_one_line_error(code, err, "so it was not written", exit_code=1)
    assert snapshot(tmp_path) == before


class _BreakModelPass(pass_api.OnnxqPass):
    """Turns every Add into an op no one knows: a pass bug the save-time validation must catch."""

    name = "test-break-model"
    summary = "make the model invalid (test only)"

    def apply(self, model: ir.Model) -> int:
        for node in model.graph:
            node.op_type = "NoSuchOp"
        return 1


def test_pass_that_produces_an_invalid_model_writes_nothing(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.setitem(pass_api._REGISTRY, _BreakModelPass.name, _BreakModelPass)
    model = _folded_model_path(tmp_path, external=True)
    before = snapshot(tmp_path)
    for extra in ([], ["--external-data"]):
        argv = [
            "optimize",
            str(model),
            "-o",
            str(tmp_path / "o.onnx"),
            "--passes",
            "test-break-model",
            *extra,
        ]
        code, _, err = run_cli(argv, capsys)
        assert_one_line_error(code, err, "fails onnx.checker, so it was not written", exit_code=1)
        assert snapshot(tmp_path) == before


@pytest.mark.parametrize(
    "failure,exit_code,expect",
    [
        (OSError(errno.ENOSPC, "No space left on device"), 2, "No space left on device"),
        (KeyboardInterrupt(), 130, "interrupted; nothing was written"),
    ],
)
def test_failed_write_leaves_nothing(tmp_path: Path, capsys, monkeypatch, failure, exit_code, expect):
    model = _folded_model_path(tmp_path)
    before = snapshot(tmp_path)
    real_write = model_io._write

    def write_then_fail(model_, path: Path, data_name):
        real_write(model_, path, data_name)  # a complete staged file exists when the failure hits
        raise failure

    monkeypatch.setattr(model_io, "_write", write_then_fail)
    code, _, err = run_cli(
        ["optimize", str(model), "-o", str(tmp_path / "o.onnx"), "--passes", CHEAP], capsys
    )
    assert_one_line_error(code, err, expect, exit_code=exit_code)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("external", [False, True], ids=["embedded", "external-data"])
def test_in_place_replaces_the_input_atomically(tmp_path: Path, capsys, external: bool):
    model = _folded_model_path(tmp_path, external=external)
    expected = _outputs(model)
    old_bytes, old_inode = model.read_bytes(), model.stat().st_ino
    argv = [
        "optimize",
        str(model),
        "--in-place",
        "--passes",
        CHEAP,
        *(["--external-data"] if external else []),
    ]
    code, _, err = run_cli(argv, capsys)
    assert code == 0, err
    assert model.read_bytes() != old_bytes and model.stat().st_ino != old_inode
    assert [n.op_type for n in onnx.load(model).graph.node] == ["Add"]  # c1 + c2 folded
    assert sorted(p.name for p in tmp_path.iterdir()) == (
        ["m.onnx", "m.onnx.data"] if external else ["m.onnx"]
    )
    np.testing.assert_allclose(_outputs(model), expected, rtol=1e-6)


def test_output_equal_to_input_needs_in_place(tmp_path: Path, capsys):
    model = _folded_model_path(tmp_path)
    before = snapshot(tmp_path)
    code, _, err = run_cli(["optimize", str(model), "-o", str(model), "--passes", CHEAP], capsys)
    assert_one_line_error(code, err, "pass --in-place")
    assert snapshot(tmp_path) == before
    code, _, err = run_cli(
        ["optimize", str(model), "-o", str(model), "--in-place", "--passes", CHEAP], capsys
    )
    assert code == 0, err
    assert snapshot(tmp_path) != before and sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_pipeline_of_only_separators_is_refused(tmp_path: Path, capsys):
    model = write_base_model(tmp_path)
    code, _, err = run_cli(
        ["optimize", str(model), "-o", str(tmp_path / "o.onnx"), "--passes", " , "], capsys
    )
    assert_one_line_error(code, err, "empty pass pipeline")
