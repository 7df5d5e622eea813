"""service/worker/launchers.py: what a stage's child process does between the worker's fork and its exec."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# The worker handles SIGTERM itself (a flag: stop after the current stage). The forked child inherits that
# handler until exec; if it kept it, the death signal of a worker killed in that window would set a flag in
# the child and be gone, and the engine would start with no owner. SigCgt lists the signals a process catches.
PROBE = """
import os, signal
from service.worker import launchers
signal.signal(signal.SIGTERM, lambda *_: None)
pid = os.fork()
if pid == 0:
    launchers._die_with_parent(os.getppid())()
    status = open("/proc/self/status").read()
    caught = int(status.split("SigCgt:")[1].split()[0], 16)
    os._exit(1 if caught & (1 << (signal.SIGTERM - 1)) else 0)
print(os.waitpid(pid, 0)[1] >> 8)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl and /proc are Linux's")
def test_the_child_takes_sigterm_s_default_action_before_its_exec():
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["0"], "the child still catches SIGTERM with the worker's handler"
