"""Fuse decomposed hard activations into HardSigmoid/HardSwish and mark SiLU for the quantizer.

The hard activations are piecewise-linear stand-ins for sigmoid and swish (MobileNetV3)::

    HardSigmoid(x) = max(0, min(1, α·x + β)),  α = 1/6, β = ½   = Relu6(x + 3) / 6
    HardSwish(x)   = x · HardSigmoid(x)                          = x · Relu6(x + 3) / 6

Exporters write Relu6 as ``Clip(·, 0, 6)`` (bounds as constant inputs from opset 11, as attributes
before) and the division as ``Div(·, 6)`` or ``Mul(·, 1/6)``, applied before or after the product with
x. ``HardSigmoid`` exists from opset 6 and ``HardSwish`` from opset 14; below 14 HardSwish stays
``Mul(x, HardSigmoid(x))``.

SiLU, ``x·σ(x)``, has no portable standard op before opset 24's Swish, so it is recognised, not
rewritten: both nodes get ``metadata_props["onnxq.pattern"] = "silu"`` so the quantizer treats the pair
as one unit; a HardSwish left as ``Mul(x, HardSigmoid(x))`` below opset 14 is tagged ``"hardswish"``.
A tag counts as a rewrite only when it is new, so a second run reports 0.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import onnx_ir as ir
from onnxscript.rewriter import pattern

from onnxq import runtime_compat
from onnxq.errors import OpsetError
from onnxq.pass_api import RewriteRulesPass, register_pass
from onnxq.rewrite_utils import constant_scalar, either, near

logger = logging.getLogger(__name__)

PATTERN_KEY = "onnxq.pattern"
HARD_SIGMOID_OPSET = 6
HARD_SWISH_OPSET = 14
_ALPHA, _BETA = 1.0 / 6.0, 0.5
_FLOAT_DTYPES = frozenset({ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE})
#: HardSwish decompositions (c = Clip(x + 3, 0, 6)); the number of root operand orders of each.
_HARD_SWISH_FORMS = {"(x*c)/6": 1, "(x*c)*(1/6)": 2, "x*(c/6)": 2, "x*hardsigmoid(x)": 2}


def _shifted_relu6(op, x):
    """``Clip(x + 3, ·, ·)``, its output bound as ``clip`` (the bounds are checked in ``check``)."""
    return op.Clip(either(op.Add, x, near(3.0)), _allow_other_inputs=True, _outputs=["clip"])


def _clip_bounds(node: ir.Node) -> tuple[float, float] | None:
    """(min, max) of a Clip: attributes before opset 11, constant inputs from 11; None if not constant."""
    bounds = [node.attributes.get_float("min", -math.inf), node.attributes.get_float("max", math.inf)]
    for i, value in enumerate(node.inputs[1:3]):
        if value is not None:
            scalar = constant_scalar(value)
            if scalar is None:
                return None
            bounds[i] = scalar
    return bounds[0], bounds[1]


def _check_operands(x: ir.Value, clip: ir.Value | None, hard_sigmoid: ir.Value | None) -> pattern.MatchResult:
    result = pattern.MatchResult()
    if x.dtype is not None and x.dtype not in _FLOAT_DTYPES:
        return result.fail(f"HardSigmoid/HardSwish take float16/float/double, not {x.dtype}", x)
    if clip is not None:
        bounds = _clip_bounds(clip.producer())
        if bounds is None or abs(bounds[0]) > 1e-6 or not math.isclose(bounds[1], 6.0, rel_tol=1e-3):
            return result.fail(f"Clip bounds are {bounds}, not (0, 6)", clip)
    if hard_sigmoid is not None:
        node = hard_sigmoid.producer()
        alpha, beta = node.attributes.get_float("alpha", 0.2), node.attributes.get_float("beta", 0.5)
        if not (math.isclose(alpha, _ALPHA, rel_tol=1e-3) and math.isclose(beta, _BETA, rel_tol=1e-3)):
            return result.fail(f"HardSigmoid(alpha={alpha}, beta={beta}) is not HardSwish's", hard_sigmoid)
    return result


def _tag(value: ir.Value, tag: str) -> ir.Value:
    value.producer().metadata_props[PATTERN_KEY] = tag
    return value


class HardSwishRule(pattern.RewriteRuleClassBase):
    """A HardSwish decomposition → ``HardSwish(x)``; below opset 14 → tagged ``Mul(x, HardSigmoid(x))``."""

    def __init__(self, form: str, swap_root: bool, opset: int):
        super().__init__(name=f"HardSwish[{form}{',swapped' if swap_root else ''}]")
        self._form, self._swap_root, self._opset = form, swap_root, opset

    def pattern(self, op, x):
        def root(build, a, b):
            return build(b, a) if self._swap_root else build(a, b)

        if self._form == "x*hardsigmoid(x)":
            return root(op.Mul, x, op.HardSigmoid(x, _outputs=["hard_sigmoid"]))
        clip = _shifted_relu6(op, x)
        if self._form == "(x*c)/6":
            return op.Div(either(op.Mul, x, clip), near(6.0))
        if self._form == "(x*c)*(1/6)":
            return root(op.Mul, either(op.Mul, x, clip), near(1.0 / 6.0))
        gate = pattern.OrValue([op.Div(clip, near(6.0)), either(op.Mul, clip, near(1.0 / 6.0))])
        return root(op.Mul, x, gate)

    def check(self, context, x, clip=None, hard_sigmoid=None, **_) -> pattern.MatchResult:
        return _check_operands(x, clip, hard_sigmoid)

    def rewrite(self, op, x, **_):
        if self._opset >= HARD_SWISH_OPSET:
            return op.HardSwish(x)
        hard_sigmoid = _tag(op.HardSigmoid(x, alpha=_ALPHA, beta=_BETA), "hardswish")
        return _tag(op.Mul(x, hard_sigmoid), "hardswish")


class HardSigmoidRule(pattern.RewriteRuleClassBase):
    """``Clip(x + 3, 0, 6) / 6`` or ``· (1/6)`` → ``HardSigmoid(x, alpha=1/6, beta=0.5)``."""

    def __init__(self, variant: int):
        super().__init__(name=f"HardSigmoid[{variant}]")
        self._variant = variant

    def pattern(self, op, x):
        clip = _shifted_relu6(op, x)
        if self._variant == 0:
            return op.Div(clip, near(6.0))
        sixth = near(1.0 / 6.0)
        return op.Mul(clip, sixth) if self._variant == 1 else op.Mul(sixth, clip)

    def check(self, context, x, clip, **_) -> pattern.MatchResult:
        return _check_operands(x, clip, None)

    def rewrite(self, op, x, **_):
        return op.HardSigmoid(x, alpha=_ALPHA, beta=_BETA)


class GatedPattern(pattern.PatternBase):
    """``x · gate(x)`` (either order) for tagging: gate ``Sigmoid`` (SiLU) or HardSwish's ``HardSigmoid``."""

    def __init__(self, gate: str, swap_root: bool):
        super().__init__(name=f"{gate}-gated[{int(swap_root)}]")
        self._gate, self._swap_root = gate, swap_root

    def pattern(self, op, x):
        gate = getattr(op, self._gate)(x, _outputs=["gate"])
        return op.Mul(gate, x) if self._swap_root else op.Mul(x, gate)

    def check(self, context, x, gate, **_) -> pattern.MatchResult:
        return _check_operands(x, None, gate if self._gate == "HardSigmoid" else None)


def tag_patterns(model: ir.Model, patterns: list[tuple[pattern.PatternBase, str]]) -> int:
    """Tag the nodes of every match with ``onnxq.pattern``; return how many matches were newly tagged."""
    count = 0
    for node in list(ir.traversal.RecursiveGraphIterator(model.graph)):
        for candidate, tag in patterns:
            match = node.graph is not None and candidate.match(model, node.graph, node)
            if not match:
                continue
            fresh = any(n.metadata_props.get(PATTERN_KEY) != tag for n in match.nodes)
            for matched in match.nodes:
                matched.metadata_props[PATTERN_KEY] = tag
            count += int(fresh)
            break
    return count


@dataclass(frozen=True)
class FuseActivationsOptions:
    tag_silu: bool = True


@register_pass
class FuseActivationsPass(RewriteRulesPass):
    """Rules (c = ``Clip(x + 3, 0, 6)``, Clip bounds as inputs or attributes; Add/Mul in either order):

    1. ``x·c / 6``, ``x·c · (1/6)``, ``x · (c/6)``, ``x · (c·1/6)`` and ``x · HardSigmoid(x; α=1/6, β=½)``
       → ``HardSwish(x)`` at opset ≥ 14; below 14 the Clip forms become ``Mul(x, HardSigmoid(x))``.
    2. ``c / 6`` or ``c · (1/6)`` → ``HardSigmoid(x, alpha=1/6, beta=0.5)`` (opset ≥ 6).
    3. Below opset 14, ``x · HardSigmoid(x; α=1/6, β=½)`` is tagged ``onnxq.pattern = "hardswish"``.
    4. ``x · Sigmoid(x)`` is tagged ``onnxq.pattern = "silu"`` (option ``tag_silu``); nothing is rewritten.
       Tagging (3, 4) needs the gate to feed only that Mul, as a fused unit would.
    5. A Clip other than (0, 6), a shift other than 3, a divisor other than 6, or a gate on a different
       tensor than the one it multiplies, leaves the nodes alone. Only newly tagged pairs count.
    """

    name = "fuse-activations"
    summary = "fuse Clip-based HardSigmoid/HardSwish into the standard ops; tag SiLU and unfused HardSwish"
    Options = FuseActivationsOptions

    def _rule_sets(self, opset: int) -> list[pattern.RewriteRuleSet]:
        hard_swish = [
            HardSwishRule.rule(form, bool(swap), opset)
            for form, orders in _HARD_SWISH_FORMS.items()
            for swap in range(orders)
            if form != "x*hardsigmoid(x)" or opset >= HARD_SWISH_OPSET
        ]
        hard_sigmoid = [HardSigmoidRule.rule(variant) for variant in range(3)]
        # HardSwish first over the whole model, so x·(c/6) is one HardSwish and not HardSigmoid + Mul.
        return [pattern.RewriteRuleSet(hard_swish), pattern.RewriteRuleSet(hard_sigmoid)]

    def rule_set(self) -> pattern.RewriteRuleSet:
        """All rewrite rules as for an opset-14 model (``apply`` runs them in two phases, then tags)."""
        return pattern.RewriteRuleSet([rule for rules in self._rule_sets(HARD_SWISH_OPSET) for rule in rules])

    def apply(self, model: ir.Model) -> int:
        try:
            opset = runtime_compat.default_opset(model)
        except OpsetError:
            return 0
        count = 0
        if opset >= HARD_SIGMOID_OPSET:
            count += sum(rules.apply_to_model(model) for rules in self._rule_sets(opset))
        tags: list[tuple[pattern.PatternBase, str]] = []
        if opset < HARD_SWISH_OPSET:
            tags += [(GatedPattern("HardSigmoid", bool(swap)), "hardswish") for swap in range(2)]
        if self.options.tag_silu:
            tags += [(GatedPattern("Sigmoid", bool(swap)), "silu") for swap in range(2)]
        tagged = tag_patterns(model, tags)
        logger.debug("%s: %d rewrite(s), %d newly tagged pattern(s)", self.name, count, tagged)
        return count + tagged

