"""The zoo's PaddleOCR models (``ppocr_det``, ``ppocr_rec``): their data, task metrics and builds.

The metric and data tests are fast and need no download. The build tests fetch the pinned
rapidocr-onnxruntime wheel (15 MB; skipped when it cannot be fetched) and run under ``-m slow`` like the
zoo's other wheel-borne models: the detector builds in about 13 s, the recognizer in about 6 s.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # ``models`` is a top-level folder of the repo, not an installed package
    sys.path.insert(0, str(ROOT))

from models import artifacts, ppocr_det, ppocr_rec, registry  # noqa: E402


def _build_or_skip(name: str, out: Path) -> dict:
    pytest.importorskip("PIL")
    try:
        return registry.build(name, out)
    except registry.ZooError as exc:  # the wheel cannot be fetched here, a missing optional package
        pytest.skip(str(exc))


def _run(path: Path, inputs: np.ndarray, batch: int) -> list[dict[str, np.ndarray]]:
    """Per-run output dicts, as the benchmark collects them."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    return [
        dict(zip(names, session.run(None, {"x": inputs[i : i + batch]}), strict=True))
        for i in range(0, len(inputs), batch)
    ]


def _noisy(outputs: list[dict[str, np.ndarray]], sigma: float) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [
        {name: value + rng.normal(0.0, sigma, value.shape).astype(np.float32) for name, value in run.items()}
        for run in outputs
    ]


# --- data and metrics, no download --------------------------------------------------------------------


def test_rendered_pages_record_every_text_line():
    pytest.importorskip("PIL")
    from models.datasets.documents import render_page

    page = render_page(
        ["A sentence of plain words for the page.", "Another sentence follows it here."] * 10,
        np.full((64, 96, 3), 128, np.uint8),
        np.random.default_rng(0),
    )
    lines = np.array(page.lines)
    height, width = page.image.shape[:2]
    assert len(lines) > 20
    assert (lines[:, 2] > lines[:, 0]).all() and (lines[:, 3] > lines[:, 1]).all()
    assert lines[:, :2].min() >= 0 and lines[:, 2].max() <= width and lines[:, 3].max() <= height


def test_detector_input_is_a_multiple_of_32_and_normalized():
    image = np.zeros((1600, 1216, 3), np.uint8)
    image[..., 0] = 255  # pure red: rapidocr feeds BGR, so red is the last channel
    x, sx, sy = ppocr_det.detector_input(image)
    assert x.shape == (3, 832, 640) and x.dtype == np.float32
    assert np.allclose(x[2], 1.0) and np.allclose(x[:2], -1.0)
    assert sx == pytest.approx(640 / 1216) and sy == pytest.approx(832 / 1600)


def test_detector_score_is_iou_of_binarized_maps():
    reference = np.zeros((2, 1, 1, 32, 32), np.float32)
    reference[:, :, :, 8:16, 8:24] = 0.9
    assert ppocr_det.score(reference, reference) == {"prob_map_iou": 1.0}
    shifted = np.roll(reference, 4, axis=-1)  # 12 of 20 columns overlap: IoU 96 / 160
    assert ppocr_det.score(reference, shifted)["prob_map_iou"] == pytest.approx(0.6)
    below = reference * 0.3  # 0.27 <= 0.3: nothing left after binarization
    assert ppocr_det.score(reference, below)["prob_map_iou"] == 0.0
    empty = np.zeros_like(reference)
    assert ppocr_det.score(empty, empty)["prob_map_iou"] == 1.0
    # per-run dicts (the benchmark's form) and a stacked array give the same answer
    as_runs = [{"sigmoid_0.tmp_0": page} for page in shifted]
    assert ppocr_det.score(list(reference), as_runs) == ppocr_det.score(reference, shifted)


def test_detector_coverage_counts_lines_under_the_map():
    prob_map = np.zeros((1, 1, 64, 64), np.float32)
    prob_map[0, 0, 10:14, 4:40] = 0.9
    labels = np.full((1, 3, 4), -1.0, np.float32)
    labels[0, 0] = (4, 8, 40, 16)  # under the map
    labels[0, 1] = (4, 40, 40, 48)  # nothing there
    found = ppocr_det.coverage(prob_map, labels)
    assert found["lines_found"] == 0.5 and found["map_precision"] == 1.0


def _one_hot(indices: list[int], classes: int = 6) -> np.ndarray:
    return np.eye(classes, dtype=np.float32)[indices]


def test_greedy_ctc_collapses_repeats_and_drops_blanks():
    assert ppocr_rec.greedy_indices(_one_hot([0, 1, 1, 0, 1, 2, 2, 0])).tolist() == [1, 1, 2]
    table = ["blank", "a", "b", "c", "d", " "]
    lines = np.stack([_one_hot([1, 1, 5, 2, 0]), _one_hot([0, 0, 3, 3, 3])])
    assert ppocr_rec.decode(lines, table) == ["a b", "c"]


def test_recognizer_score_compares_decodings_not_probabilities():
    reference = np.stack([_one_hot([1, 0, 2, 2]), _one_hot([3, 3, 0, 4])])
    softened = reference * 0.6 + 0.05  # other probabilities, same argmax everywhere
    assert ppocr_rec.score(reference, softened) == {"lines_identical": 1.0}
    changed = reference.copy()
    changed[1] = _one_hot([3, 0, 3, 4])  # "c c d" instead of "c d"
    assert ppocr_rec.score([{"out": reference}], [{"out": changed}]) == {"lines_identical": 0.5}


def test_edit_distance_and_character_accuracy():
    assert ppocr_rec.edit_distance("kitten", "sitting") == 3
    assert ppocr_rec.edit_distance("", "abc") == 3 and ppocr_rec.edit_distance("abc", "abc") == 0
    assert ppocr_rec.char_accuracy(["abcd", "xy"], np.array(["abcd", "xyz"])) == pytest.approx(1 - 1 / 7)


def test_recognizer_lines_fit_the_bucket():
    pytest.importorskip("PIL")
    rng = np.random.default_rng(0)
    for words in (["short"], "several words that will not all fit in the bucket".split()):
        line, text = ppocr_rec.render_line(words, rng)
        x = ppocr_rec.recognizer_input(line)
        assert x.shape == (3, 48, 320) and x.dtype == np.float32
        assert text == " ".join(words[: len(text.split())])
        assert -1.0 <= x.min() and x.max() <= 1.0


# --- builds (fetch the wheel) ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ocr")
    for name in ("ppocr_det", "ppocr_rec"):
        _build_or_skip(name, out)
    return out


def _check_files(out: Path, name: str) -> tuple[dict, dict[str, np.ndarray], np.ndarray]:
    record = registry.load_record(out, name)
    for kind in ("onnx", "calib", "eval"):
        assert (out / record["files"][kind]["name"]).is_file()
    assert (out / f"{name}.json").is_file()
    onnx.checker.check_model(str(out / f"{name}.onnx"), full_check=True)
    assert record["opset"] == {"ai.onnx": 12} and record["ir_version"] == 8
    assert hashlib.sha256((out / f"{name}.onnx").read_bytes()).hexdigest() == record["source"]["sha256"]
    calib = artifacts.read_samples(out / f"{name}.calib.npz")
    inputs, labels = artifacts.split_eval(artifacts.read_samples(out / f"{name}.eval.npz"))
    assert set(calib) == set(inputs) == {"x"} == set(record["inputs"])
    assert artifacts.overlap(calib, inputs, {"x": 0}) == 0
    return record, calib | {f"eval:{k}": v for k, v in inputs.items()}, labels


@pytest.mark.slow
def test_detector_build(built: Path):
    record, arrays, labels = _check_files(built, "ppocr_det")
    assert list(record["outputs"]) == ["sigmoid_0.tmp_0"]
    assert arrays["x"].shape == (32, 3, 832, 640) and arrays["eval:x"].shape == (16, 3, 832, 640)
    assert labels.shape == (16, ppocr_det.MAX_LINES, 4) and labels.dtype == np.float32
    reference = _run(built / "ppocr_det.onnx", arrays["eval:x"], batch=1)
    assert reference[0]["sigmoid_0.tmp_0"].shape == (1, 1, 832, 640)
    assert ppocr_det.score(reference, reference) == {"prob_map_iou": 1.0}
    assert ppocr_det.score(reference, _noisy(reference, 0.2))["prob_map_iou"] < 0.95
    found = ppocr_det.coverage(reference, labels)
    assert found["lines_found"] >= 0.9 and found["map_precision"] >= 0.9
    metrics = record["metrics"]
    assert metrics["fp32_text_lines_found"] == pytest.approx(found["lines_found"], abs=1e-3)
    assert metrics["eval_text_lines"] == int((labels[..., 0] >= 0).sum()) > 16 * 20


@pytest.mark.slow
def test_recognizer_build(built: Path):
    record, arrays, labels = _check_files(built, "ppocr_rec")
    assert list(record["outputs"]) == ["softmax_11.tmp_0"]
    assert arrays["x"].shape == (64, 3, 48, 320) and arrays["eval:x"].shape == (64, 3, 48, 320)
    assert labels.shape == (64,) and labels.dtype.kind == "U"
    reference = _run(built / "ppocr_rec.onnx", arrays["eval:x"], batch=16)
    assert reference[0]["softmax_11.tmp_0"].shape == (16, 40, 6625)
    assert ppocr_rec.score(reference, reference) == {"lines_identical": 1.0}
    assert ppocr_rec.score(reference, _noisy(reference, 0.5))["lines_identical"] < 0.5
    table = ppocr_rec.characters(built / "ppocr_rec.onnx")
    assert len(table) == 6625 and table[0] == "blank" and table[-1] == " "
    accuracy = ppocr_rec.char_accuracy(ppocr_rec.decode(reference, table), labels)
    assert accuracy > 0.9
    assert record["metrics"]["fp32_char_accuracy"] == pytest.approx(accuracy, abs=1e-3)


@pytest.mark.slow
def test_recognizer_build_is_bit_reproducible(built: Path, tmp_path: Path):
    _build_or_skip("ppocr_rec", tmp_path)
    for suffix in (".onnx", ".calib.npz", ".eval.npz"):
        first, second = (
            hashlib.sha256((d / f"ppocr_rec{suffix}").read_bytes()).hexdigest() for d in (built, tmp_path)
        )
        assert first == second, suffix
