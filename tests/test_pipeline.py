"""Pass registry, text pipelines, per-pass records and --verify naming the pass that broke numerics."""

from __future__ import annotations

from dataclasses import dataclass

import onnx
import onnx_ir as ir
import pytest

import onnxq
from onnxq import pipeline
from onnxq.errors import OptionError, UnknownNameError, VerificationError
from onnxq.pass_api import OnnxqPass, available_passes, get_pass

ISSUE_PASSES = {
    "infer-shapes", "fix-input-shapes", "fold-constants", "eliminate-identity", "dce", "fold-bn",
    "fuse-matmul-add", "fuse-layernorm", "fuse-gelu", "fuse-activations", "topo-sort",
}


def test_registry_has_every_pass_with_name_and_summary():
    passes = available_passes()
    assert ISSUE_PASSES <= set(passes)
    for name, cls in passes.items():
        assert cls.name == name and cls.summary and "\n" not in cls.summary
        assert issubclass(cls, ir.passes.InPlacePass)


def test_named_pipelines_expand_to_registered_passes():
    for name, items in pipeline.PIPELINES.items():
        assert [p.name for p in pipeline.parse_pipeline(name)] == list(items)
    assert "fuse-matmul-add" not in pipeline.PIPELINES["ort"]


def test_text_pipeline_with_typed_options():
    passes = pipeline.parse_pipeline("fold-constants{input_size_limit=64, output-size-limit=128}, dce")
    assert [p.name for p in passes] == ["fold-constants", "dce"]
    assert passes[0].options.input_size_limit == 64 and passes[0].options.output_size_limit == 128


@pytest.mark.parametrize(
    "text, error, message",
    [
        ("fold-bn,nosuch", UnknownNameError, "unknown pass or pipeline 'nosuch'; known: "),
        ("fold-constants{input_size_limit=big}", OptionError, "expects int"),
        ("fold-constants{nosuch=1}", UnknownNameError, "option of pass 'fold-constants'"),
        ("fold-constants{input_size_limit}", OptionError, "key=value"),
        ("", OptionError, "empty"),
        ("fold-bn{", OptionError, "cannot parse"),
    ],
)
def test_bad_pipelines_are_named(text, error, message):
    with pytest.raises(error, match=message.replace("(", r"\(")):
        pipeline.parse_pipeline(text)


def test_unknown_pass_error_lists_choices():
    with pytest.raises(UnknownNameError) as info:
        get_pass("fold-bnn")
    assert "fold-bn" in str(info.value) and "dce" in str(info.value)


MODEL = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[N, 4] x) => (float[N, 4] y) {
  c = Constant <value = float[4] {1, 2, 3, 4}> ()
  i = Identity(x)
  a = Add(i, c)
  y = Relu(a)
}
"""


@dataclass(frozen=True)
class _ScaleOptions:
    factor: float = 1.0


class _ScaleConstantsPass(OnnxqPass):
    """Test double of a buggy pass: multiplies every Constant's value (changes numerics)."""

    name = "scale-constants"
    summary = "test pass"
    Options = _ScaleOptions

    def apply(self, model: ir.Model) -> int:
        count = 0
        for node in model.graph:
            if node.op_type == "Constant":
                value = node.attributes["value"].value.numpy() * self.options.factor
                node.attributes["value"] = ir.AttrTensor("value", ir.tensor(value))
                count += 1
        return count


def _model() -> ir.Model:
    return ir.serde.deserialize_model(onnx.parser.parse_model(MODEL))


def test_verify_names_first_pass_that_changed_numerics():
    passes = pipeline.parse_pipeline("eliminate-identity") + [_ScaleConstantsPass(factor=1.001)]
    passes += pipeline.parse_pipeline("fold-constants")
    with pytest.raises(VerificationError, match="pass 'scale-constants' changed output 'y'"):
        onnxq.optimize(_model(), passes, verify=True, input_shapes={"x": (3, 4)})


def test_verify_tolerance_and_records():
    passes = [_ScaleConstantsPass(factor=1 + 1e-6)] + pipeline.parse_pipeline("cleanup")
    model, report = onnxq.optimize(_model(), passes, verify=True, rtol=1e-4)
    names = [r.name for r in report.records]
    assert names == ["scale-constants", "fold-constants", "eliminate-identity", "dce", "topo-sort"]
    scale = report.records[0]
    assert scale.rewrites == 1 and scale.modified and 0 < scale.max_error < 1e-4
    assert report.records[2].rewrites == 1  # the Identity
    assert all(r.seconds >= 0 for r in report.records)
    assert [n.op_type for n in model.graph] == ["Add", "Relu"]


RETAINED = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[1, 3, 8, 8] x) => (float[1, 5] y) {
  c = Conv (x, w)
  b = BatchNormalization (c, gamma, beta, mean, var)
  f = Flatten (b)
  m = MatMul (f, k)
  y = Add (m, bias)
}
"""


def test_a_pipeline_run_keeps_no_reference_to_the_model():
    """Rewrite rules remember the last graph they matched: a rule set kept in a module held the whole
    model (weights included) until the process ended. After a run, only the caller holds the model."""
    import gc
    import weakref

    import numpy as np
    from onnx import numpy_helper

    rng = np.random.default_rng(0)
    proto = onnx.parser.parse_model(RETAINED)
    arrays = {"w": rng.standard_normal((4, 3, 3, 3)), "gamma": rng.random(4) + 0.5, "beta": rng.random(4),
              "mean": rng.random(4), "var": rng.random(4) + 0.5, "k": rng.standard_normal((144, 5)),
              "bias": rng.standard_normal(5)}
    proto.graph.initializer.extend(numpy_helper.from_array(a.astype(np.float32), n) for n, a in arrays.items())
    model, report = pipeline.run_passes(ir.serde.deserialize_model(proto), pipeline.parse_pipeline("default"))
    rewrites = {r.name: r.rewrites for r in report.records}
    assert rewrites["fold-bn"] == 1 and rewrites["fuse-matmul-add"] == 1
    assert [n.op_type for n in model.graph] == ["Conv", "Flatten", "Gemm"]
    graph = weakref.ref(model.graph)
    del model
    gc.collect()
    assert graph() is None
