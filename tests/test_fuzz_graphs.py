"""Property tests on random graphs (``strategies.fuzz_models``) and on randomly corrupted model files.

(a) The default pipeline keeps what a valid model computes (ONNX Runtime, relative error <= 1e-4 on random
    inputs), and its result passes the full ``onnx.checker`` and ``onnxq.save``'s validation.
(b) A corrupted model file fed to the CLI gives exit 0 or one clean ``onnxq: error:`` line with exit 2:
    never a traceback, an internal error, or a file left behind by a failed run.

Derandomized, so CI sees the same examples on every run; a failure prints ``FuzzCase.describe()``.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

import onnxq
from onnxq import numerics
from onnxq.cli import main
from strategies import FuzzCase, default_pipeline, fuzz_models

RTOL = 1e-4
FUZZ = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
CORRUPT = settings(FUZZ, max_examples=60)


def _feeds(case: FuzzCase, seed: int) -> dict[str, np.ndarray]:
    dims = [d.dim_value for d in case.model.graph.input[0].type.tensor_type.shape.dim]
    shape = (case.batch, *dims[1:])
    return {"x": np.random.default_rng(seed).standard_normal(shape).astype(np.float32)}


@FUZZ
@given(case=fuzz_models(), seed=st.integers(0, 3))
def test_default_pipeline_keeps_numerics_and_writes_a_valid_model(case: FuzzCase, seed: int):
    note(case.describe())
    feeds = _feeds(case, seed)
    expected = numerics.run_model(case.model.SerializeToString(), feeds)["y"]
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "in.onnx"
        onnx.save(case.model, source)
        optimized, report = onnxq.optimize(onnxq.load(source), default_pipeline())
        note(", ".join(f"{r.name}:{r.rewrites}" for r in report.records if r.rewrites))
        onnx.checker.check_model(ir.to_proto(optimized), full_check=True)
        out = onnxq.save(optimized, Path(folder) / "out.onnx")
        actual = numerics.run_model(str(out), feeds)["y"]
    assert actual.shape == expected.shape
    error = numerics.relative_error(expected, actual)
    assert error <= RTOL, f"relative error {error:.3g} > {RTOL}"


# --- corrupted files ----------------------------------------------------------------------------------


def _base_models() -> list[bytes]:
    """A small model and the demo model (every default pass fires on it)."""
    from conftest import load_tool
    from make_bad_models import good_model

    return [good_model().SerializeToString(), load_tool("make_demo_model").build().SerializeToString()]


BASES = _base_models()


class Corruption(bytes):
    """Corrupted model bytes whose repr says how they were made (hypothesis prints it on failure)."""

    label = ""

    def __repr__(self) -> str:
        return f"Corruption({self.label}, {len(self)} bytes)"


@st.composite
def corruptions(draw) -> Corruption:
    index = draw(st.integers(0, len(BASES) - 1))
    data = bytearray(BASES[index])
    kind = draw(st.sampled_from(["truncate", "flip", "flip-many", "overwrite", "insert", "delete"]))
    pos = draw(st.integers(0, len(data) - 1))
    if kind == "truncate":
        data = data[:pos]
    elif kind == "flip":
        data[pos] ^= 1 << draw(st.integers(0, 7))
    elif kind == "flip-many":
        for p in draw(st.lists(st.integers(0, len(data) - 1), min_size=2, max_size=16)):
            data[p] ^= draw(st.integers(1, 255))
    elif kind == "overwrite":
        chunk = draw(st.binary(min_size=1, max_size=32))
        data[pos : pos + len(chunk)] = chunk
    elif kind == "insert":
        data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
    else:
        del data[pos : pos + draw(st.integers(1, 64))]
    corruption = Corruption(data)
    corruption.label = f"base {index}, {kind}@{pos}"
    return corruption


def _run(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    return code, err.getvalue()


@CORRUPT
@given(corruption=corruptions())
def test_corrupted_model_gives_exit_0_or_one_clean_error_line(corruption: Corruption):
    data = bytes(corruption)
    with tempfile.TemporaryDirectory() as folder:
        source, out = Path(folder) / "m.onnx", Path(folder) / "out.onnx"
        source.write_bytes(data)
        for argv in (
            ["inspect", str(source)],
            ["optimize", str(source), "-o", str(out), "--passes", default_pipeline()],
        ):
            code, err = _run(argv)
            assert "Traceback" not in err and "internal error" not in err, err
            assert code in (0, 2), err
            if code == 2:
                lines = err.splitlines()
                assert len(lines) == 1 and lines[0].startswith("onnxq: error: "), err
        assert source.read_bytes() == data
        names = sorted(p.name for p in Path(folder).iterdir())
        assert names in (["m.onnx"], ["m.onnx", "out.onnx"]), names
        if code == 0:
            onnx.checker.check_model(onnx.load(out), full_check=True)
