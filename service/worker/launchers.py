"""Launchers start a stage's engine command somewhere and hand back a process handle.

`local` runs it on the worker's host (wrapped in torchrun when it asks for more than one process).
Other launchers (`slurm`: sbatch + srun torchrun; later Kubernetes) implement the same two
classes and register in LAUNCHERS by import path; a worker offers a launcher only when its
`available()` says so."""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

from engine.importing import import_object

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
    output_stem: str = "logs/stage"  # stdout/stderr go to RUN_DIR/<stem>.stdout and .stderr
    options: dict = field(default_factory=dict)  # launcher-specific (slurm: partition, account, extra_args)


class Process(ABC):
    """A started stage. Exit codes follow docs/engine-contract.md (a death by signal N reads 128+N)."""

    id: str  # pid, Slurm job id, ...
    command: list[str]  # what was actually launched (for the job's log)

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

    def drain_final(self) -> list[tuple[str, float, str]]:
        """After exit: the remaining lines, the last one even without a newline."""
        return self.drain()


class Launcher(ABC):
    name: str

    @classmethod
    def available(cls) -> bool:
        return True

    @abstractmethod
    def start(self, req: LaunchRequest) -> Process: ...


def load_launcher(name: str) -> type[Launcher] | None:
    """The launcher class registered as `name`, or None when none is or it is not available on this host.
    A registered launcher whose module fails to import raises (ImportPathError names it): a broken
    launcher must stop the worker, not quietly drop out of what it offers."""
    path = LAUNCHERS.get(name)
    if not path:
        return None
    cls = import_object(path, f"launcher {name!r}")
    return cls if cls.available() else None


def exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


class FileTail:
    """Complete lines appended to a file since the last read (the stage writes, the worker reads)."""

    def __init__(self, path: Path, stream: str):
        self.path, self.stream, self.offset, self.partial = path, stream, 0, b""

    def read(self, final: bool = False) -> list[tuple[str, float, str]]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read(4 << 20)
        except FileNotFoundError:
            return []
        self.offset += len(data)
        data = self.partial + data
        lines = data.split(b"\n")
        self.partial = lines.pop()
        if final and self.partial:
            lines.append(self.partial)
            self.partial = b""
        now = time.time()
        return [(self.stream, now, raw.decode("utf-8", "replace").rstrip("\r")) for raw in lines]


class LocalProcess(Process):
    """Output goes to files in the run directory, not pipes: a stage outlives a killed worker long enough
    to checkpoint (a pipe would break under it), and the raw logs stay on disk next to the run."""

    def __init__(self, popen: subprocess.Popen, stdout: Path, stderr: Path):
        self.popen = popen
        self.id = str(popen.pid)
        self.command = list(popen.args)
        self.tails = [FileTail(stdout, "stdout"), FileTail(stderr, "stderr")]

    def drain(self):
        return [line for t in self.tails for line in t.read()]

    def drain_final(self):
        return [line for t in self.tails for line in t.read(final=True)]

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


class LocalLauncher(Launcher):
    name = "local"

    def command(self, req: LaunchRequest) -> list[str]:
        argv = list(req.argv)
        if req.processes_per_node > 1:
            # --no-python: torchrun runs the same command line per rank (RANK, WORLD_SIZE, LOCAL_RANK set)
            argv = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                    f"--nproc-per-node={req.processes_per_node}", "--no-python", *argv]
        return argv

    def start(self, req: LaunchRequest) -> LocalProcess:
        stdout = req.run_dir / f"{req.output_stem}.stdout"
        stderr = stdout.with_suffix(".stderr")
        stdout.parent.mkdir(parents=True, exist_ok=True)
        with open(stdout, "ab") as out, open(stderr, "ab") as err:
            popen = subprocess.Popen(self.command(req), cwd=req.cwd, env=req.env, stdin=subprocess.DEVNULL,
                                     stdout=out, stderr=err, start_new_session=True, pass_fds=req.pass_fds,
                                     preexec_fn=_die_with_parent(os.getpid()) if _PRCTL else None)
        return LocalProcess(popen, stdout, stderr)


PR_SET_PDEATHSIG = 1
try:  # resolved here: the child must not load anything
    _LIBC = ctypes.CDLL(None, use_errno=True)
    _PRCTL, _SIGNAL = _LIBC.prctl, _LIBC.signal
    _SIGNAL.restype, _SIGNAL.argtypes = ctypes.c_void_p, (ctypes.c_int, ctypes.c_void_p)
except (OSError, AttributeError):  # not Linux
    _PRCTL = _SIGNAL = None


def _die_with_parent(parent: int):
    """preexec_fn of a stage: when the worker dies (even SIGKILL) the stage gets SIGTERM, so it checkpoints
    and exits instead of running on unowned and writing into a run directory that the next attempt takes
    over. Checking the parent after prctl closes the window in which the worker died before it: the child
    was already reparented, and exits at once. (Unlike `setpriv --pdeathsig`, which leaves that window.)
    SIGTERM goes back to its default action first: the child inherits the worker's handler (which only
    sets a flag), so a worker dying between prctl and exec would have its SIGTERM swallowed there and the
    engine would start unowned."""
    # the child (forked from a threaded worker) only calls these
    prctl, set_handler, sigterm = _PRCTL, _SIGNAL, int(signal.SIGTERM)

    def preexec() -> None:
        set_handler(sigterm, int(signal.SIG_DFL))
        prctl(PR_SET_PDEATHSIG, sigterm, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(75)
    return preexec
