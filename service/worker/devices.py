"""Which accelerators a stage runs on: each local stage gets its own device ids, exported to it as
CUDA_VISIBLE_DEVICES / ASCEND_RT_VISIBLE_DEVICES, so two workers on one host never share a device.

A worker's candidates are its own CUDA_VISIBLE_DEVICES / ASCEND_RT_VISIBLE_DEVICES when set (an operator's
explicit split), else every device node of the host (/dev/nvidiaN, /dev/davinciN). Workers on one host
(`docker compose up --scale worker=2`) may share candidates: a stage holds an exclusive flock per device
in <home>/device-locks/<boot id>/ for its lifetime (the stage process inherits the locks, so they outlive
a killed worker until the stage exits). The kernel's boot id is the same in every container of a host and
differs between hosts, so workers on other machines sharing the state volume do not contend."""
from __future__ import annotations

import fcntl
import glob
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

VISIBLE_ENV = {"cuda": "CUDA_VISIBLE_DEVICES", "npu": "ASCEND_RT_VISIBLE_DEVICES"}
DEVICE_NODES = {"cuda": "nvidia[0-9]*", "npu": "davinci[0-9]*"}


def candidates(kind: str, environ=os.environ, dev: str = "/dev") -> list[str]:
    """Device ids this worker may hand out for `kind`, in order."""
    given = environ.get(VISIBLE_ENV[kind])
    if given is not None:
        return [part.strip() for part in given.split(",") if part.strip()]
    ids = {int(m.group(1)) for path in glob.glob(os.path.join(dev, DEVICE_NODES[kind]))
           if (m := re.search(r"(\d+)$", path))}
    return [str(i) for i in sorted(ids)]


def stage_kind(backend: str, environ=os.environ, dev: str = "/dev") -> str | None:
    """The accelerator kind a stage of a job with this backend runs on here (None: CPU only)."""
    if backend in VISIBLE_ENV:
        return backend
    if backend == "auto":  # the engine picks npu, then cuda
        return next((k for k in ("npu", "cuda") if candidates(k, environ, dev)), None)
    return None


def lock_dir(home: Path) -> Path:
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:  # not Linux: one host per state directory
        boot = "host"
    return Path(home) / "device-locks" / boot


@dataclass
class Allocation:
    kind: str
    ids: list[str]
    fds: list[int] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        return {VISIBLE_ENV[self.kind]: ",".join(self.ids)}

    def release(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []


def allocate(kind: str, count: int, locks: Path, environ=os.environ, dev: str = "/dev") -> Allocation | None:
    """`count` free devices of `kind`, locked; None while fewer are free. Raises ValueError when this
    worker has fewer than `count` at all."""
    ids = candidates(kind, environ, dev)
    if len(ids) < count:
        raise ValueError(f"the stage needs {count} {kind} device(s); this worker has {len(ids)} "
                         f"({VISIBLE_ENV[kind]}={','.join(ids) or 'none'})")
    locks.mkdir(parents=True, exist_ok=True)
    got = Allocation(kind, [])
    for i in ids:
        fd = os.open(locks / f"{kind}-{i}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        got.ids.append(i)
        got.fds.append(fd)
        if len(got.ids) == count:
            return got
    got.release()
    return None
