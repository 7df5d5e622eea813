"""The worker loop: register, heartbeat, do housekeeping, claim a job, run it, repeat.

One worker runs one job at a time; run more workers for more jobs. On SIGTERM/SIGINT a worker stops
claiming, asks its running stage to checkpoint and exit (the attempt ends `preempted` and the job
goes back to the queue), and marks itself stopped."""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
from pathlib import Path

from service.db import Database
from service.services import housekeeping, workers
from service.settings import Settings
from service.worker.devices import candidates
from service.worker.launchers import LAUNCHERS, load_launcher
from service.worker.runner import AttemptRunner
from service.worker.claiming import claim

log = logging.getLogger("tinyforge.worker")


def detect_devices() -> dict:
    """Device counts without importing torch: CPU cores, and the accelerators this worker may hand to its
    stages (its CUDA_VISIBLE_DEVICES / ASCEND_RT_VISIBLE_DEVICES, else the host's device nodes)."""
    return {"cpu": os.cpu_count() or 1, "cuda": len(candidates("cuda")), "npu": len(candidates("npu"))}


def parse_devices(text: str) -> dict:
    """'cpu=2,npu=8' -> {"cpu": 2, "cuda": 0, "npu": 8}."""
    out = {"cpu": 0, "cuda": 0, "npu": 0}
    for part in filter(None, (p.strip() for p in text.split(","))):
        kind, sep, count = part.partition("=")
        if kind not in out or not sep or not count.isdigit():
            raise ValueError(f"--devices: expected kind=count with kind in cpu, cuda, npu; got {part!r}")
        out[kind] = int(count)
    return out


class Worker:
    def __init__(self, db: Database, settings: Settings, worker_id: str | None = None, devices: dict | None = None,
                 launchers: list[str] | None = None, alive_file: str | None = None):
        self.db, self.settings = db, settings
        self.alive_file = Path(alive_file) if alive_file else None
        self.host = socket.gethostname()
        self.id = worker_id or f"{self.host}-{os.getpid()}-{os.urandom(2).hex()}"
        self.devices = devices or detect_devices()
        wanted = launchers or list(LAUNCHERS)
        self.launchers = [name for name in wanted if load_launcher(name) is not None]
        self.stop = threading.Event()
        self.current: str | None = None

    def _heartbeats(self) -> None:
        while not self.stop.wait(max(self.settings.heartbeat_s, 0.5)):
            try:
                workers.heartbeat(self.db, self.id)
                if self.alive_file:  # for container health checks: fresh while heartbeats reach the database
                    self.alive_file.touch()
            except Exception as exc:  # the database may be restarting: keep beating
                log.warning("worker heartbeat failed: %s", exc)

    def run(self) -> None:
        self._register()
        beat = threading.Thread(target=self._heartbeats, daemon=True, name="worker-heartbeat")
        beat.start()
        last_housekeeping = 0.0
        log.info("worker %s: devices %s, launchers %s", self.id, self.devices, self.launchers)
        try:
            while not self.stop.is_set():
                if time.time() - last_housekeeping > self.settings.housekeeping_s:
                    housekeeping.run_once(self.db, self.settings)
                    last_housekeeping = time.time()
                try:
                    c = claim(self.db, self.id, self.devices, self.launchers, self.settings.lease_s)
                except Exception as exc:
                    log.warning("claim failed: %s", exc)
                    c = None
                if c is None:
                    self.stop.wait(self.settings.poll_s)
                    continue
                log.info("worker %s: running job %s attempt %d", self.id, c.job_id, c.number)
                self.current = c.job_id
                try:
                    status = AttemptRunner(self.db, self.settings, self.id, c, self.stop).run()
                except Exception:  # a bug in one attempt must not take the worker down: its lease runs out
                    log.exception("worker %s: attempt %d of job %s failed unexpectedly", self.id, c.number, c.job_id)
                    status = "error"
                self.current = None
                log.info("worker %s: job %s attempt %d ended %s", self.id, c.job_id, c.number, status)
                self._set(status="idle", job_id=None)
        finally:
            self.stop.set()
            self._set(status="stopped", job_id=None)

    def _register(self) -> None:
        while True:
            try:
                workers.register(self.db, self.id, self.host, os.getpid(), self.devices, self.launchers)
                return
            except Exception as exc:
                if self.stop.wait(2.0):
                    raise
                log.warning("cannot register worker yet (%s); retrying", exc)

    def _set(self, status: str, job_id: str | None) -> None:
        try:
            workers.heartbeat(self.db, self.id, status=status, job_id=job_id, set_job=True)
        except Exception as exc:
            log.warning("worker status update failed: %s", exc)
