"""Host allocator settings for CPU training and scoring: keep freed memory for the next allocation.

glibc's malloc serves a request above its mmap threshold (adaptive, at most 32 MiB) with a fresh mmap and
returns it to the kernel on free, so a tensor that size is page-faulted and zeroed again at every step.
Scoring's logits and the larger activations sit right there. Measured on a 2-core Xeon (AMX, bf16):
a [8192, 128] x [128, 2048] bf16 matmul took 11.3 ms against 2.3 ms once its output's memory was reused;
compiled scoring of the demo-scale model went from 127k to 163k tokens/s, a compiled one-thread training
step from 200-206 to 165-175 ms (docs/train-speed.md). PyTorch's CPU tuning guide gets the same from
jemalloc/tcmalloc; these two glibc settings do it without a preload. A user's own MALLOC_* settings or a
preloaded allocator are left alone.
"""
from __future__ import annotations

import ctypes
import os

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc <malloc.h>
KEEP_BYTES = 1 << 30  # requests below this come from the heap; up to this much freed memory stays mapped
PRELOADED = ("jemalloc", "tcmalloc", "mimalloc")

_applied: str | None = None


def keep_freed_memory(env=os.environ) -> str:
    """Raise glibc's mmap and trim thresholds to KEEP_BYTES (once a process); returns what was done, for the
    run record."""
    global _applied
    if _applied is not None:
        return _applied
    preloaded = [name for name in PRELOADED if name in env.get("LD_PRELOAD", "")]
    if preloaded:
        _applied = f"left alone: {preloaded[0]} preloaded"
    elif env.get("MALLOC_MMAP_THRESHOLD_") or env.get("MALLOC_TRIM_THRESHOLD_"):
        _applied = "left alone: MALLOC_*_THRESHOLD_ set in the environment"
    else:
        _applied = _mallopt()
    return _applied


def _mallopt() -> str:
    try:
        # the C library this process already has loaded: ctypes.util.find_library would run `ldconfig -p`,
        # a child process whose command line, until its exec, is the engine's own
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to set
        return "left alone: no glibc mallopt"
    if mallopt(M_MMAP_THRESHOLD, KEEP_BYTES) != 1 or mallopt(M_TRIM_THRESHOLD, KEEP_BYTES) != 1:
        return "left alone: mallopt refused"
    return f"glibc mmap/trim thresholds {KEEP_BYTES >> 20} MiB"
