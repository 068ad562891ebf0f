"""Give freed memory back to the system between phases that allocate much.

CPython frees cyclic garbage (an ``ir.Model`` is full of cycles: nodes and values point at each other) only
when its collector runs, and glibc keeps freed blocks in its heap for reuse: after loading a model, a
calibration pass or a verification round, neither returns memory soon by itself, so the next phase's peak
stacks on the last one's leftovers (efficientnet_lite0: ~35 MiB after loading). ``release`` frees both.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import logging
import os

logger = logging.getLogger(__name__)


@functools.cache
def _malloc_trim():
    """glibc's ``malloc_trim``, or None (musl, macOS, Windows)."""
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


_resident_after_collect = [0]


def release(*, collect: bool | None = True, grown_mib: float = 24) -> None:
    """Free unreachable cycles (``collect``) and return the heap's free pages to the system (glibc).

    ``collect=None``: collect only if resident memory grew by ``grown_mib`` since the last collection. A
    full collection costs 30-50 ms with a model loaded; after every one of 60 sensitivity probes that made
    EfficientNet-Lite0's quantize 33% slower, while the probes' garbage (candidates are cyclic) otherwise
    waits for the collector's own schedule, which let it pile up by tens of MiB."""
    if collect is None:
        resident = _resident_bytes()
        collect = resident is None or resident - _resident_after_collect[0] >= grown_mib * 2**20
    if collect:
        gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
    if collect:
        _resident_after_collect[0] = _resident_bytes() or 0


def _resident_bytes() -> int | None:
    """Resident memory of this process (Linux), else None."""
    try:
        with open("/proc/self/statm", "rb") as stream:
            return int(stream.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class TrimWhenGrown:
    """Call once per step of a streamed loop: returns the C heap's free pages to the system whenever resident
    memory has grown by ``grown_mib`` since the last trim (or since this was made).

    Calibration sessions run without a memory arena, so ONNX Runtime takes each activation from the C heap
    and frees it there. The next sample's activations do not all fit the holes the last one left, so the
    heap's resident size ratchets up over the first samples: PP-OCR det's calibration went from 364 MiB
    after one sample to 438 after eight, keeping ~180 MiB of freed memory between samples. Trimming costs
    page faults on what it gave back, so it pays only when a step left much behind: PP-OCR det is trimmed
    after every sample (calibration's peak 462 -> 347 MiB, +1.6 s over 24 samples); EfficientNet-Lite0,
    which leaves ~23 MiB, at most once."""

    def __init__(self, grown_mib: float = 32) -> None:
        self.grown = grown_mib * 2**20
        self.mark = _resident_bytes() or 0
        self.trims = 0

    def __call__(self) -> bool:
        resident = _resident_bytes()
        trim = _malloc_trim()
        if resident is None or trim is None or resident - self.mark < self.grown:
            return False
        trim(0)
        self.mark = _resident_bytes() or 0
        self.trims += 1
        return True
