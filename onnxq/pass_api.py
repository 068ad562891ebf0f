"""The pass interface and registry.

A pass is an ``onnx_ir.passes.InPlacePass`` with a stable ``name`` ("fold-bn"), a one-line ``summary`` and
typed ``Options`` (a frozen dataclass), so the CLI can list passes and run text pipelines
(``--passes fold-constants,fold-bn{...},dce``). Subclasses implement ``apply(model) -> int``, the number of
rewrites they made; the base turns that into a ``PassResult`` and keeps the count for the pipeline's log.

Passes written as onnxscript pattern rules subclass ``RewriteRulesPass`` and provide ``rule_set()``.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, ClassVar

import onnx_ir as ir

from onnxq.errors import OptionError, UnknownNameError


@dataclasses.dataclass(frozen=True)
class NoOptions:
    """Options of a pass that takes none."""


class OnnxqPass(ir.passes.InPlacePass):
    """Base of every onnxq pass: name, summary, typed options and a rewrite count."""

    name: ClassVar[str]
    summary: ClassVar[str]
    Options: ClassVar[type] = NoOptions

    def __init__(self, options: Any = None, **kwargs: Any):
        super().__init__()
        if options is not None and kwargs:
            raise TypeError("give either an Options instance or keyword options, not both")
        try:
            self.options = options if options is not None else self.Options(**kwargs)
        except TypeError as exc:
            raise OptionError(f"pass '{self.name}': {exc}") from None
        self.rewrites = 0

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self.rewrites = int(self.apply(model))
        return ir.passes.PassResult(model, modified=self.rewrites > 0)

    def apply(self, model: ir.Model) -> int:
        """Rewrite ``model`` in place; return how many rewrites were made."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.options})"


class RewriteRulesPass(OnnxqPass):
    """A pass made of onnxscript ``RewriteRule``s; the count is the number of matches rewritten."""

    def rule_set(self):  # -> onnxscript.rewriter.RewriteRuleSet
        raise NotImplementedError

    def apply(self, model: ir.Model) -> int:
        return self.rule_set().apply_to_model(model)


_REGISTRY: dict[str, type[OnnxqPass]] = {}


def register_pass(cls: type[OnnxqPass]) -> type[OnnxqPass]:
    """Class decorator: make a pass available by its ``name``."""
    for attr in ("name", "summary"):
        if not isinstance(getattr(cls, attr, None), str) or not getattr(cls, attr):
            raise TypeError(f"{cls.__name__} must define a non-empty class attribute '{attr}'")
    if not dataclasses.is_dataclass(cls.Options):
        raise TypeError(f"{cls.__name__}.Options must be a dataclass")
    existing = _REGISTRY.get(cls.name)
    if existing is not None and existing is not cls:
        raise TypeError(f"pass name '{cls.name}' is taken by {existing.__name__}")
    _REGISTRY[cls.name] = cls
    return cls


def _load_builtin_passes() -> None:
    import onnxq.passes  # noqa: F401 - importing registers every built-in pass


def available_passes() -> dict[str, type[OnnxqPass]]:
    _load_builtin_passes()
    return dict(sorted(_REGISTRY.items()))


def get_pass(name: str) -> type[OnnxqPass]:
    passes = available_passes()
    if name not in passes:
        raise UnknownNameError("pass", name, passes)
    return passes[name]


def option_fields(cls: type[OnnxqPass]) -> list[tuple[str, str, Any]]:
    """(name, type, default) of a pass's options, for ``onnxq passes``."""
    hints = typing.get_type_hints(cls.Options)
    rows = []
    for f in dataclasses.fields(cls.Options):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None
        )
        rows.append((f.name, getattr(hints[f.name], "__name__", str(hints[f.name])), default))
    return rows


def coerce_option(cls: type[OnnxqPass], key: str, text: str) -> Any:
    """Turn a text option value from a pipeline string into the field's type."""
    hints = typing.get_type_hints(cls.Options)
    names = [f.name for f in dataclasses.fields(cls.Options)]
    key = key.replace("-", "_")
    if key not in names:
        raise UnknownNameError(f"option of pass '{cls.name}'", key, names or ["(none)"])
    kind = hints[key]
    try:
        if kind is bool:
            if text.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError(text)
            return text.lower() in ("1", "true", "yes")
        if kind in (int, float, str):
            return kind(text)
    except ValueError:
        raise OptionError(f"pass '{cls.name}' option '{key}' expects {kind.__name__}, got '{text}'") from None
    raise OptionError(f"pass '{cls.name}' option '{key}' cannot be set from text; use the Python API")
