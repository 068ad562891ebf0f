"""Keep sympy out of memory until something needs it.

onnx_ir imports sympy at module level (its core, and ``onnx_ir._symbolic_shapes``, which builds a table of
sympy functions on import) but calls it only to evaluate a symbolic dimension's *expression* ("N+1"),
which onnxq never does: names such as "batch" stay strings. sympy (with mpmath) is 33 MiB of resident
memory: deferring it took a quantize run's import floor from 130 to 97 MiB.

So both modules start as placeholders that import the real module on the first attribute they do not
have. ``importlib.util.LazyLoader`` cannot do this here: on Python 3.11 the ``import`` statement reads a
module's ``__spec__``, which makes a LazyLoader module load at once. Harmless where it cannot apply: if
either module was already imported or onnx_ir's layout changes, nothing is deferred.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path

#: onnx_ir's module that reads sympy attributes at import (it is used only inside SymbolicDim)
SYMPY_USER = "onnx_ir._symbolic_shapes"


class DeferredModule(types.ModuleType):
    """Stands in for a module until an attribute it lacks is asked for; then imports the real one and
    forwards to it (the real module replaces this one in ``sys.modules``; holders of this one keep
    working)."""

    def __init__(self, spec) -> None:
        super().__init__(spec.name)
        self.__spec__ = spec
        self.__file__ = spec.origin

    def __getattr__(self, attribute: str):
        name = self.__spec__.name
        if sys.modules.get(name) is self:
            del sys.modules[name]
        real = importlib.import_module(name)
        return getattr(real, attribute)


def defer_symbolic_shapes() -> bool:
    """Put placeholders for sympy and ``onnx_ir._symbolic_shapes`` in ``sys.modules`` before onnx_ir is
    imported; True if both were deferred."""
    if any(name in sys.modules for name in ("sympy", SYMPY_USER, "onnx_ir")):
        return False
    # find_spec locates a top-level module without importing it
    sympy, package = importlib.util.find_spec("sympy"), importlib.util.find_spec("onnx_ir")
    if sympy is None or package is None or not package.submodule_search_locations:
        return False
    source = Path(next(iter(package.submodule_search_locations))) / "_symbolic_shapes.py"
    user = importlib.util.spec_from_file_location(SYMPY_USER, source) if source.is_file() else None
    if user is None:
        return False
    sys.modules["sympy"] = DeferredModule(sympy)
    sys.modules[SYMPY_USER] = DeferredModule(user)
    return True
