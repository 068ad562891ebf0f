"""Calibration data sources, holdout and validation (every error names the input and the sample)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from onnxq.calibration import CalibrationData
from onnxq.errors import CalibrationDataError

MODEL_TEXT = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 3, H, W] x, float[1, 4] s) => (float[N, 3, H, W] y, float[1, 4] z) {
  y = Relu(x)
  z = Neg(s)
}
"""


@pytest.fixture(scope="module")
def model() -> ir.Model:
    return ir.serde.deserialize_model(onnx.parser.parse_model(MODEL_TEXT))


def make_sample(i: int, h: int = 8, w: int = 8) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(i)
    return {"x": rng.standard_normal((1, 3, h, w)).astype(np.float32),
            "s": np.full((1, 4), float(i), np.float32)}


def ids(samples) -> list[int]:
    """Which samples these are (make_sample(i) has s == i)."""
    return [int(sample["s"][0, 0]) for sample in samples]


def test_npz_with_rank_equal_to_the_inputs(tmp_path: Path, model):
    x = np.random.default_rng(0).standard_normal((10, 3, 5, 7)).astype(np.float32)
    s = np.arange(10, dtype=np.float32)[:, None].repeat(4, axis=1)
    np.savez(tmp_path / "c.npz", x=x, s=s)
    data = CalibrationData.from_source(tmp_path / "c.npz", model, holdout=3)
    samples = list(data)
    # held out: 3 samples spread over the 10 (every k-th, the last included), not the last 3
    assert data.num_samples == 7 and ids(samples) == [0, 1, 3, 4, 6, 7, 8]
    assert samples[2]["x"].shape == (1, 3, 5, 7) and np.array_equal(samples[2]["x"], x[3:4])
    assert ids(data.holdout_samples) == [2, 5, 9]
    assert ids(data) == [0, 1, 3, 4, 6, 7, 8]  # re-iterable: read again from disk


def test_npz_with_an_extra_leading_axis_and_limit(tmp_path: Path, model):
    x = np.random.default_rng(0).standard_normal((6, 2, 3, 4, 4)).astype(np.float32)  # 6 samples of batch 2
    s = np.arange(6, dtype=np.float32)[:, None, None].repeat(4, axis=2)  # (6, 1, 4)
    np.savez_compressed(tmp_path / "c.npz", x=x, s=s)
    data = CalibrationData.from_source(str(tmp_path / "c.npz"), model, limit=3, holdout=1)
    samples = list(data)
    assert ids(samples) == [0, 1, 2] and ids(data.holdout_samples) == [3]
    assert samples[1]["x"].shape == (2, 3, 4, 4) and np.array_equal(samples[1]["x"], x[1])


def test_folder_of_npz_sorted_with_variable_shapes(tmp_path: Path, model):
    for i in reversed(range(5)):
        np.savez(tmp_path / f"sample_{i:03d}.npz", **make_sample(i, h=4 + i, w=9 - i))
    (tmp_path / "README.txt").write_text("not a sample")
    data = CalibrationData.from_source(tmp_path, model, holdout=2)
    samples = list(data)
    assert data.num_samples == 3 and ids(samples) == [0, 2, 3]
    assert [s["x"].shape[2:] for s in samples] == [(4, 9), (6, 7), (7, 6)]
    assert ids(data.holdout_samples) == [1, 4]


def test_list_of_dicts(model):
    source = [make_sample(i) for i in range(6)]
    data = CalibrationData.from_source(source, model, holdout=2)
    assert data.num_samples == 4 and ids(data) == [0, 1, 3, 4] and ids(data) == [0, 1, 3, 4]
    assert ids(data.holdout_samples) == [2, 5]
    float64 = [{"x": make_sample(0)["x"].astype(np.float64), "s": make_sample(0)["s"]}]
    assert next(iter(CalibrationData.from_source(float64, model)))["x"].dtype == np.float32


def test_generator_is_one_shot_with_holdout(model):
    data = CalibrationData.from_source((make_sample(i) for i in range(10)), model, limit=5, holdout=2)
    assert data.num_samples is None
    with pytest.raises(CalibrationDataError, match="one-shot"):
        data.holdout_samples  # noqa: B018 - not known before the stream was read
    assert ids(data) == [0, 1, 2, 3, 4]
    assert data.num_samples == 5 and ids(data.holdout_samples) == [5, 6]
    with pytest.raises(CalibrationDataError, match="already read once"):
        list(data)


def test_stream_shorter_than_limit_keeps_its_last_samples(model):
    data = CalibrationData.from_source(iter([make_sample(i) for i in range(4)]), model, limit=100, holdout=3)
    assert ids(data) == [0] and ids(data.holdout_samples) == [1, 2, 3]


def _reader_class():
    try:
        from onnxruntime.quantization import CalibrationDataReader
    except ImportError:  # pragma: no cover - ORT is a dependency; keep the duck-typed path working anyway
        CalibrationDataReader = object  # noqa: N806

    class Reader(CalibrationDataReader):
        def __init__(self, n: int, rewindable: bool):
            self.n, self.position, self.rewindable = n, 0, rewindable

        def get_next(self):
            if self.position >= self.n:
                return None
            self.position += 1
            return make_sample(self.position - 1, h=3 + self.position)

        def rewind(self):
            if not self.rewindable:
                raise NotImplementedError
            self.position = 0

    return Reader


def test_ort_calibration_data_reader(model):
    reader = _reader_class()(7, rewindable=True)
    data = CalibrationData.from_source(reader, model, holdout=2)
    assert data.holdout_samples and ids(data.holdout_samples) == [5, 6]  # rewound, read once to find them
    assert ids(data) == [0, 1, 2, 3, 4] and ids(data) == [0, 1, 2, 3, 4]
    one_shot = CalibrationData.from_source(_reader_class()(3, rewindable=False), model)
    assert ids(one_shot) == [0, 1, 2]
    with pytest.raises(CalibrationDataError, match="rewind"):
        list(one_shot)


def _bad(**changes) -> list[dict]:
    """Three good samples, the third changed."""
    samples = [make_sample(i) for i in range(3)]
    for name, value in changes.items():
        if value is None:
            del samples[2][name]
        else:
            samples[2][name] = value
    return samples


@pytest.mark.parametrize("samples, pattern", [
    (_bad(q=np.zeros(3, np.float32)), r"sample 2: unknown input 'q'; the model's inputs: x, s"),
    (_bad(s=None), r"sample 2: missing input 's'; the model's inputs: x, s"),
    (_bad(x=np.zeros((3, 8, 8), np.float32)), r"sample 2: input 'x' has rank 3 .*expects rank 4"),
    (_bad(x=np.zeros((1, 3, 8, 8), np.int64)),
     r"sample 2: input 'x' holds int64 data, the model expects float32"),
    (_bad(x=np.zeros((1, 4, 8, 8), np.float32)),
     r"sample 2: input 'x' has shape \[1, 4, 8, 8\].*axis 1 must be 3"),
    (_bad(s=np.array([[0, np.nan, 0, 0]], np.float32)), r"sample 2: input 's' contains 1 NaN/Inf"),
    (_bad(x=np.full((1, 3, 2, 2), np.inf, np.float32)), r"sample 2: input 'x' contains 12 NaN/Inf"),
    ([make_sample(0), make_sample(1), [1, 2]], r"sample 2 is a list, expected a dict"),
])
def test_validation_errors_name_input_and_sample(model, samples, pattern):
    with pytest.raises(CalibrationDataError, match=pattern):
        list(CalibrationData.from_source(samples, model))
    with pytest.raises(CalibrationDataError, match=pattern):  # streams validate the same way
        list(CalibrationData.from_source(iter(samples), model))


def test_empty_calibration_sets(model, tmp_path: Path):
    with pytest.raises(CalibrationDataError, match="empty"):
        CalibrationData.from_source([], model)
    with pytest.raises(CalibrationDataError, match="empty.*holdout=2"):
        CalibrationData.from_source([make_sample(0), make_sample(1)], model, holdout=2)
    with pytest.raises(CalibrationDataError, match="empty"):
        list(CalibrationData.from_source(iter([]), model))
    with pytest.raises(CalibrationDataError, match="empty"):
        CalibrationData.from_source(tmp_path, model)  # a folder without .npz files


def test_bad_files(model, tmp_path: Path):
    text = tmp_path / "notes.npz"
    text.write_text("hello")
    with pytest.raises(CalibrationDataError, match="not an .npz archive"):
        CalibrationData.from_source(text, model)
    np.save(tmp_path / "array.npy", np.zeros(3))
    with pytest.raises(CalibrationDataError, match="not an .npz archive"):
        CalibrationData.from_source(tmp_path / "array.npy", model)
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, x=np.array([{"a": 1}], dtype=object), s=np.zeros((1, 4), np.float32))
    with pytest.raises(CalibrationDataError, match="pickled"):
        CalibrationData.from_source(pickled, model)
    folder = tmp_path / "folder"
    folder.mkdir()
    np.savez(folder / "0.npz", **make_sample(0))
    (folder / "1.npz").write_bytes(pickle.dumps(make_sample(1)))
    with pytest.raises(CalibrationDataError, match="1.npz' is not an .npz archive"):
        list(CalibrationData.from_source(folder, model))
    with pytest.raises(CalibrationDataError, match="does not exist"):
        CalibrationData.from_source(tmp_path / "missing.npz", model)


def test_npz_stack_errors(model, tmp_path: Path):
    np.savez(tmp_path / "counts.npz", x=np.zeros((4, 3, 2, 2), np.float32), s=np.zeros((5, 4), np.float32))
    with pytest.raises(CalibrationDataError, match="different numbers of samples.*'x' has 4, 's' has 5"):
        CalibrationData.from_source(tmp_path / "counts.npz", model)
    np.savez(tmp_path / "rank.npz", x=np.zeros((4, 3), np.float32), s=np.zeros((4, 4), np.float32))
    with pytest.raises(CalibrationDataError, match="input 'x' has rank 2"):
        CalibrationData.from_source(tmp_path / "rank.npz", model)
    np.savez(tmp_path / "names.npz", x=np.zeros((4, 3, 2, 2), np.float32))
    with pytest.raises(CalibrationDataError, match="missing input 's'"):
        CalibrationData.from_source(tmp_path / "names.npz", model)
    nan = np.full((4, 3, 2, 2), np.nan, np.float32)
    np.savez(tmp_path / "nan.npz", x=nan, s=np.zeros((4, 4), np.float32))
    with pytest.raises(CalibrationDataError, match=r"nan.npz', sample 0: input 'x' contains 12 NaN/Inf"):
        list(CalibrationData.from_source(tmp_path / "nan.npz", model))


def test_npz_is_read_one_sample_at_a_time_compressed_or_not(tmp_path, model):
    """np.savez archives are read per sample from the file, savez_compressed ones through a decompressing
    stream (memory flat in the sample count either way); both give the samples, in any order asked."""
    from onnxq.calibration import npz as calibration_data

    rng = np.random.default_rng(0)
    x = rng.standard_normal((10, 1, 3, 4, 4)).astype(np.float32)
    s = rng.standard_normal((10, 1, 4)).astype(np.float32)
    plain, packed = tmp_path / "plain.npz", tmp_path / "packed.npz"
    np.savez(plain, x=x, s=s)
    np.savez_compressed(packed, x=x, s=s)
    members = calibration_data.lazy_members(plain)
    assert isinstance(members["x"], calibration_data.NpyMember) and len(members["x"]) == 10
    streamed = calibration_data.lazy_members(packed)["x"]
    assert isinstance(streamed, calibration_data.ZipStreamMember) and len(streamed) == 10
    for member in (members["x"], streamed):
        np.testing.assert_array_equal(member[3], x[3])
        np.testing.assert_array_equal(member[2:5], x[2:5])  # backwards: the stream starts again
        np.testing.assert_array_equal(member[9], x[9])      # forwards past samples
    streamed.close()
    from_plain = list(CalibrationData.from_source(plain, model, holdout=2))
    from_packed = list(CalibrationData.from_source(packed, model, holdout=2))
    assert len(from_packed) == 8 and all(
        np.array_equal(a[n], b[n]) for a, b in zip(from_plain, from_packed, strict=True) for n in "xs")


def test_a_truncated_compressed_npz_is_a_one_line_error(tmp_path):
    from onnxq.calibration import npz as calibration_data

    np.savez_compressed(tmp_path / "c.npz", x=np.random.default_rng(1).standard_normal((6, 1, 3, 4, 4)))
    member = calibration_data.lazy_members(tmp_path / "c.npz")["x"]
    member.shape = (7, *member.shape[1:])  # as if the archive said more than it holds
    with pytest.raises(CalibrationDataError, match="corrupted"):
        member[6]
