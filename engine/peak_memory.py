"""Peak memory of one call, measured on the device it runs on (not estimated).

CUDA / NPU: the caching allocator's peak counter. CPU: the profiler's allocation events, summed in
time order (each event is +bytes on malloc, -bytes on free), so the peak is exact for torch
allocations made during the call, including autograd's backward.
"""
from __future__ import annotations

from typing import Callable

import torch


def peak_memory_bytes(fn: Callable[[], object], device: torch.device | str = "cpu") -> int:
    """Bytes allocated at the peak of `fn()`, above what was allocated when it started."""
    device = torch.device(device)
    if device.type in ("cuda", "npu"):
        mod = getattr(torch, device.type)
        mod.synchronize(device)
        mod.reset_peak_memory_stats(device)
        base = mod.memory_allocated(device)
        fn()
        mod.synchronize(device)
        return int(mod.max_memory_allocated(device) - base)
    if device.type != "cpu":
        raise ValueError(f"device: peak memory is measured on cpu, cuda or npu, not {device.type!r}")
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]" and e.device_type().name == "CPU")
    current = peak = 0
    for _, nbytes in events:
        current += nbytes
        peak = max(peak, current)
    return int(peak)
