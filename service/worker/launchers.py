"""Launchers start a stage's engine command somewhere and hand back a process handle.

`local` runs it on the worker's host (wrapped in torchrun when it asks for more than one process).
Other launchers (`slurm`: sbatch + srun torchrun; later Kubernetes) implement the same two
classes and register in LAUNCHERS by import path; a worker offers a launcher only when its
`available()` says so."""
from __future__ import annotations

import importlib
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

LAUNCHERS: dict[str, str] = {
    "local": "service.worker.launchers:LocalLauncher",
    "slurm": "service.worker.slurm:SlurmLauncher",  # added with the Slurm work (issue 7)
}


@dataclass
class LaunchRequest:
    argv: list[str]  # one process's engine command: prefix + [kind, --config, FILE, --out, DIR]
    run_dir: Path
    env: dict[str, str]
    job_id: str
    stage: str
    backend: str = "auto"
    processes_per_node: int = 1
    nodes: int = 1
    time_limit_s: float | None = None
    pass_fds: tuple[int, ...] = ()  # kept open in the child (the run directory's lock)
    cwd: str | None = None  # None: the worker's working directory (engine defaults like data/sample)
    options: dict = field(default_factory=dict)  # launcher-specific (slurm: partition, account, extra_args)


class Process(ABC):
    """A started stage. Exit codes follow docs/engine-contract.md (a death by signal N reads 128+N)."""

    id: str  # pid, Slurm job id, ...

    @abstractmethod
    def poll(self) -> int | None: ...

    @abstractmethod
    def drain(self) -> list[tuple[str, float, str]]:
        """Output lines produced since the last call: (stream, time, line)."""

    @abstractmethod
    def terminate(self) -> None:
        """Ask the stage to stop (SIGTERM: the trainer checkpoints and exits 143)."""

    @abstractmethod
    def kill(self) -> None: ...

    def finish_output(self, timeout: float = 5.0) -> None:
        """After exit: wait until the last output has been read."""


class Launcher(ABC):
    name: str

    @classmethod
    def available(cls) -> bool:
        return True

    @abstractmethod
    def start(self, req: LaunchRequest) -> Process: ...


def load_launcher(name: str) -> type[Launcher] | None:
    path = LAUNCHERS.get(name)
    if not path:
        return None
    module, attr = path.split(":")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError):
        return None
    return cls if cls.available() else None


def exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


class LocalProcess(Process):
    def __init__(self, popen: subprocess.Popen):
        self.popen = popen
        self.id = str(popen.pid)
        self._lines: queue.SimpleQueue = queue.SimpleQueue()
        self._readers = [threading.Thread(target=self._read, args=(pipe, name), daemon=True)
                         for pipe, name in ((popen.stdout, "stdout"), (popen.stderr, "stderr"))]
        for t in self._readers:
            t.start()

    def _read(self, pipe, name: str) -> None:
        for raw in iter(pipe.readline, b""):
            self._lines.put((name, time.time(), raw.decode("utf-8", "replace").rstrip("\r\n")))
        pipe.close()

    def drain(self):
        out = []
        while True:
            try:
                out.append(self._lines.get_nowait())
            except queue.Empty:
                return out

    def poll(self):
        rc = self.popen.poll()
        return None if rc is None else exit_code(rc)

    def _signal(self, sig) -> None:
        try:
            os.killpg(self.popen.pid, sig)  # the whole group: torchrun and its ranks
        except ProcessLookupError:
            pass

    def terminate(self):
        self._signal(signal.SIGTERM)

    def kill(self):
        self._signal(signal.SIGKILL)

    def finish_output(self, timeout: float = 5.0):
        for t in self._readers:
            t.join(timeout)


class LocalLauncher(Launcher):
    name = "local"

    def command(self, req: LaunchRequest) -> list[str]:
        argv = list(req.argv)
        if req.processes_per_node > 1:
            # --no-python: torchrun runs the same command line per rank (RANK, WORLD_SIZE, LOCAL_RANK set)
            argv = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                    f"--nproc-per-node={req.processes_per_node}", "--no-python", *argv]
        if shutil.which("setpriv"):
            # if the worker dies, the stage gets SIGTERM (checkpoint, exit) instead of running on unowned
            argv = ["setpriv", "--pdeathsig", "TERM", "--", *argv]
        return argv

    def start(self, req: LaunchRequest) -> LocalProcess:
        popen = subprocess.Popen(self.command(req), cwd=req.cwd, env=req.env, stdin=subprocess.DEVNULL,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                                 pass_fds=req.pass_fds)
        return LocalProcess(popen)
