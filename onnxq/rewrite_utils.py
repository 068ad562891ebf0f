"""Helpers shared by the pattern-rewrite passes: constants in patterns, commutative matching, dry runs,
and raising the opset only when a rule would actually fire.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir
import onnxscript.optimizer
from onnxscript.rewriter import pattern

from onnxq import runtime_compat
from onnxq.errors import OpsetError

logger = logging.getLogger(__name__)



def constant_array(value: ir.Value | None) -> np.ndarray | None:
    """The constant content of ``value`` (initializer or Constant output), else None.

    A graph input that has an initializer is a default the caller may override: not a constant.
    """
    if value is None or value.is_graph_input() or value.const_value is None:
        return None
    try:
        return value.const_value.numpy()
    except FileNotFoundError:  # external data that is not there
        return None


def constant_scalar(value: ir.Value | None) -> float | None:
    """The single element of a constant of size 1 (any rank), else None."""
    array = constant_array(value)
    if array is None or array.size != 1:
        return None
    return float(array.reshape(()).item())


def is_close_scalar(value: ir.Value | None, expected: float, rtol: float) -> bool:
    scalar = constant_scalar(value)
    return scalar is not None and abs(scalar - expected) <= rtol * abs(expected)


def either(build: Any, a: Any, b: Any) -> Any:
    """Pattern for a commutative binary op with operands in either order: ``build(a, b) | build(b, a)``.

    Cheaper than ``RewriteRuleSet(commute=True)``, which multiplies the whole pattern by 2 per op. The
    matcher commits to the first alternative that matches, so at least one operand must be a computed
    pattern (or a ``near`` constant): with two plain variables the first order always "matches".
    """
    return pattern.OrValue([build(a, b), build(b, a)])


def near(value: float, rtol: float = 1e-3) -> Any:
    """Pattern for a constant equal to ``value`` within ``rtol``, stored as a scalar or a 1-element vector."""
    return pattern.OrValue([pattern.Constant(value, rel_tol=rtol), pattern.Constant([value], rel_tol=rtol)])


def any_rule_matches(model: ir.Model, rules: Iterable[pattern.RewriteRule]) -> bool:
    """Dry run: does any rule match (checks included) anywhere in the model? Changes nothing."""
    rules = list(rules)
    onnxscript.optimizer.basic_constant_propagation(ir.traversal.RecursiveGraphIterator(model.graph))
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node.graph is None:
            continue
        if any(rule.match(model, node.graph, node) for rule in rules):
            return True
    return False


def ensure_opset_for_rules(
    model: ir.Model, rules: Iterable[pattern.RewriteRule], target: int, *, allow_upgrade: bool, pass_name: str
) -> bool:
    """Whether the model is at default opset ≥ ``target``, raising it there first when allowed and useful.

    The upgrade happens only when ``allow_upgrade`` and a dry run finds a match, so models the pass would
    not touch are never converted. A failed conversion is a warning and leaves the model as it was.
    """
    try:
        current = runtime_compat.default_opset(model)
    except OpsetError:
        return False
    if current >= target:
        return True
    if not allow_upgrade:
        logger.debug("%s: model is at opset %d < %d and upgrade_opset is off", pass_name, current, target)
        return False
    if not any_rule_matches(model, rules):
        return False
    try:
        runtime_compat.upgrade_opset(model, target)
    except OpsetError as exc:
        logger.warning("%s: pattern found, but the model stays at opset %d: %s", pass_name, current, exc)
        return False
    return True


def apply_at_opset(
    model: ir.Model,
    rule_sets: Sequence[pattern.RewriteRuleSet],
    target: int,
    *,
    allow_upgrade: bool,
    pass_name: str,
) -> int:
    """Apply ``rule_sets`` one after the other once the model is at opset ≥ ``target`` (see
    ``ensure_opset_for_rules``); return the number of rewrites."""
    before = model.opset_imports.get("")
    rules = [rule for rule_set in rule_sets for rule in rule_set]
    if not ensure_opset_for_rules(model, rules, target, allow_upgrade=allow_upgrade, pass_name=pass_name):
        return 0
    count = sum(rule_set.apply_to_model(model) for rule_set in rule_sets)
    if count == 0 and model.opset_imports.get("") != before:
        logger.warning(
            "%s: converted the model to opset %d, but the conversion undid the match", pass_name, target
        )
    return count
