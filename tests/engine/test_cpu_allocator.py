"""engine/cpu_allocator.py: large CPU tensors reuse freed memory instead of being page-faulted in again."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from engine import cpu_allocator

REPO = Path(__file__).resolve().parents[2]

# Minor page faults of ten 64 MiB allocations (above glibc's largest adaptive mmap threshold, 32 MiB), before
# and after keep_freed_memory(), in a fresh process: mallopt is process-wide.
PROBE = """
import resource, torch
from engine import cpu_allocator
def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        torch.empty(64 << 18, dtype=torch.float32).fill_(1.0)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
default = faults()
done = cpu_allocator.keep_freed_memory({})
faults()  # the first allocation after the change grows the heap once
print(default, faults(), done)
"""


def test_freed_memory_is_reused_without_page_faults():
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True, check=True)
    default, kept, done = out.stdout.split(maxsplit=2)
    assert done.startswith("glibc mmap/trim thresholds"), done
    assert int(default) > 10 * 16_000 * 0.9  # every allocation faulted its 16,384 pages in again
    assert int(kept) < int(default) / 20, (default, kept)


def test_setting_it_starts_no_process():
    """A child of the engine, until its exec, names the run directory on its command line as the engine does:
    tests/chaos/test_worker_kill.py saw two processes there at once when the setting ran `ldconfig -p`."""
    probe = ("import subprocess\n"
             "def refuse(*a, **k): raise AssertionError(f'a process started: {a}')\n"
             "subprocess.Popen.__init__ = refuse\n"
             "from engine import cpu_allocator\n"
             "print(cpu_allocator.keep_freed_memory({}))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("glibc mmap/trim thresholds"), out.stderr


def test_a_users_allocator_settings_are_left_alone(monkeypatch):
    monkeypatch.setattr(cpu_allocator, "_applied", None)
    assert "jemalloc" in cpu_allocator.keep_freed_memory({"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"})
    monkeypatch.setattr(cpu_allocator, "_applied", None)
    assert "MALLOC_" in cpu_allocator.keep_freed_memory({"MALLOC_MMAP_THRESHOLD_": "65536"})


def test_cpu_backend_records_the_setting():
    from engine.backend import resolve
    assert resolve("cpu", "fp32").describe()["allocator"]
