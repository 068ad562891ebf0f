"""``onnxq.small_ops`` evaluates shape and layout ops exactly as ONNX's reference implementation does, and
refuses (None) what it does not implement; constant folding uses it before ``onnx.reference``."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import numpy_helper

from onnxq import small_ops

I64 = np.int64


def _reference(op: str, inputs, attributes, version: int = 13):
    from onnx.reference.ops import load_op

    return np.asarray(load_op("", op, version).eval(*inputs, **attributes))


def _same(op: str, inputs, attributes=None, version: int = 13) -> np.ndarray:
    attributes = attributes or {}
    ours = small_ops.evaluate("", op, inputs, attributes)
    expected = _reference(op, inputs, attributes, version)
    assert ours is not None, f"{op} not evaluated"
    assert ours.dtype == expected.dtype and ours.shape == expected.shape
    np.testing.assert_array_equal(ours, expected)
    return ours


ARANGE = np.arange(24, dtype=np.float32).reshape(2, 3, 4)

CASES = [
    ("Identity", [ARANGE], {}),
    ("Cast", [np.array([1, -2, 3], I64)], {"to": 1}),
    ("Cast", [np.array([1.9, -2.9, 0.0], np.float32)], {"to": 7}),  # truncation toward zero
    ("Cast", [np.array([0.0, 2.5], np.float32)], {"to": 9}),  # to bool
    ("Cast", [np.array([1, 60001], I64)], {"to": 10}),  # int64 -> float16, rounded
    ("Reshape", [ARANGE, np.array([0, -1], I64)], {}),  # 0 copies the input's dim
    ("Reshape", [ARANGE, np.array([4, 0, 2], I64)], {}),
    ("Reshape", [np.zeros((0, 3), np.float32), np.array([3, 0], I64)], {"allowzero": 1}),
    ("Transpose", [ARANGE], {}),
    ("Transpose", [ARANGE], {"perm": [1, 2, 0]}),
    ("Concat", [np.array([1, 2], I64), np.array([3], I64)], {"axis": 0}),
    ("Concat", [ARANGE, ARANGE], {"axis": -1}),
    ("Slice", [ARANGE, np.array([1], I64), np.array([-1], I64)], {}),
    ("Slice", [ARANGE, np.array([-1, 3], I64), np.array([-1000, 0], I64), np.array([2, 1], I64),
               np.array([-1, -2], I64)], {}),  # negative steps, clamped ends
    ("Slice", [ARANGE, np.array([0], I64), np.array([2**62], I64), np.array([1], I64)], {}),
    ("Slice", [np.arange(8, dtype=I64).reshape(4, 2), np.array([1], I64), np.array([2], I64),
               np.array([0], I64), None], {}),  # an omitted optional input
    ("ConstantOfShape", [np.array([2, 3], I64)], {}),
    ("ConstantOfShape", [np.array([4], I64)], {"value": numpy_helper.from_array(np.array([7], I64))}),
    ("Unsqueeze", [ARANGE, np.array([0, -1], I64)], {}),
    ("Squeeze", [np.zeros((1, 3, 1), np.float32)], {}),
    ("Squeeze", [np.zeros((1, 3, 1), np.float32), np.array([-1], I64)], {}),
    ("Gather", [np.array([5, 6, 7], I64), np.array(-1, I64)], {}),  # 0-d index: a 0-d result
    ("Gather", [ARANGE, np.array([[0, 2], [1, 1]], I64)], {"axis": 1}),
]


@pytest.mark.parametrize(("op", "inputs", "attributes"), CASES,
                         ids=[f"{case[0]}-{i}" for i, case in enumerate(CASES)])
def test_each_op_equals_the_reference_implementation(op, inputs, attributes):
    _same(op, inputs, attributes, version=14 if op == "Reshape" else 13)  # allowzero: Reshape-14


def test_attribute_forms_of_old_opsets():
    _same("Unsqueeze", [ARANGE], {"axes": [1]}, version=11)
    _same("Squeeze", [np.zeros((1, 3, 1), np.float32)], {"axes": [0]}, version=11)


@settings(max_examples=60, deadline=None)
@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=3), data=st.data())
def test_slices_equal_the_reference(shape, data):
    x = np.arange(int(np.prod(shape)), dtype=I64).reshape(shape)
    axes = data.draw(st.lists(st.integers(-len(shape), len(shape) - 1), min_size=1, max_size=len(shape),
                              unique_by=lambda a: a % len(shape)))
    bound = st.integers(-8, 8) | st.sampled_from([-(2**62), 2**62])
    starts = [data.draw(bound) for _ in axes]
    ends = [data.draw(bound) for _ in axes]
    steps = [data.draw(st.integers(-3, 3).filter(bool)) for _ in axes]
    _same("Slice", [x, np.array(starts, I64), np.array(ends, I64), np.array(axes, I64), np.array(steps, I64)])


@pytest.mark.parametrize(("op", "inputs", "attributes"), [
    ("Cast", [np.array([np.nan], np.float32)], {"to": 6}),  # NaN to int: undefined by the standard
    ("Cast", [np.array([3e9], np.float32)], {"to": 6}),  # out of int32's range
    ("Cast", [np.array([1.0], np.float32)], {"to": 17}),  # float8: left to the reference
    ("Cast", [np.array([1.0], np.float32)], {"to": 1, "saturate": 1}),  # an attribute it does not know
    ("Slice", [ARANGE, np.array([0], I64), np.array([1], I64), np.array([0], I64), np.array([0], I64)], {}),
    ("Reshape", [ARANGE, np.array([5, -1], I64)], {}),  # invalid: 24 is not a multiple of 5
    ("Transpose", [np.zeros(small_ops.MAX_ELEMENTS + 1, np.float32)], {}),  # too large
    ("Add", [np.ones(2, np.float32), np.ones(2, np.float32)], {}),  # not implemented
])
def test_what_is_not_implemented_or_invalid_is_refused(op, inputs, attributes):
    assert small_ops.evaluate("", op, inputs, attributes) is None


def test_other_domains_are_refused():
    assert small_ops.evaluate("com.microsoft", "Identity", [ARANGE], {}) is None
