"""Fuse decomposed layer normalization into the standard ``LayerNormalization`` op (opset 17).

Exporters that target opsets below 17 write LayerNorm over the last ``k`` axes of ``x`` as::

    μ  = ReduceMean(x)                  over the last k axes, keepdims=1
    d  = x − μ
    σ² = ReduceMean(d²)                 d² written as Pow(d, 2) or Mul(d, d)
    n  = d / √(σ² + ε)                  or d · Reciprocal(√(σ² + ε))
    y  = n · γ + β                      γ (scale) and β (bias) optional

which is ``LayerNormalization(x, γ, β, axis=−k, epsilon=ε)``. The op needs a scale of exactly the
normalized shape ``x.shape[−k:]`` (ones when the graph has no γ) and an optional bias of that shape, so
the normalized dims must be static: known from shape inference or from a constant γ/β.

ReduceMean takes its axes as an attribute before opset 18 and as a constant input from 18 on; axes may
be negative or positive (positive ones need the rank). A model below opset 17 in which the pattern occurs
is first raised to opset 17 with onnx's version converter (option ``upgrade_opset``); a model without a
match is never converted. The fused op computes in float32 (``stash_type=1``) for fp16/bf16 inputs.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern

from onnxq.pass_api import RewriteRulesPass, register_pass
from onnxq.rewrite_utils import apply_at_opset, constant_array, constant_scalar, either, is_close_scalar

logger = logging.getLogger(__name__)

LAYER_NORM_OPSET = 17
_FUSED_DTYPES = frozenset({ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16})
#: Optional affine tail of the pattern, most specific first: each tier runs over the whole model before
#: the next, so ``n·γ + β`` is fused as one op rather than a bare LayerNorm followed by Mul and Add.
_AFFINE_TIERS: tuple[tuple[str, ...], ...] = (("scale_bias",), ("scale", "bias"), ("none",))


# --- the rule ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    """What ``check`` decided and ``rewrite`` builds."""

    axis: int
    epsilon: float
    scale: ir.Value | np.ndarray
    bias: ir.Value | np.ndarray | None


class LayerNormRule(pattern.RewriteRuleClassBase):
    """Decomposed LayerNorm with affine tail ``scale_bias`` (n·γ+β), ``scale``, ``bias`` or ``none``.

    A pattern's root cannot be an alternative, so the root's operand order (or, for ``none``, the form
    of the division) is the rule's ``variant``: 0/1 for a tail, 0 (Div), 1/2 (Mul by Reciprocal) for none.
    """

    def __init__(self, affine: str, variant: int = 0):
        super().__init__(name=f"LayerNorm[{affine}/{variant}]")
        self._affine = affine
        self._variant = variant
        self._plan: _Plan | None = None
        self._names = itertools.count()

    @staticmethod
    def variants(affine: str) -> range:
        return range(3 if affine == "none" else 2)

    def pattern(self, op, x, two, epsilon, scale, bias):
        mean = op.ReduceMean(x, _allow_other_inputs=True, _outputs=["mean"])
        deviation = op.Sub(x, mean)
        square = pattern.OrValue([op.Pow(deviation, two), op.Mul(deviation, deviation)])
        variance = op.ReduceMean(square, _allow_other_inputs=True, _outputs=["variance"])
        std = op.Sqrt(either(op.Add, variance, epsilon))
        if self._affine == "none":
            if self._variant == 0:
                return op.Div(deviation, std)
            inverse = op.Reciprocal(std)
            return op.Mul(deviation, inverse) if self._variant == 1 else op.Mul(inverse, deviation)
        out = pattern.OrValue([op.Div(deviation, std), either(op.Mul, deviation, op.Reciprocal(std))])
        if self._affine == "scale_bias":
            out = either(op.Mul, out, scale)
        build, param = {"scale": (op.Mul, scale), "bias": (op.Add, bias), "scale_bias": (op.Add, bias)}[
            self._affine
        ]
        return build(param, out) if self._variant else build(out, param)

    def check(self, context, x, two, epsilon, scale, bias, mean, variance, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        dtype = x.dtype if x.dtype is not None else _const_dtype(epsilon)
        if dtype not in _FUSED_DTYPES:
            return result.fail(f"LayerNormalization fusion supports float32/float16/bfloat16, not {dtype}", x)
        if two is not None and not is_close_scalar(two, 2.0, 1e-6):
            return result.fail("Pow exponent is not the constant 2", two)
        eps = constant_scalar(epsilon)
        if eps is None or eps < 0:
            return result.fail("epsilon is not a non-negative constant scalar", epsilon)
        rank = x.shape.rank() if x.shape is not None else None
        k = _trailing_axes_count(mean.producer(), rank)
        if k is None or k != _trailing_axes_count(variance.producer(), rank):
            return result.fail("both ReduceMeans must reduce the same trailing axes with keepdims=1", mean)
        norm_shape = _normalized_shape(x, k, (scale, bias))
        if norm_shape is None:
            return result.fail("normalized dims are not static (run infer-shapes or fix-input-shapes)", x)
        scale_arg = _affine_param(scale, norm_shape, rank) if scale is not None else np.ones(norm_shape)
        bias_arg = _affine_param(bias, norm_shape, rank) if bias is not None else None
        if scale_arg is None or (bias is not None and bias_arg is None):
            return result.fail("scale/bias do not broadcast over the normalized axes only", x)
        self._plan = _Plan(-k, eps, _as_dtype(scale_arg, dtype), _as_dtype(bias_arg, dtype))
        return result

    def rewrite(self, op, x, **_):
        plan = self._plan
        assert plan is not None
        args = [self._materialize(op, x, plan.scale, "scale")]
        if plan.bias is not None:
            args.append(self._materialize(op, x, plan.bias, "bias"))
        return op.LayerNormalization(x, *args, axis=plan.axis, epsilon=plan.epsilon, stash_type=1)

    def _materialize(self, op, x: ir.Value, param: ir.Value | np.ndarray, role: str) -> ir.Value:
        if isinstance(param, ir.Value):
            return param
        taken = x.graph.initializers if x.graph is not None else {}
        name = f"{x.name or 'x'}_layernorm_{role}"
        while name in taken:
            name = f"{x.name or 'x'}_layernorm_{role}_{next(self._names)}"
        return op.initializer(ir.tensor(param, name=name), name=name)


def _const_dtype(value: ir.Value | None) -> ir.DataType | None:
    return value.const_value.dtype if value is not None and value.const_value is not None else None


def _as_dtype(param: ir.Value | np.ndarray | None, dtype: ir.DataType) -> ir.Value | np.ndarray | None:
    return param.astype(dtype.numpy()) if isinstance(param, np.ndarray) else param


def _reduce_axes(node: ir.Node) -> list[int] | None:
    """Axes of a ReduceMean from its attribute (opset < 18) or its constant second input (opset ≥ 18)."""
    attr = node.attributes.get("axes")
    if attr is not None:
        return list(attr.as_ints())
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        axes = constant_array(node.inputs[1])
        return None if axes is None else [int(a) for a in axes.reshape(-1)]
    return None


def _trailing_axes_count(node: ir.Node | None, rank: int | None) -> int | None:
    """k when the ReduceMean reduces exactly the last k axes with keepdims=1, else None."""
    if node is None or node.attributes.get_int("keepdims", 1) != 1:
        return None
    axes = _reduce_axes(node)
    if not axes:
        return None
    if rank is not None:
        axes = [a + rank if a < 0 else a for a in axes]
        k = len(set(axes))
        return k if sorted(set(axes)) == list(range(rank - k, rank)) else None
    if any(a >= 0 for a in axes):  # positive axes need the rank
        return None
    k = len(set(axes))
    return k if sorted(set(axes)) == list(range(-k, 0)) else None


def _normalized_shape(x: ir.Value, k: int, params: tuple[ir.Value | None, ...]) -> tuple[int, ...] | None:
    """Static ``x.shape[-k:]``, from x's shape or else from a constant γ/β that spells it out."""
    if x.shape is not None and x.shape.rank() >= k:
        dims = tuple(x.shape[x.shape.rank() - k :])
        if all(isinstance(d, int) for d in dims):
            return dims
    for param in params:
        array = constant_array(param)
        if array is not None and array.ndim == k and all(d > 1 for d in array.shape):
            return tuple(array.shape)
    return None


def _affine_param(
    value: ir.Value, norm_shape: tuple[int, ...], rank: int | None
) -> ir.Value | np.ndarray | None:
    """γ or β as the fused op wants it: the value itself when its shape is the normalized shape, a
    constant broadcast to that shape, or None when it would broadcast over non-normalized axes."""
    k = len(norm_shape)
    array = constant_array(value)
    if array is None:
        shape = value.shape
        return value if shape is not None and tuple(shape) == norm_shape else None
    if array.ndim > (rank if rank is not None else k):  # would raise the output's rank
        return None
    leading, trailing = array.shape[: max(array.ndim - k, 0)], array.shape[max(array.ndim - k, 0) :]
    if any(d != 1 for d in leading):
        return None
    try:
        full = np.broadcast_to(array.reshape(trailing), norm_shape)
    except ValueError:
        return None
    return value if array.shape == norm_shape else np.ascontiguousarray(full)


@dataclass(frozen=True)
class FuseLayerNormOptions:
    upgrade_opset: bool = True


@register_pass
class FuseLayerNormPass(RewriteRulesPass):
    """Rules (each on the decomposed form above; Add/Mul operands in either order):

    1. ``n·γ + β`` → ``LayerNormalization(x, γ, β, axis=−k, epsilon=ε)``.
    2. ``n·γ`` → ``LayerNormalization(x, γ)``; ``n + β`` → ``LayerNormalization(x, 1, β)``.
    3. bare ``n`` → ``LayerNormalization(x, 1)`` (a ones initializer of the normalized shape).
    4. A γ/β constant that broadcasts (e.g. shape ``[1, 1, C]`` or a scalar) is stored at the normalized
       shape; one that would broadcast over non-normalized axes, a ReduceMean over a non-trailing axis,
       keepdims=0, ε outside the square root or a non-constant ε leaves the pattern alone.
    5. Below opset 17, with ``upgrade_opset`` and at least one match, the model is first converted to
       opset 17; without a match, or when the conversion fails (a warning), the model is untouched.
    """

    name = "fuse-layernorm"
    summary = "fuse decomposed LayerNorm (ReduceMean/Sub/Pow/Sqrt/Div) into LayerNormalization-17"
    Options = FuseLayerNormOptions

    def _tiers(self) -> list[pattern.RewriteRuleSet]:
        return [
            pattern.RewriteRuleSet(
                [
                    LayerNormRule.rule(affine, variant)
                    for affine in tier
                    for variant in LayerNormRule.variants(affine)
                ]
            )
            for tier in _AFFINE_TIERS
        ]

    def rule_set(self) -> pattern.RewriteRuleSet:
        """All rules in one set (``apply`` runs the tiers one after the other)."""
        return pattern.RewriteRuleSet([rule for tier in self._tiers() for rule in tier])

    def apply(self, model: ir.Model) -> int:
        upgrade, name = self.options.upgrade_opset, self.name
        count = apply_at_opset(model, self._tiers(), LAYER_NORM_OPSET, allow_upgrade=upgrade, pass_name=name)
        logger.debug("%s: %d LayerNorm(s) fused", self.name, count)
        return count
