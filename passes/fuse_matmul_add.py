"""Fuse ``MatMul(A, B) + C`` into ``Gemm(A, B, C)`` where Gemm computes exactly the same thing.

Gemm is ``Y = α·A'·B' + β·C`` with 2-D ``A`` ``[M, K]`` and ``B`` ``[K, N]`` and ``C`` unidirectionally
broadcastable to ``[M, N]`` (each of its trailing dims is 1 or equal to the matching dim of ``[M, N]``).
MatMul + Add is more general: MatMul batches over leading dims ([B, S, K]·[K, N], as in every transformer)
and Add broadcasts both ways, so an ``[N]``-bias Add after a ``[B, S, K]`` MatMul is *not* a Gemm. The rule
therefore proves every Gemm precondition from static information before it fires:

* ``A`` has rank 2 (from its inferred shape), ``B`` is a constant 2-D tensor, ``C`` is a constant;
* ``C`` broadcasts to ``[M, N]`` one way only: rank ≤ 2, each dim 1 or equal to ``N`` / a static ``M``;
* the MatMul result feeds only this Add (and is not a graph output), so the MatMul can go;
* the element type is one Gemm takes (float, float16, double; bfloat16 from opset 13).
"""

from __future__ import annotations

import logging

import onnx_ir as ir
from onnxscript.rewriter import MatchResult, RewriteRuleClassBase, RewriteRuleSet

from onnxq.pass_api import RewriteRulesPass, register_pass

logger = logging.getLogger(__name__)

_GEMM_TYPES = frozenset({ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE})


def _constant(value: ir.Value | None) -> ir.TensorProtocol | None:
    """The value's constant tensor (initializer or Constant node), unless a caller can override it."""
    if value is None or value.is_graph_input():
        return None
    try:
        return ir.convenience.get_const_tensor(value)
    except ValueError:  # a malformed Constant node
        return None


def _broadcasts_to(bias_shape: tuple[int, ...], m: int | ir.SymbolicDim, n: int) -> bool:
    """Whether a ``bias_shape`` tensor broadcasts unidirectionally to ``[m, n]``."""
    if len(bias_shape) > 2:
        return False
    target = (m, n)[2 - len(bias_shape):]
    pairs = zip(bias_shape, target, strict=True)
    return all(dim == 1 or (isinstance(want, int) and dim == want) for dim, want in pairs)


def _opset_version(context, node: ir.Node) -> int:
    return node.version if node.version is not None else context.model.opset_imports.get("", 1)


class MatMulAddToGemm(RewriteRuleClassBase):
    """``Add(MatMul(A, B), C)`` → ``Gemm(A, B, C)`` when that is provably the same computation."""

    def pattern(self, op, a, b, c):
        return op.Add(op.MatMul(a, b), c)

    def check(self, context, a: ir.Value, b: ir.Value, c: ir.Value) -> MatchResult:
        reason = self._why_not(context, a, b, c)
        if reason is not None:
            logger.debug("MatMul+Add not fused into Gemm: %s", reason)
            return MatchResult().fail(reason)
        return MatchResult()

    def _why_not(self, context, a: ir.Value, b: ir.Value, c: ir.Value) -> str | None:
        if a.shape is None or len(a.shape) != 2:
            rank = "unknown" if a.shape is None else len(a.shape)
            return f"input A has rank {rank}, Gemm needs rank 2"
        weight, bias = _constant(b), _constant(c)
        if weight is None or bias is None:
            return "B and C must both be constants"
        if len(weight.shape) != 2:
            return f"B has rank {len(weight.shape)}, Gemm needs rank 2"
        dtype = weight.dtype
        opset = _opset_version(context, context.root)
        if not (dtype in _GEMM_TYPES or (dtype == ir.DataType.BFLOAT16 and opset >= 13)):
            return f"Gemm at opset {opset} does not take {dtype}"
        if bias.dtype != dtype:
            return f"C has dtype {bias.dtype}, B {dtype}"
        if opset < 7:
            return "Gemm before opset 7 broadcasts C only with the broadcast attribute"
        bias_shape = tuple(int(d) for d in bias.shape)
        if not _broadcasts_to(bias_shape, a.shape[0], weight.shape[1]):
            target = f"[{a.shape[0]}, {weight.shape[1]}]"
            return f"C of shape {list(bias_shape)} does not broadcast one way to [M, N] = {target}"
        return None

    def rewrite(self, op, a: ir.Value, b: ir.Value, c: ir.Value):
        return op.Gemm(a, b, c)


class AddMatMulToGemm(MatMulAddToGemm):
    """``Add(C, MatMul(A, B))`` → ``Gemm(A, B, C)`` (the commuted form)."""

    def pattern(self, op, a, b, c):
        return op.Add(c, op.MatMul(a, b))


@register_pass
class FuseMatMulAddPass(RewriteRulesPass):
    """Rules:

    1. ``Add(MatMul(A, B), C)`` → ``Gemm(A, B, C)`` when A has rank 2, B is a constant 2-D tensor, C is a
       constant broadcasting one way to [M, N] ([N], [1, N], [M, 1], [M, N] or a scalar), the MatMul result
       feeds only the Add, and the dtype is one Gemm takes.
    2. ``Add(C, MatMul(A, B))`` → ``Gemm(A, B, C)`` under the same conditions.

    Rank-3 activations ([B, S, K] in transformers) never fuse: Gemm has no batch dims.
    """

    name = "fuse-matmul-add"
    summary = "fuse MatMul + Add into Gemm where A is 2-D and B, C are constants"

    def rule_set(self) -> RewriteRuleSet:
        # Built per run, never kept in the module: a rule's matcher holds on to the last graph it matched,
        # which would keep that whole model (and its mapped weights) alive for the life of the process.
        return RewriteRuleSet([MatMulAddToGemm.rule(), AddMatMulToGemm.rule()])
