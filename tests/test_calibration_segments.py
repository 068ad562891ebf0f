"""Calibration runs the model in segments: the same tensors, bit for bit, with one segment's alive at a time."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from onnxq.calibration import collect, segments

# A skip connection across segments (r1 read by the Add), a Concat, and a head (Softmax) no exposed tensor
# depends on.
TEXT = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1, 4, 16, 16] x) => (float[1, 4] y) {
  c1 = Conv <pads = [1, 1, 1, 1]> (x, w1)
  r1 = Relu (c1)
  c2 = Conv <pads = [1, 1, 1, 1]> (r1, w2)
  a = Add (c2, r1)
  r2 = Relu (a)
  c3 = Conv <pads = [1, 1, 1, 1]> (r2, w3)
  k = Concat <axis = 1> (r2, c3)
  c4 = Conv (k, w4)
  p = GlobalAveragePool (c4)
  f = Flatten (p)
  y = Softmax (f)
}
"""
EXPOSED = ["c1", "r1", "c2", "a", "r2", "c3", "k", "c4", "p"]


def _proto(infer: bool = True) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    proto = onnx.parser.parse_model(TEXT)
    shapes = {"w1": (4, 4, 3, 3), "w2": (4, 4, 3, 3), "w3": (4, 4, 3, 3), "w4": (4, 8, 1, 1)}
    proto.graph.initializer.extend(
        numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n) for n, s in shapes.items())
    return onnx.shape_inference.infer_shapes(proto) if infer else proto


def _session(data: bytes):
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def _one_session(proto: onnx.ModelProto, names, feeds) -> dict[str, np.ndarray]:
    whole = onnx.ModelProto()
    whole.CopyFrom(proto)
    whole.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names)
    return dict(zip(names, _session(whole.SerializeToString()).run(names, feeds), strict=True))


def _segmented(parts, feeds) -> dict[str, np.ndarray]:
    seen = {}

    def observe(outputs, names):
        seen.update(zip(names, outputs, strict=True))

    segments.SegmentedRun(parts, _session).run(feeds, observe)
    return seen


def test_segments_give_the_tensors_of_one_session_bit_for_bit():
    proto = _proto()
    parts = segments.split(proto, EXPOSED, per_segment=2)
    assert len(parts) == 5
    assert [n for part in parts for n in part.exposed] == EXPOSED
    # r1 is read two segments on (the skip connection); r2 by the Concat of the next one
    assert {name for part in parts for name in part.handed_on} >= {"r1", "r2"}
    assert sum(len(part.model.graph.node) for part in parts) == 9  # Flatten and Softmax are not run
    feeds = {"x": np.random.default_rng(1).standard_normal((1, 4, 16, 16)).astype(np.float32)}
    expected = _one_session(proto, EXPOSED, feeds)
    actual = _segmented(parts, feeds)
    assert list(actual) == EXPOSED
    for name in EXPOSED:
        assert actual[name].tobytes() == expected[name].tobytes(), name


@pytest.mark.parametrize("case", ["untyped boundary", "control flow"])
def test_a_graph_that_cannot_be_cut_runs_whole(case):
    proto = _proto(infer=case != "untyped boundary")
    if case == "control flow":
        branch = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["p"], ["o"])], "b", [],
                                        [onnx.helper.make_tensor_value_info("o", onnx.TensorProto.FLOAT, None)])
        cond = onnx.helper.make_node("Constant", [], ["cond"], value=numpy_helper.from_array(np.array(True)))
        proto.graph.node.extend([cond, onnx.helper.make_node("If", ["cond"], ["z"], then_branch=branch,
                                                             else_branch=branch)])
    parts = segments.split(proto, EXPOSED, per_segment=2)
    assert len(parts) == 1 and len(parts[0].model.graph.node) == len(proto.graph.node)
    feeds = {"x": np.random.default_rng(2).standard_normal((1, 4, 16, 16)).astype(np.float32)}
    expected = _one_session(proto, EXPOSED, feeds)
    assert all(a.tobytes() == expected[n].tobytes() for n, a in _segmented(parts, feeds).items())


def test_statistics_do_not_depend_on_the_segmentation(monkeypatch):
    model = ir.serde.deserialize_model(_proto())
    rng = np.random.default_rng(3)
    data = [{"x": rng.standard_normal((1, 4, 16, 16)).astype(np.float32)} for _ in range(5)]
    kwargs = dict(per_channel_axes={"c4": 1}, channel_means={"r1": 1, "k": 1})
    monkeypatch.setattr(segments, "SEGMENT_TENSORS", 1000)
    whole = collect.collect_statistics(model, EXPOSED, data, **kwargs)
    monkeypatch.setattr(segments, "SEGMENT_TENSORS", 1)
    cut = collect.collect_statistics(model, EXPOSED, data, **kwargs)
    for name in EXPOSED:
        a, b = whole[name], cut[name]
        assert np.array_equal(a.min, b.min) and np.array_equal(a.max, b.max) and a.count == b.count, name
        if a.channel_mean is not None:
            assert np.array_equal(a.channel_mean, b.channel_mean), name


CHAIN = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1, 64, 128, 128] x) => (float[1, 64, 128, 128] y) {
  a1 = Relu (x)
  a2 = Neg (a1)
  a3 = Relu (a2)
  a4 = Neg (a3)
  a5 = Relu (a4)
  a6 = Neg (a5)
  a7 = Relu (a6)
  y = Neg (a7)
}
"""


def test_only_one_segments_outputs_are_alive_at_a_time():
    """Eight activations: one session hands all eight back at once; with segments of two, a segment's two
    (the value the next one reads is dropped once it has run)."""
    import weakref

    proto = onnx.shape_inference.infer_shapes(onnx.parser.parse_model(CHAIN))
    names = [f"a{i}" for i in range(1, 8)] + ["y"]
    feeds = {"x": np.ones((1, 64, 128, 128), np.float32)}
    most_alive = {}
    for per_segment in (len(names), 2):
        refs: list[weakref.ref] = []

        def observe(outputs, _):
            refs.extend(weakref.ref(array) for array in outputs)
            most_alive[per_segment] = max(most_alive.get(per_segment, 0), sum(r() is not None for r in refs))
            outputs.clear()

        segments.SegmentedRun(segments.split(proto, names, per_segment=per_segment), _session).run(feeds, observe)
        assert all(r() is None for r in refs)
    assert most_alive == {len(names): 8, 2: 2}


def test_a_segment_that_does_not_load_falls_back_to_one_session(monkeypatch, caplog):
    """ONNX Runtime is the arbiter of what loads: a cut it refuses costs memory, never the calibration."""
    model = ir.serde.deserialize_model(_proto())
    data = [{"x": np.random.default_rng(4).standard_normal((1, 4, 16, 16)).astype(np.float32)}]
    expected = collect.collect_statistics(model, EXPOSED, data)
    split = segments.split

    def refused_cut(proto, names, per_segment=segments.SEGMENT_TENSORS):
        parts = split(proto, names, per_segment)
        if per_segment is not None:
            parts[1].model.graph.node.add(op_type="NoSuchOp", input=["x"], output=["nothing"])
        return parts

    monkeypatch.setattr(segments, "split", refused_cut)
    with caplog.at_level("INFO", logger="onnxq.calibration.collect"):
        actual = collect.collect_statistics(model, EXPOSED, data)
    assert "one session over the whole model" in caplog.text
    assert all(np.array_equal(actual[n].min, expected[n].min) and np.array_equal(actual[n].max, expected[n].max)
               for n in EXPOSED)
