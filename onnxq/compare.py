"""``onnxq compare A B --data DATA``: how far B is from A, output by output, and how much faster.

Per float output: relative L2 error and SQNR; for classifier-like outputs (last axis > 1, e.g. [N, C]
logits) also top-1 agreement. A runs on ONNX Runtime CPU (the reference), B on the target. Latency of both,
measured interleaved in one process, one thread each, where the target runs on this machine for real (not
on a simulator); the ratio is A's latency over B's (> 1: B is faster).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from onnxq.backends.registry import Target
from onnxq.quant import metrics


@dataclass
class OutputComparison:
    name: str
    relative_l2: float
    sqnr_db: float
    top1_agreement: float | None = None


@dataclass
class Comparison:
    samples: int
    outputs: list[OutputComparison] = field(default_factory=list)
    latency_a_ms: float | None = None
    latency_b_ms: float | None = None

    @property
    def speedup(self) -> float | None:
        if self.latency_a_ms and self.latency_b_ms:
            return self.latency_a_ms / self.latency_b_ms
        return None


def compare_models(
    a: bytes | str, b: bytes | str, samples: Iterable[Mapping[str, np.ndarray]], target: Target, *, rounds: int = 20
) -> Comparison:
    backend = target.backend
    session_a, session_b = backend.reference_session(a), target.session(b)
    samples = list(samples)
    out_a = [backend.run(session_a, s) for s in samples]
    out_b = [backend.run(session_b, s) for s in samples]
    result = Comparison(len(samples))
    for name in out_a[0]:
        if name not in out_b[0] or not np.issubdtype(np.asarray(out_a[0][name]).dtype, np.floating):
            continue
        ref, got = metrics.stacked(out_a, name), metrics.stacked(out_b, name)
        shape = np.shape(out_a[0][name])
        top1 = None
        if len(shape) >= 2 and shape[-1] > 1:
            top1 = metrics.top1_agreement([o[name] for o in out_a], [o[name] for o in out_b])
        result.outputs.append(OutputComparison(name, metrics.relative_l2(ref, got), metrics.sqnr_db(ref, got), top1))
    if rounds and samples and not backend.simulated:
        del session_a, session_b  # timed on sessions of their own, one thread each (base.TIMING_THREADS)
        la, lb = backend.time_models([a, b], samples[0], variant=target.variant, rounds=rounds)
        result.latency_a_ms, result.latency_b_ms = la * 1e3, lb * 1e3
    return result
