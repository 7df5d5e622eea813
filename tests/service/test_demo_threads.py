"""`tinyforge demo`'s threads per stage: one where other work keeps the cores busy now, all of them on an
idle machine, whatever the 1-minute load average still says about work that has ended."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from engine import cpu_load
from service.commands import demo

pytestmark = pytest.mark.alone  # measures the cores busy


@pytest.fixture
def no_thread_setting(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # an explicit setting is kept as it is


def test_cores_kept_busy_now_give_one_thread_per_stage(no_thread_setting):
    cores = os.cpu_count() or 1
    if cores < 2:
        pytest.skip("one core: a stage has one thread anyway")
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(cores)]
    try:
        time.sleep(0.5)
        busy = cpu_load.busy_cores(1.0)
        threads, why = demo.stage_threads(None)
    finally:
        for p in spinners:
            p.kill()
            p.wait()
    assert busy > cores - 0.5, busy
    assert threads == 1 and f"of {cores} cores busy with other work: one thread per stage" in why


def test_a_load_average_left_by_ended_work_does_not_slow_an_idle_machine(no_thread_setting, monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (1.7, 1.4, 1.2))  # as read just after a benchmark ended
    assert demo.stage_threads(None, busy=0.1) == (None, "")  # all cores: torch's own choice
    assert demo.stage_threads(None, busy=1.8)[0] == 1
    assert demo.stage_threads(3, busy=1.8) == (3, "")  # --threads wins
    # where /proc/stat cannot be read, the load average is all there is
    monkeypatch.setattr(cpu_load, "busy_cores", lambda seconds=1.0: None)
    threads, why = demo.stage_threads(None)
    assert threads == 1 and "load average 1.7 on 2 cores" in why
