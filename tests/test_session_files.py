"""SessionFiles: ORT sessions from files whose weights it maps give the numbers sessions from bytes give."""

from __future__ import annotations

import sys
import tempfile

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest

from onnxq import heap, numerics
from onnxq.session_files import SessionFiles

# A float weight large enough to go external, an int64 shape that must stay inline (shape inference reads
# it), a float scale too small to be worth mapping.
MODEL = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 64] x) => (float[N, 8, 8] y) <float[64, 64] w, int64[3] shape, float[1] s> {
  h = MatMul(x, w)
  r = Reshape(h, shape)
  y = Mul(r, s)
}
"""


def small_model() -> ir.Model:
    proto = onnx.parser.parse_model(MODEL)
    rng = np.random.default_rng(0)
    proto.graph.initializer.extend([
        onnx.numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32), "w"),
        onnx.numpy_helper.from_array(np.array([-1, 8, 8], np.int64), "shape"),
        onnx.numpy_helper.from_array(np.array([0.5], np.float32), "s"),
    ])
    return ir.serde.deserialize_model(proto)


def run(source, level) -> np.ndarray:
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((3, 64)).astype(np.float32)
    return session.run(None, {"x": x})[0]


@pytest.mark.parametrize("level", [ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                                   ort.GraphOptimizationLevel.ORT_ENABLE_ALL])
def test_session_from_file_equals_session_from_bytes(level):
    model = small_model()
    before = {name: value.const_value for name, value in model.graph.initializers.items()}
    with SessionFiles() as files:
        view = files.external_view(model)
        kinds = {name: type(value.const_value) for name, value in view.graph.initializers.items()}
        with files.model_file(model) as path:
            from_file = run(path, level)
    assert kinds["w"] is ir.ExternalTensor
    assert kinds["shape"] is not ir.ExternalTensor and kinds["s"] is not ir.ExternalTensor
    assert from_file.tobytes() == run(numerics.model_bytes(model), level).tobytes()
    # the caller's model is untouched
    assert {name: value.const_value for name, value in model.graph.initializers.items()} == before


def test_shared_tensors_are_written_once_and_files_go():
    model = small_model()
    with SessionFiles() as files:
        folder = files.folder
        original = model.graph.initializers["w"].const_value.numpy().copy()
        files.externalize(model)
        reference = model.graph.initializers["w"].const_value
        assert files.owns(reference) and reference.numpy().tobytes() == original.tobytes()
        assert not files.owns(model.graph.initializers["shape"].const_value)  # shape-like: stays inline
        (base_data,) = folder.glob("base-*.data")
        base_size = base_data.stat().st_size
        assert base_size == 64 * 64 * 4
        candidate = model.clone()  # shares w; a new tensor replaces nothing else
        new = np.full((64, 64), 2.0, np.float32)
        candidate.graph.initializers["w"].const_value = ir.tensor(new, name="w")
        with files.model_file(candidate) as path:
            written = sorted(p.name for p in folder.iterdir())
            assert len(written) == 3  # base data, the model, its data holding only the new tensor
            data = [p for p in folder.glob("model-*.data")]
            assert [p.stat().st_size for p in data] == [new.nbytes]
            assert run(path, ort.GraphOptimizationLevel.ORT_DISABLE_ALL).tobytes() == run(
                numerics.model_bytes(candidate), ort.GraphOptimizationLevel.ORT_DISABLE_ALL).tobytes()
        assert sorted(p.name for p in folder.iterdir()) == [base_data.name]
        with files.model_file(model) as path:  # everything of the base is known: no data file
            assert not list(folder.glob("model-*.data"))
    assert not folder.exists()


def test_quantize_leaves_no_files(tmp_path, monkeypatch):
    from onnxq.quant.quantize import quantize

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    model = small_model()
    rng = np.random.default_rng(2)
    samples = [{"x": rng.standard_normal((1, 64)).astype(np.float32)} for _ in range(12)]
    quantized, report = quantize(model, samples)
    assert report.holdout_samples == 3 and report.qdq_nodes > 0
    assert not list(scratch.iterdir())
    heap.release()  # a no-op beyond gc where glibc is missing; must never fail


def test_quantize_never_hands_ort_the_weights_as_bytes(monkeypatch):
    """Every session of calibration, reference and fall-back rounds maps the weights (no model-sized bytes)."""
    from onnxq.quant.quantize import quantize
    from onnxq.quant.recipe import Recipe

    sources = []
    real = ort.InferenceSession

    def recording(source, *args, **kwargs):
        sources.append(source)
        return real(source, *args, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", recording)
    model = small_model()
    rng = np.random.default_rng(3)
    samples = [{"x": rng.standard_normal((1, 64)).astype(np.float32)} for _ in range(12)]
    _, report = quantize(model, samples, recipe=Recipe(max_error=1e-9))  # unmeetable: every round runs
    assert len(report.rounds) > 1 and len(sources) > 3
    weights = 64 * 64 * 4
    assert all(isinstance(s, str) or len(s) < weights // 4 for s in sources), [type(s) for s in sources]


@pytest.mark.filterwarnings("ignore::FutureWarning")  # gc.get_objects() meets torch's deprecated aliases
def test_cli_speed_check_sessions_come_after_the_models_go(tmp_path, monkeypatch):
    """The speed check's sessions are the command's last allocation: no model may be alive beside them."""
    import gc

    from onnxq import cli

    ir.save(small_model(), tmp_path / "m.onnx")
    rng = np.random.default_rng(4)
    np.savez(tmp_path / "calib.npz", x=rng.standard_normal((12, 1, 64)).astype(np.float32))
    live_models = []
    real = ort.InferenceSession

    def counting(source, *args, **kwargs):
        gc.collect()
        live_models.append(sum(isinstance(o, ir.Model) for o in gc.get_objects()))
        return real(source, *args, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", counting)
    gc.collect()
    before = sum(isinstance(o, ir.Model) for o in gc.get_objects())  # other tests' models, still referenced
    code = cli.main(["-q", "quantize", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "q.onnx"),
                     "--calib", str(tmp_path / "calib.npz")])
    assert code == 0 and (tmp_path / "q.onnx").exists()
    assert live_models[-3:] == [before] * 3, (before, live_models)  # timing sessions: FP32, quantized, FP32
    assert min(live_models[:-3]) > before  # the count sees the models where they are alive


def test_session_folders_of_dead_processes_are_removed_and_others_kept(tmp_path):
    import os
    import subprocess
    import sys

    from onnxq.session_files import PREFIX, remove_stale_folders

    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True).stdout)
    stale, live, foreign = (tmp_path / f"{PREFIX}{dead}-a", tmp_path / f"{PREFIX}{os.getpid()}-b",
                            tmp_path / f"{PREFIX}not-a-pid")
    for folder in (stale, live, foreign):
        folder.mkdir()
        (folder / "weights.data").write_bytes(b"\0" * 4096)
    assert remove_stale_folders(tmp_path) == [stale]
    assert not stale.exists() and live.exists() and foreign.exists()


def test_sigterm_during_quantize_removes_the_session_folder_and_writes_nothing(tmp_path, demo_path):
    """A CI timeout or `kill` must not leave a copy of the weights in TMPDIR, nor half an output."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from conftest import load_tool

    calib = tmp_path / "calib.npz"
    np.savez(calib, **load_tool("make_demo_model").calibration_data(samples=400, seed=0))
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    out = tmp_path / "q.onnx"
    command = [sys.executable, "-c", "import sys; from onnxq.cli import main; sys.exit(main())",
               "quantize", str(demo_path), "-o", str(out), "--calib", str(calib)]
    process = subprocess.Popen(command, env={**os.environ, "TMPDIR": str(scratch)},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not list(scratch.glob(f"onnxq-sessions-{process.pid}-*")) and process.poll() is None:
        assert time.monotonic() < deadline, "no session folder appeared"
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr
    assert "terminated (SIGTERM); nothing was written" in stderr
    assert not list(scratch.glob("onnxq-sessions-*")) and not out.exists()


def test_models_are_timed_one_session_at_a_time_in_abba_order():
    """Two timing sessions alive at once would cost both models' weights; A B B A cancels a steady drift."""
    import weakref

    from onnxq.backends.registry import resolve_target

    backend = resolve_target("ort").backend
    a, b = (numerics.model_bytes(small_model()), numerics.model_bytes(small_model()))
    made, alive, most = [], set(), [0]
    real = type(backend).timing_session

    def tracked(self, model, *, variant="", optimized=False):
        session = real(self, model, variant=variant, optimized=optimized)
        made.append("A" if model is a else "B")
        key = id(session)
        alive.add(key)
        most[0] = max(most[0], len(alive))
        weakref.finalize(session, alive.discard, key)
        return session

    feeds = {"x": np.ones((1, 64), np.float32)}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(type(backend), "timing_session", tracked)
        latencies = backend.time_models([a, b], feeds, rounds=4)
    assert made == ["A", "B", "A"] and most[0] == 1
    assert len(latencies) == 2 and all(t > 0 for t in latencies)


# A 64 MiB intermediate tensor in the session's memory arena, and a one-number output.
BIG_INTERMEDIATE = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1, 1024] x) => (float[1, 1] y) <int64[2] shape = {16384, 1024}> {
  big = Expand(x, shape)
  z = Sigmoid(big)
  y = ReduceSum(z)
}
"""


def _resident_anon_mib() -> float:
    import gc

    gc.collect()
    heap.release()
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("RssAnon:"))
    return int(line.split()[1]) / 1024


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/status")
def test_kept_outputs_do_not_keep_the_dead_session_memory():
    """ORT's outputs are views that hold the session's whole arena alive: the FP32 reference outputs that
    quantize keeps through the search held 8 MiB for EfficientNet-Lite0. ``Backend.run`` hands copies."""
    from onnxq.backends.registry import resolve_target

    backend = resolve_target("ort").backend
    data = onnx.parser.parse_model(BIG_INTERMEDIATE).SerializeToString()
    feeds = {"x": np.full((1, 1024), 0.5, np.float32)}
    before = _resident_anon_mib()
    session = backend.reference_session(data)
    kept = [backend.run(session, feeds) for _ in range(2)]
    del session
    grown = _resident_anon_mib() - before
    assert all(out["y"].base is None for out in kept)
    np.testing.assert_allclose(kept[0]["y"], [[16384 * 1024 / (1 + np.exp(-0.5))]], rtol=1e-2)  # float32 sum
    assert grown < 24, f"{grown:.0f} MiB still resident after the session went (its arena holds 64)"
    assert numerics.run_model(data, feeds)["y"].base is None


def test_timing_returns_each_session_memory_before_the_next_session():
    """Freed session memory stays in the C heap until trimmed; timing ratcheted up by one session's worth
    per stretch (EfficientNet-Lite0: +26 MiB, the speed check's peak)."""
    from onnxq.backends.registry import resolve_target

    backend = resolve_target("ort").backend
    a, b = (numerics.model_bytes(small_model()), numerics.model_bytes(small_model()))
    events, alive = [], set()
    real_session, real_release = type(backend).timing_session, heap.release

    def tracked(self, model, *, variant="", optimized=False):
        import weakref

        session = real_session(self, model, variant=variant, optimized=optimized)
        events.append("session")
        alive.add(id(session))
        weakref.finalize(session, alive.discard, id(session))
        return session

    def release(**kwargs):
        events.append(f"release with {len(alive)} alive")
        real_release(**kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(type(backend), "timing_session", tracked)
        patch.setattr(heap, "release", release)
        backend.time_models([a, b], {"x": np.ones((1, 64), np.float32)}, rounds=4)
    made = [i for i, event in enumerate(events) if event == "session"]
    assert len(made) == 3
    for index in made[1:]:
        assert events[index - 1] == "release with 0 alive", events
