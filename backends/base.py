"""The backend interface: a runtime that runs models, with one capability table per target variant.

Like Polygraphy's runners, public methods validate state and inputs and then call ``_impl`` methods a
backend overrides; heavy SDKs are imported lazily inside the backend's package, so ``import onnxq`` works
without them and the error when one is missing says what to install.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import numpy as np

from onnxq.backends.capability import CapabilityTable
from onnxq.errors import UnknownNameError


class Backend:
    """A runtime target. Subclasses set ``name``, ``variants`` and implement the ``_impl`` methods."""

    name: str = ""
    #: variant name -> one-line description; the first is the default
    variants: Mapping[str, str] = {}

    def default_variant(self) -> str:
        return next(iter(self.variants))

    def check_variant(self, variant: str) -> str:
        variant = variant or self.default_variant()
        if variant not in self.variants:
            raise UnknownNameError(f"{self.name} target variant", variant, self.variants)
        return variant

    def table(self, variant: str = "") -> CapabilityTable:
        return self._table_impl(self.check_variant(variant))

    def session(self, model: bytes | str, *, optimize: bool = True):
        """A session of the target runtime on a serialized model or a path."""
        return self._session_impl(model, optimize=optimize)

    def run(self, session, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, dict(feeds)), strict=True))

    def time_sessions(self, sessions: list, feeds: Mapping[str, np.ndarray], *, rounds: int = 20) -> list[float]:
        """Median latency (s) of each session, measured interleaved so machine noise hits all alike."""
        for session in sessions:  # warm-up
            self.run(session, feeds)
        samples: list[list[float]] = [[] for _ in sessions]
        for _ in range(rounds):
            for i, session in enumerate(sessions):
                start = time.perf_counter()
                self.run(session, feeds)
                samples[i].append(time.perf_counter() - start)
        return [float(np.median(s)) for s in samples]

    # -- to implement -------------------------------------------------------------------------------
    def _table_impl(self, variant: str) -> CapabilityTable:
        raise NotImplementedError

    def _session_impl(self, model: bytes | str, *, optimize: bool):
        raise NotImplementedError
