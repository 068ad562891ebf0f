"""Fuse decomposed GELU into the standard ``Gelu`` op (opset 20).

GELU weighs x by the standard normal CDF Φ; exporters write it elementwise in two forms::

    exact:  Gelu(x) = x·Φ(x) = ½·x·(1 + erf(x/√2))                          → Gelu(approximate="none")
    tanh:   Gelu(x) ≈ ½·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))              → Gelu(approximate="tanh")

with x/√2 as ``Div(x, 1.4142…)`` or ``Mul(x, 0.7071…)``, x³ as ``Pow(x, 3)`` or ``Mul(x, Mul(x, x))``,
and the product ½·x·(1+…) in any of the three groupings ``(x·a)·½``, ``(x·½)·a``, ``x·(a·½)`` with
operands in either order. Constants (scalars or 1-element tensors) are compared with a relative
tolerance of 1e-3, which accepts the digits exporters round to and rejects anything else.

``Gelu`` is a standard op only from opset 20 (earlier runtimes know just ``com.microsoft.Gelu``, which
this pass never emits), so the pass fuses in models at opset ≥ 20; with ``upgrade_opset`` a model below
20 that has a match is first converted to opset 20 (dry run first: a model without a match is untouched).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import onnx_ir as ir
from onnxscript.rewriter import pattern

from onnxq.pass_api import RewriteRulesPass, register_pass
from onnxq.rewrite_utils import apply_at_opset, either, near

logger = logging.getLogger(__name__)

GELU_OPSET = 20
_RTOL = 1e-3
_GELU_DTYPES = frozenset({ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.DOUBLE})
#: The three groupings of the product x·a·½ (a = 1 + erf or 1 + tanh), each with the root's operands in
#: either order (a pattern's root cannot be an alternative).
_GROUPINGS = ("(x*a)*h", "(x*h)*a", "x*(a*h)")


class GeluRule(pattern.RewriteRuleClassBase):
    """½·x·(1 + erf(x/√2)) (``form="erf"``) or its tanh approximation (``form="tanh"``) → ``Gelu``."""

    def __init__(self, form: str, grouping: str, swap_root: bool):
        super().__init__(name=f"Gelu[{form},{grouping}{',swapped' if swap_root else ''}]")
        self._form = form
        self._grouping = grouping
        self._swap_root = swap_root

    def pattern(self, op, x):
        if self._form == "erf":
            scaled = pattern.OrValue(
                [op.Div(x, near(math.sqrt(2.0), _RTOL)), either(op.Mul, x, near(math.sqrt(0.5), _RTOL))]
            )
            core = op.Erf(scaled)
        else:
            cube = pattern.OrValue([op.Pow(x, near(3.0, 1e-6)), either(op.Mul, x, op.Mul(x, x))])
            inner = either(op.Add, x, either(op.Mul, cube, near(0.044715, _RTOL)))
            core = op.Tanh(either(op.Mul, inner, near(math.sqrt(2.0 / math.pi), _RTOL)))
        a = either(op.Add, core, near(1.0, _RTOL))
        half = near(0.5, _RTOL)
        if self._grouping == "(x*a)*h":
            left, right = either(op.Mul, x, a), half
        elif self._grouping == "(x*h)*a":
            left, right = either(op.Mul, x, half), a
        else:
            left, right = x, either(op.Mul, a, half)
        return op.Mul(right, left) if self._swap_root else op.Mul(left, right)

    def check(self, context, x, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        if x.dtype is not None and x.dtype not in _GELU_DTYPES:
            return result.fail(f"Gelu takes float types, not {x.dtype}", x)
        return result

    def rewrite(self, op, x, **_):
        return op.Gelu(x, approximate="none" if self._form == "erf" else "tanh")


def make_rules() -> pattern.RewriteRuleSet:
    return pattern.RewriteRuleSet(
        [
            GeluRule.rule(form, grouping, swap)
            for form in ("erf", "tanh")
            for grouping in _GROUPINGS
            for swap in (False, True)
        ]
    )


@dataclass(frozen=True)
class FuseGeluOptions:
    upgrade_opset: bool = False


@register_pass
class FuseGeluPass(RewriteRulesPass):
    """Rules (Add/Mul operands in either order, constants within 1e-3 relative):

    1. ``½·x·(1 + Erf(x / 1.41421))`` or with ``x · 0.70711`` → ``Gelu(x, approximate="none")``.
    2. ``½·x·(1 + Tanh(0.79788·(x + 0.044715·x³)))``, x³ as ``Pow(x, 3)`` or ``x·(x·x)``
       → ``Gelu(x, approximate="tanh")``.
    3. The product ½·x·(1+…) may be grouped ``(x·a)·½``, ``(x·½)·a`` or ``x·(a·½)``.
    4. Only at default opset ≥ 20; below it, with ``upgrade_opset`` and at least one match, the model is
       converted to opset 20 first (a failed conversion is a warning and leaves the model alone).
    """

    name = "fuse-gelu"
    summary = "fuse decomposed GELU (erf or tanh form) into the standard Gelu op (opset 20)"
    Options = FuseGeluOptions

    def rule_set(self) -> pattern.RewriteRuleSet:
        return make_rules()

    def apply(self, model: ir.Model) -> int:
        upgrade, name = self.options.upgrade_opset, self.name
        count = apply_at_opset(model, [self.rule_set()], GELU_OPSET, allow_upgrade=upgrade, pass_name=name)
        logger.debug("%s: %d GELU(s) fused", self.name, count)
        return count
