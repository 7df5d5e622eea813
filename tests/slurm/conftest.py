"""A real single-node Slurm on this machine for the launcher tests: Debian's `slurm-wlm` and `munge`
(installed with apt-get on first use), one munged, slurmctld and slurmd started here as root with every
file in a temporary directory, and stopped at the end. Ports are picked free, so a Slurm already running
on the machine is left alone."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

PACKAGES = ("slurm-wlm", "munge")
DAEMONS = ("munged", "slurmctld", "slurmd")


def _apt(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    return subprocess.run(["apt-get", "-q", "-y", "-o", "DPkg::Lock::Timeout=300", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


def install_reason() -> str | None:
    """Install the packages if a daemon is missing; the reason they cannot be had, or None."""
    if all(shutil.which(d, path="/usr/sbin:/usr/bin:/sbin:/bin") for d in DAEMONS):
        return None
    if os.geteuid() != 0:
        return f"Slurm is not installed and installing {' '.join(PACKAGES)} needs root"
    if not shutil.which("apt-get"):
        return "Slurm is not installed and there is no apt-get to install it with"
    install = ("install", "--no-install-recommends", *PACKAGES)
    proc = _apt(*install)
    if proc.returncode != 0:  # a fresh machine may have no package lists yet
        _apt("update")
        proc = _apt(*install)
    if proc.returncode != 0:
        return f"apt-get install {' '.join(PACKAGES)} failed: {(proc.stderr or proc.stdout)[-800:]}"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SLURM_CONF = """\
ClusterName=tinyforge-test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge/munge.socket
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
# this machine runs without cgroups: track processes through /proc, bind no tasks
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
# the node is what this file says (a CI machine may have fewer cores than the 2-rank test asks for)
SlurmdParameters=config_overrides
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
# a stopped trainer gets this long between SIGTERM and SIGKILL to save its checkpoint
KillWait=30
MinJobAge=300
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=1024 State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


class LocalSlurm:
    def __init__(self, root: Path):
        self.root = root
        self.host = socket.gethostname().split(".")[0]
        self.conf = root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.procs: list[subprocess.Popen] = []

    def _write_config(self) -> None:
        for sub in ("munge", "state", "spool", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)
        (self.root / "munge").chmod(0o700)
        self.conf.write_text(SLURM_CONF.format(host=self.host, root=self.root, ctld_port=_free_port(),
                                               slurmd_port=_free_port(), cpus=max(2, os.cpu_count() or 1)))
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.root / "log" / f"{name}.out", "ab")
        proc = subprocess.Popen(argv, env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True)
        log.close()
        self.procs.append(proc)

    def _wait(self, what: str, check, timeout: float = 60) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            for proc in self.procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"{proc.args[0]} exited {proc.returncode} while waiting for {what}:\n"
                                       f"{self.logs()}")
            if check():
                return
            time.sleep(0.2)
        raise RuntimeError(f"timed out waiting for {what}:\n{self.logs()}")

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted((self.root / "log").glob("*"))
                         if p.is_file())

    def run(self, *argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(list(argv), env=self.env, capture_output=True, text=True, timeout=30)

    def start(self) -> None:
        self._write_config()
        sock = self.root / "munge" / "munge.socket"
        self._spawn("munged", ["/usr/sbin/munged", "--foreground", "--force", f"--socket={sock}",
                               f"--key-file={self.root / 'munge' / 'munge.key'}",
                               f"--pid-file={self.root / 'munge' / 'munged.pid'}",
                               f"--seed-file={self.root / 'munge' / 'munged.seed'}",
                               f"--log-file={self.root / 'log' / 'munged.log'}"])
        self._wait("the munge socket", sock.exists)
        # -D: stay in the foreground (a child we can stop); -i: ignore saved state from an earlier run
        self._spawn("slurmctld", ["/usr/sbin/slurmctld", "-D", "-i", "-f", str(self.conf)])
        self._wait("slurmctld", lambda: self.run("scontrol", "ping").stdout.count("UP") > 0)
        self._spawn("slurmd", ["/usr/sbin/slurmd", "-D", "-f", str(self.conf), "-N", self.host])
        self._wait("the node to be idle",
                   lambda: "idle" in self.run("sinfo", "-h", "-N", "-o", "%t").stdout)

    def wait_quiet(self, timeout: float = 60) -> None:
        """Until no job is queued and no step is winding down (no slurmstepd left). Without cgroups a step
        still exiting when the next job starts was seen to take that job's step with it (slurmd log:
        `[7.0] done with job`, then `STEP 8.0 ... CANCELLED` 11 ms later, 3 s into job 8)."""
        self._wait("the previous jobs to end",
                   lambda: not self.run("squeue", "-h").stdout.strip()
                   and subprocess.run(["pgrep", "-x", "slurmstepd"], capture_output=True).returncode == 1,
                   timeout)

    def stop(self) -> None:
        if len(self.procs) == len(DAEMONS):  # jobs a failed test left behind end with the cluster
            self.run("scancel", "--full", "--signal=KILL", "--user=root")
            self.run("scancel", "--user=root")
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


@pytest.fixture(autouse=True)
def _slurm_quiet_between_tests(request):
    """Every test that uses the cluster starts on a quiet one (LocalSlurm.wait_quiet)."""
    if "slurm" in request.fixturenames:
        request.getfixturevalue("slurm").wait_quiet()


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A running single-node Slurm; SLURM_CONF points the client commands (sbatch, squeue...) at it."""
    reason = install_reason()
    if reason:
        pytest.skip(reason)
    cluster = LocalSlurm(tmp_path_factory.mktemp("slurm"))
    old = os.environ.get("SLURM_CONF")
    try:
        cluster.start()
        os.environ["SLURM_CONF"] = str(cluster.conf)
        yield cluster
    finally:
        cluster.stop()
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old
