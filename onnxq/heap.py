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

logger = logging.getLogger(__name__)


@functools.cache
def _malloc_trim():
    """glibc's ``malloc_trim``, or None (musl, macOS, Windows)."""
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


def release(*, collect: bool = True) -> None:
    """Free unreachable cycles (``collect``) and return the heap's free pages to the system (glibc)."""
    if collect:
        gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
