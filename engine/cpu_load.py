"""How busy this machine's CPUs are now. The 1-minute load average is the wrong measure for choosing
threads: it decays over a minute after work ends (it read 1.7-1.9 on an idle 2-core machine seconds after a
benchmark), so a choice made from it runs a whole demo or benchmark single-threaded on idle cores."""
from __future__ import annotations

import os
import time


def busy_cores(seconds: float = 1.0) -> float | None:
    """Cores busy with other work now: the non-idle share of /proc/stat's CPU time over `seconds` (the caller
    sleeps meanwhile), times the cores; None where /proc/stat cannot be read."""
    def sample():
        with open("/proc/stat") as f:
            user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in f.readline().split()[1:9])
        return user + nice + system + idle + iowait + irq + softirq + steal, idle + iowait
    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except (OSError, ValueError):
        return None
    return (1 - (idle1 - idle0) / max(1, total1 - total0)) * (os.cpu_count() or 1)


def too_busy_for_threads(cores: int, busy: float | None = None) -> str | None:
    """Why a process here should take one thread, or None: other work keeps more than `cores` - 0.5 busy
    (two threads that wait for each other at every operator then run several times slower than one).
    `busy`: cores busy now, measured when not given; the load average only where /proc/stat is unreadable."""
    if cores < 2:
        return None
    busy = busy_cores() if busy is None else busy
    if busy is None:
        busy = os.getloadavg()[0]
        what = f"load average {busy:.1f} on {cores} cores"
    else:
        what = f"{busy:.1f} of {cores} cores busy with other work"
    return what if busy > cores - 0.5 else None
