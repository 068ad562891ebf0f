"""The backend interface: a runtime that runs models, with one capability table per target variant.

Like Polygraphy's runners, public methods validate state and inputs and then call ``_impl`` methods a
backend overrides; heavy SDKs are imported lazily inside the backend's package, so ``import onnxq`` works
without them and the error when one is missing says what to install.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping

import numpy as np

from onnxq import heap
from onnxq.backends.capability import CapabilityTable
from onnxq.errors import UnknownNameError
from onnxq.numerics import run_owned

#: Timing: a sub-millisecond model runs in blocks of about this many seconds per sample, at most MAX_BLOCK runs.
BLOCK_S = 0.005
MAX_BLOCK = 200
#: Intra-op threads of the sessions a speed comparison times. Sessions alive in one process must not own
#: thread pools: an idle pool's threads spin for their next job and take the cores the other session is
#: running on. On the 2-core development machine that put one FP32 YOLOv8n at 14 to 42 ms per run depending
#: on its neighbours, and inverted speed-ups; single-threaded sessions (no pool) agreed with each model
#: timed alone in its own process within 5%, and with two threads even one model alone per process was
#: bimodal (10.8 or 20.9 ms). The figure is a per-core speed-up, and says so.
TIMING_THREADS = 1


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

    #: the runtime simulates the device here: latency says nothing (no speed-up claims) and sessions are
    #: slow, so the fall-back search runs on the quick session and only the final model on the simulator
    simulated: bool = False

    def session(self, model: bytes | str, *, variant: str = "", quick: bool = False):
        """A session of the target runtime on a serialized model or a path.

        ``quick`` asks for the cheapest session that computes the same numbers (sensitivity probes run
        dozens): no graph optimizations on ORT; the CPU EP as a stand-in for a simulated accelerator.
        """
        return self._session_impl(model, self.check_variant(variant), quick=quick)

    def timing_session(self, model: bytes | str, *, variant: str = "", optimized: bool = False):
        """A session to time against another one in this process (``TIMING_THREADS`` intra-op threads).
        ``optimized``: ``model`` was written by ``optimize_for_timing`` (its graph optimizations are done)."""
        return self._timing_session_impl(model, self.check_variant(variant), optimized=optimized)

    def optimize_for_timing(self, model: str, destination: str, *, variant: str = "") -> str | None:
        """Write the model file ``model`` to ``destination`` as a timing session runs it, graph optimizations
        applied (the runtime's offline mode), and return ``destination``; None where the runtime cannot.

        A session on the written model only maps its weights, where one on the original also copies them
        while it optimizes: an FP32 EfficientNet-Lite0 session costs +49 MiB instead of +73, at the same
        latency. So a caller that times a model late in a long run (the speed check of ``onnxq quantize``)
        writes it early, while the process holds little, and times it with ``optimized=True``."""
        return self._optimize_for_timing_impl(model, destination, self.check_variant(variant))

    def reference_session(self, model: bytes | str):
        """A session for the FP32 reference outputs (ORT CPU, full optimizations, whatever the target)."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])

    def placement(self, model: bytes | str, *, variant: str = "", total_nodes: int = 0):
        """Where the target put the model's nodes (None: everything runs where the session runs)."""
        return None

    def run(self, session, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The outputs by name, owning their memory (``onnxq.numerics.run_owned`` says why)."""
        return run_owned(session, feeds)

    def time_models(self, models: list[bytes | str], feeds: Mapping[str, np.ndarray], *, variant: str = "",
                    rounds: int = 20, optimized: Collection[str] = ()) -> list[float]:
        """Median latency (s) of each model on a timing session of its own, one session alive at a time.

        Sessions side by side would cost the weights of all of them at once (the speed check of ``onnxq
        quantize`` on MiniLM: +63 MiB, its peak). Two models are timed in the order A B B A, a session per
        stretch, so a machine that slows down or speeds up steadily shifts both alike; more models, in
        order twice. Each stretch warms its session up first. A sub-millisecond model is timed in blocks of
        runs (each block about ``BLOCK_S``): one run of a 0.1 ms model is at the mercy of the interpreter and
        the scheduler, and 20 single runs of two such models measured anything from 0.6x to 1.1x of each
        other on a busy machine.
        """
        feeds = dict(feeds)  # timed runs discard their outputs: no copy (``run``) in the timed loop
        order = [0, 1, 1, 0] if len(models) == 2 else list(range(len(models))) * 2
        per_stretch = max(1, rounds * len(models) // len(order))
        samples: list[list[float]] = [[] for _ in models]
        current, session, block = None, None, 1
        for index in order:
            if index != current:
                session = None  # the last stretch's session goes before the next one comes, and so does
                heap.release(collect=False)  # its memory, which the C heap would otherwise keep (+26 MiB)
                model = models[index]
                session = self.timing_session(model, variant=variant,
                                              optimized=isinstance(model, str) and model in optimized)
                current, block = index, self._block_size(session, feeds)
            for _ in range(per_stretch):
                start = time.perf_counter()
                for _ in range(block):
                    session.run(None, feeds)
                samples[index].append((time.perf_counter() - start) / block)
        return [float(np.median(s)) for s in samples]

    def _block_size(self, session, feeds: Mapping[str, np.ndarray]) -> int:
        """Warm ``session`` up; how many runs make a block of about ``BLOCK_S``."""
        session.run(None, feeds)
        start = time.perf_counter()
        session.run(None, feeds)
        single = time.perf_counter() - start
        return int(min(MAX_BLOCK, max(1, BLOCK_S / max(single, 1e-7))))

    #: whether ``export`` lowers models to an artefact of this runtime
    exportable: bool = False

    def export(self, model_path, out_dir, *, variant: str = "", allow_cpu_fallback: bool = False, feeds=None):
        """Lower a quantized model to the runtime's artefact in ``out_dir``; returns a report object."""
        from onnxq.errors import OptionError

        raise OptionError(f"target '{self.name}' has no export step (its models run as ONNX); exportable "
                          f"targets: qnn")

    # -- to implement -------------------------------------------------------------------------------
    def _table_impl(self, variant: str) -> CapabilityTable:
        raise NotImplementedError

    def _session_impl(self, model: bytes | str, variant: str, *, quick: bool):
        raise NotImplementedError

    def _timing_session_impl(self, model: bytes | str, variant: str, *, optimized: bool):
        return self._session_impl(model, variant, quick=False)

    def _optimize_for_timing_impl(self, model: str, destination: str, variant: str) -> str | None:
        return None
