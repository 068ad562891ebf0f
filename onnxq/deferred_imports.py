"""Keep sympy out of memory until something needs it.

onnx_ir imports sympy at module level (its core, and ``onnx_ir._symbolic_shapes``, which builds a table of
sympy functions on import) but calls it only to evaluate a symbolic dimension's *expression* ("N+1"),
which onnxq never does: names such as "batch" stay strings. sympy (with mpmath) is 33 MiB of resident
memory: deferring it took a quantize run's import floor from 130 to 97 MiB.

So both modules start as placeholders that import the real module on the first attribute they do not
have. ``importlib.util.LazyLoader`` cannot do this here: on Python 3.11 the ``import`` statement reads a
module's ``__spec__``, which makes a LazyLoader module load at once. Harmless where it cannot apply: if
either module was already imported or onnx_ir's layout changes, nothing is deferred.

``onnx.reference`` is deferred the same way (``defer_reference_evaluator``): onnxscript's constant folder
imports it at module level (11 MiB resident) but calls it only to evaluate a node that ``onnxq.small_ops``
does not; for the shape arithmetic of exported models (pads, reshapes) nothing loads it.
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
    working). ``group``: modules deferred together (a package and its submodule), all imported then.
    ``package``: the placeholder has the package's ``__path__``, so a submodule import (``from
    onnx.reference.op_run import ...``) loads just that submodule, which the package reuses once it is
    imported; without it the import system would read ``__path__``, import the package (and with it the
    submodule) and then load the submodule a second time."""

    def __init__(self, spec, group: tuple[str, ...] = (), *, package: bool = False) -> None:
        super().__init__(spec.name)
        self.__spec__ = spec
        self.__file__ = spec.origin
        if package:
            self.__path__ = list(spec.submodule_search_locations)
        self._deferred_group = group or (spec.name,)

    def __getattr__(self, attribute: str):
        names = self.__dict__["_deferred_group"]
        for name in names:
            if isinstance(sys.modules.get(name), DeferredModule):
                del sys.modules[name]
        for name in names:
            importlib.import_module(name)
        return getattr(sys.modules[self.__spec__.name], attribute)


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


#: onnx's reference implementation and its op library, deferred together
REFERENCE_MODULES = ("onnx.reference", "onnx.reference.ops")


def defer_reference_evaluator() -> bool:
    """Put placeholders for ``onnx.reference`` and ``onnx.reference.ops`` in ``sys.modules`` (and on the
    ``onnx`` package) before onnxscript imports them; True if deferred."""
    if any(name in sys.modules for name in REFERENCE_MODULES):
        return False
    import onnx

    if hasattr(onnx, "reference"):
        return False
    root = Path(onnx.__file__).parent / "reference"
    specs = []
    for name, folder in zip(REFERENCE_MODULES, (root, root / "ops"), strict=True):
        init = folder / "__init__.py"
        if not init.is_file():
            return False
        specs.append(importlib.util.spec_from_file_location(
            name, init, submodule_search_locations=[str(folder)]))
    placeholders = [DeferredModule(spec, REFERENCE_MODULES, package=True) for spec in specs]
    for name, placeholder in zip(REFERENCE_MODULES, placeholders, strict=True):
        sys.modules[name] = placeholder
    onnx.reference = placeholders[0]  # ``import onnx.reference.ops`` binds ``onnx``; uses read it from there
    return True
