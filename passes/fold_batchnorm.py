"""Fold inference-mode BatchNormalization into the linear op before it, or lower it to Mul + Add.

In inference BatchNormalization computes, per channel ``c`` of axis 1 of its input::

    y = γ·(x − μ)/σ + β,        σ = sqrt(var + ε)

With ``s = γ/σ`` and ``t = β − μ·s`` that is the affine map ``y = x·s + t``. When ``x = W∗a + b`` is
linear in a constant weight ``W`` whose output channels are the BN channels, scaling each output channel's
filter by ``s`` folds the BN away::

    W' = W·s   (per output channel),        b' = (b − μ)·s + β  =  b·s + t

Where the output channels sit in ``W``:

* Conv ``[C_out, C_in/g, k...]``: axis 0, whatever the group count.
* ConvTranspose ``[C_in, C_out/g, k...]``: axis 1 *within each group*; input channel ``i`` of group
  ``i // (C_in/g)`` feeds output channel ``(i // (C_in/g))·(C_out/g) + j``.
* Gemm ``Y = α·A·B + β_g·C``: the columns of ``B`` (rows with ``transB=1``); ``C`` becomes ``(β_g·C)·s + t``.
* MatMul with a 2-D input ``[M, K]`` and constant ``[K, N]`` weight: the columns of the weight; the result is
  ``MatMul + Add``. A rank>2 MatMul output puts a different axis at position 1, so it never folds.

A BN with no foldable producer becomes ``Mul(x, s) + t`` with ``s``, ``t`` shaped ``[C, 1, ..., 1]`` to
broadcast over axis 1 (``[C]`` for a rank-2 input). The factors ``s``, ``t`` are computed in float64; weights
are scaled in their own dtype (a float64 copy of a large weight would double peak memory for one rounding
step), so float16/float32/double models keep their types.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import MatchResult, RewriteRuleClassBase, RewriteRuleSet

from onnxq.pass_api import RewriteRulesPass, register_pass

logger = logging.getLogger(__name__)

_DEFAULT_EPSILON = 1e-5
_FLOAT_TYPES = frozenset({ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE, ir.DataType.BFLOAT16})


def _is_float(array: np.ndarray) -> bool:
    try:
        return ir.DataType.from_numpy(array.dtype) in _FLOAT_TYPES
    except TypeError:
        return False


def _constant(value: ir.Value | None) -> np.ndarray | None:
    """The value's constant contents (initializer or Constant node), unless a caller can override it."""
    if value is None or value.is_graph_input():
        return None
    try:
        tensor = ir.convenience.get_const_tensor(value)
    except ValueError:  # a malformed Constant node: not ours to judge here
        return None
    return None if tensor is None else tensor.numpy()


def _opset_version(context, node: ir.Node) -> int:
    if node.version is not None:
        return node.version
    return context.model.opset_imports.get("", 1)


def _fresh_name(node: ir.Node, base: str) -> str:
    """An initializer name not yet taken in the graph that holds ``node``."""
    taken = node.graph.initializers if node.graph is not None else {}
    name, n = base, 0
    while name in taken:
        n += 1
        name = f"{base}_{n}"
    return name


def _batchnorm_affine(context, bn: ir.Node) -> tuple[np.ndarray, np.ndarray] | str:
    """(s, t) in float64 for an inference-mode BatchNormalization, or the reason it is not one."""
    if bn.attributes.get_int("training_mode", 0) != 0:
        return "training_mode=1"
    if bn.attributes.get_int("spatial", 1) != 1:
        return "spatial=0 (per-activation statistics)"
    if _opset_version(context, bn) < 7 and bn.attributes.get_int("is_test", 0) != 1:
        return "opset < 7 without is_test=1 (training form)"
    if any(out.name or out.uses() for out in bn.outputs[1:]):
        return "it has running-statistics outputs (training form)"
    if len(bn.inputs) != 5:
        return f"it has {len(bn.inputs)} inputs, expected 5"
    params = [_constant(v) for v in bn.inputs[1:]]
    if any(p is None for p in params):
        return "scale, B, mean and var are not all constants"
    gamma, beta, mean, var = (np.asarray(p, dtype=np.float64) for p in params)
    if not (gamma.ndim == beta.ndim == mean.ndim == var.ndim == 1):
        return "its parameters are not 1-D"
    if not (gamma.shape == beta.shape == mean.shape == var.shape):
        return "its parameters differ in length"
    epsilon = bn.attributes.get_float("epsilon", _DEFAULT_EPSILON)
    scale = gamma / np.sqrt(var + epsilon)
    return scale, beta - mean * scale


@dataclass(frozen=True)
class _Fold:
    weight: np.ndarray  # folded, in the weight's dtype
    bias: np.ndarray


class _FoldIntoLinear(RewriteRuleClassBase):
    """``BatchNormalization(Op(x, W[, b]))`` → ``Op(x, W', b')`` for a linear ``Op``.

    ``check`` computes the folded tensors once and keeps them for ``rewrite``, which the rewriter calls
    right after a successful check of the same match.
    """

    op_type: ClassVar[str]
    _pending: _Fold | None = None

    def pattern(self, op, x):
        linear = getattr(op, self.op_type)(x, _allow_other_inputs=True, _outputs=["linear_out"])
        return op.BatchNormalization(linear, _allow_other_inputs=True, _outputs=["bn_out"])

    # Hooks for each producer kind.
    def _output_channels(self, weight: np.ndarray, node: ir.Node) -> int | str:
        raise NotImplementedError

    def _scale_weight(self, weight: np.ndarray, scale: np.ndarray, node: ir.Node) -> np.ndarray:
        raise NotImplementedError

    def _plan(self, context, x: ir.Value, linear_out: ir.Value, bn_out: ir.Value) -> _Fold | str:
        linear, bn = linear_out.producer(), bn_out.producer()
        affine = _batchnorm_affine(context, bn)
        if isinstance(affine, str):
            return affine
        scale, shift = affine
        weight = _constant(linear.inputs[1] if len(linear.inputs) > 1 else None)
        if weight is None:
            return f"the {self.op_type} weight is not a constant"
        if not _is_float(weight):
            return f"the {self.op_type} weight has dtype {weight.dtype}, not a float type"
        bias_value = linear.inputs[2] if len(linear.inputs) > 2 else None
        bias = _constant(bias_value)
        if bias_value is not None and bias is None:
            return f"the {self.op_type} bias is not a constant"
        channels = self._output_channels(weight, linear)
        if isinstance(channels, str):
            return channels
        if channels != scale.shape[0]:
            return f"{self.op_type} has {channels} output channels, BatchNormalization {scale.shape[0]}"
        # Scale in the weight's own dtype: a float64 copy of a 64 MiB weight costs 256 MiB of peak RAM for one
        # rounding step of difference (the per-channel factors themselves are computed in float64).
        folded_weight = self._scale_weight(weight, scale.astype(weight.dtype), linear)
        folded_bias = self._fold_bias(bias, scale, shift, linear)
        dtype = weight.dtype
        del weight  # a view into the memory map: drop it so the map can be released
        source = linear.inputs[1].const_value
        if isinstance(source, ir.ExternalTensor):
            try:
                source.release()  # unmap the original weight; onnx-ir maps it again if it is read later
            except BufferError:
                logger.debug("weight of %s is still referenced; its memory map stays", linear.name)
        return _Fold(folded_weight.astype(dtype), folded_bias.astype(dtype))

    def _fold_bias(self, bias: np.ndarray | None, scale: np.ndarray, shift: np.ndarray, node: ir.Node):
        if bias is None:
            return shift
        return bias.astype(np.float64) * scale + shift

    def check(self, context, x: ir.Value, linear_out: ir.Value, bn_out: ir.Value) -> MatchResult:
        plan = self._plan(context, x, linear_out, bn_out)
        if isinstance(plan, str):
            logger.debug("not folding %s into %s: %s", bn_out.producer().name, self.op_type, plan)
            return MatchResult().fail(plan)
        self._pending = plan
        return MatchResult()

    def rewrite(self, op, x: ir.Value, linear_out: ir.Value, bn_out: ir.Value):
        fold, self._pending = self._pending, None
        linear = linear_out.producer()
        base = linear.inputs[1].name or f"{self.op_type.lower()}_weight"
        weight = op.initializer(ir.tensor(fold.weight), name=_fresh_name(linear, f"{base}_bnfold"))
        bias = op.initializer(ir.tensor(fold.bias), name=_fresh_name(linear, f"{base}_bnfold_bias"))
        return self._emit(op, x, weight, bias, linear)

    def _emit(self, op, x: ir.Value, weight: ir.Value, bias: ir.Value, node: ir.Node) -> ir.Value:
        return op.op(self.op_type, x, weight, bias, _name=node.name or None, **dict(node.attributes))


class FoldIntoConv(_FoldIntoLinear):
    op_type = "Conv"

    def _output_channels(self, weight: np.ndarray, node: ir.Node) -> int | str:
        return weight.shape[0] if weight.ndim >= 3 else f"Conv weight has rank {weight.ndim}"

    def _scale_weight(self, weight: np.ndarray, scale: np.ndarray, node: ir.Node) -> np.ndarray:
        return weight * scale.reshape((-1,) + (1,) * (weight.ndim - 1))


class FoldIntoConvTranspose(_FoldIntoLinear):
    op_type = "ConvTranspose"

    def _output_channels(self, weight: np.ndarray, node: ir.Node) -> int | str:
        group = node.attributes.get_int("group", 1)
        if weight.ndim < 3:
            return f"ConvTranspose weight has rank {weight.ndim}"
        if group < 1 or weight.shape[0] % group:
            return f"ConvTranspose input channels {weight.shape[0]} not divisible by group {group}"
        return weight.shape[1] * group

    def _scale_weight(self, weight: np.ndarray, scale: np.ndarray, node: ir.Node) -> np.ndarray:
        group = node.attributes.get_int("group", 1)
        c_in, c_out_per_group, *kernel = weight.shape
        grouped = weight.reshape(group, c_in // group, c_out_per_group, *kernel)
        factors = scale.reshape(group, 1, c_out_per_group, *([1] * len(kernel)))
        return (grouped * factors).reshape(weight.shape)


class FoldIntoGemm(_FoldIntoLinear):
    op_type = "Gemm"

    def _output_axis(self, node: ir.Node) -> int:
        return 0 if node.attributes.get_int("transB", 0) else 1

    def _output_channels(self, weight: np.ndarray, node: ir.Node) -> int | str:
        return weight.shape[self._output_axis(node)] if weight.ndim == 2 else "Gemm weight is not 2-D"

    def _scale_weight(self, weight: np.ndarray, scale: np.ndarray, node: ir.Node) -> np.ndarray:
        return weight * (scale[:, None] if self._output_axis(node) == 0 else scale[None, :])

    def _fold_bias(self, bias: np.ndarray | None, scale: np.ndarray, shift: np.ndarray, node: ir.Node):
        if bias is None:
            return shift
        beta = node.attributes.get_float("beta", 1.0)
        return (beta * bias.astype(np.float64)) * scale + shift  # broadcasts as C did: [N], [1,N], [M,N]

    def _emit(self, op, x: ir.Value, weight: ir.Value, bias: ir.Value, node: ir.Node) -> ir.Value:
        attributes = {k: v for k, v in node.attributes.items() if k != "beta"}  # β_g is folded into C
        return op.Gemm(x, weight, bias, _name=node.name or None, **attributes)


class FoldIntoMatMul(_FoldIntoLinear):
    op_type = "MatMul"

    def check(self, context, x: ir.Value, linear_out: ir.Value, bn_out: ir.Value) -> MatchResult:
        if x.shape is None or len(x.shape) != 2:
            rank = "unknown" if x.shape is None else len(x.shape)
            return MatchResult().fail(f"MatMul input rank is {rank}; only rank 2 puts its columns on axis 1")
        return super().check(context, x, linear_out, bn_out)

    def _output_channels(self, weight: np.ndarray, node: ir.Node) -> int | str:
        return weight.shape[1] if weight.ndim == 2 else "MatMul weight is not 2-D"

    def _scale_weight(self, weight: np.ndarray, scale: np.ndarray, node: ir.Node) -> np.ndarray:
        return weight * scale[None, :]

    def _emit(self, op, x: ir.Value, weight: ir.Value, bias: ir.Value, node: ir.Node) -> ir.Value:
        return op.Add(op.MatMul(x, weight, _name=node.name or None), bias)


class LowerToMulAdd(RewriteRuleClassBase):
    """``BatchNormalization(x)`` → ``Add(Mul(x, s), t)``: the fallback when nothing before it folds."""

    _pending: tuple[np.ndarray, np.ndarray] | None = None

    def pattern(self, op, x):
        return op.BatchNormalization(x, _allow_other_inputs=True, _outputs=["bn_out"])

    def check(self, context, x: ir.Value, bn_out: ir.Value) -> MatchResult:
        bn = bn_out.producer()
        plan = self._plan(context, x, bn_out)
        if isinstance(plan, str):
            logger.info("BatchNormalization '%s' left in place: %s", bn.name, plan)
            return MatchResult().fail(plan)
        self._pending = plan
        return MatchResult()

    def _plan(self, context, x: ir.Value, bn_out: ir.Value) -> tuple[np.ndarray, np.ndarray] | str:
        """The Mul and Add constants, shaped to broadcast over axis 1, or why there are none."""
        affine = _batchnorm_affine(context, bn_out.producer())
        if isinstance(affine, str):
            return affine
        scale, shift = affine
        if x.shape is None:
            return "its input rank is unknown (run infer-shapes first)"
        if len(x.shape) < 2:
            return f"its input has rank {len(x.shape)}, expected at least 2"
        if isinstance(x.shape[1], int) and x.shape[1] != scale.shape[0]:
            return f"its input has {x.shape[1]} channels, its parameters {scale.shape[0]}"
        dtype = x.dtype or bn_out.dtype
        if dtype not in _FLOAT_TYPES:
            return f"its input dtype is {dtype or 'unknown'}, not a float type"
        broadcast = (-1,) + (1,) * (len(x.shape) - 2)
        return scale.reshape(broadcast).astype(dtype.numpy()), shift.reshape(broadcast).astype(dtype.numpy())

    def rewrite(self, op, x: ir.Value, bn_out: ir.Value):
        (scale, shift), self._pending = self._pending, None
        bn = bn_out.producer()
        base = bn.name or "batchnorm"
        scale_value = op.initializer(ir.tensor(scale), name=_fresh_name(bn, f"{base}_scale"))
        shift_value = op.initializer(ir.tensor(shift), name=_fresh_name(bn, f"{base}_shift"))
        return op.Add(op.Mul(x, scale_value), shift_value, _name=bn.name or None)


#: In priority order: fold into a producer first, lower to Mul + Add only when none applies.
FOLD_RULES = (FoldIntoConv, FoldIntoConvTranspose, FoldIntoGemm, FoldIntoMatMul)


def make_rules(*, lower_standalone: bool = True) -> RewriteRuleSet:
    classes = FOLD_RULES + ((LowerToMulAdd,) if lower_standalone else ())
    return RewriteRuleSet([cls.rule() for cls in classes])


@dataclass(frozen=True)
class FoldBatchNormOptions:
    #: Lower a BatchNormalization with no foldable producer to Mul + Add.
    lower_standalone: bool = True


@register_pass
class FoldBatchNormPass(RewriteRulesPass):
    """Rules (inference-mode BatchNormalization only: training_mode=0, spatial=1, one output; constant
    γ, β, μ, var; the producer's output used by the BN alone):

    1. ``BN(Conv(x, W[, b]))`` → ``Conv(x, W', b')``, scaling W along axis 0 (any group count).
    2. ``BN(ConvTranspose(x, W[, b]))`` → ``ConvTranspose(x, W', b')``, scaling W along axis 1 per group.
    3. ``BN(Gemm(A, B[, C]))`` → ``Gemm(A, B', C')``, scaling the columns of B (rows with transB=1); the Gemm
       ``beta`` attribute is folded into C'.
    4. ``BN(MatMul(x, W))`` with x of rank 2 and constant 2-D W → ``Add(MatMul(x, W'), b')``.
    5. Any other BN → ``Add(Mul(x, s), t)`` with per-channel constants broadcasting over axis 1; needs the
       input rank (a BN whose rank is unknown stays, and the reason is logged). Option ``lower_standalone``.
    """

    name = "fold-bn"
    summary = "fold BatchNormalization into Conv/ConvTranspose/Gemm/MatMul weights, else lower to Mul+Add"
    Options = FoldBatchNormOptions

    def rule_set(self) -> RewriteRuleSet:
        return make_rules(lower_standalone=self.options.lower_standalone)
