"""Targets by name: ``backend[:variant]`` (``ort``, ``ort:arm64``, ``qnn:sm8550``, ``coreml:ios18``).

Backends are imported lazily, so a missing SDK only matters when its target is asked for.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from onnxq.backends.base import Backend
from onnxq.backends.capability import CapabilityTable
from onnxq.errors import UnknownNameError

#: backend name -> "module:attribute" of its Backend class
BACKENDS: dict[str, str] = {
    "ort": "onnxq.backends.onnxruntime:OnnxRuntimeBackend",
    "qnn": "onnxq.backends.qnn:QnnBackend",
}


@dataclass(frozen=True)
class Target:
    backend: Backend
    variant: str

    @property
    def name(self) -> str:
        return f"{self.backend.name}:{self.variant}"

    def table(self) -> CapabilityTable:
        return self.backend.table(self.variant)

    def session(self, model: bytes | str, *, quick: bool = False):
        return self.backend.session(model, variant=self.variant, quick=quick)

    def timing_session(self, model: bytes | str, *, optimized: bool = False):
        return self.backend.timing_session(model, variant=self.variant, optimized=optimized)


def get_backend(name: str) -> Backend:
    if name not in BACKENDS:
        raise UnknownNameError("target", name, BACKENDS)
    module_name, _, attribute = BACKENDS[name].partition(":")
    return getattr(importlib.import_module(module_name), attribute)()


def resolve_target(text: str) -> Target:
    """Parse ``backend[:variant]`` and validate both parts (the error lists the valid choices)."""
    name, _, variant = text.strip().partition(":")
    backend = get_backend(name)
    return Target(backend, backend.check_variant(variant))


def all_targets() -> list[Target]:
    return [Target(b, v) for b in (get_backend(n) for n in BACKENDS) for v in b.variants]
