"""The `slurm` launcher: a stage becomes one batch job.

The worker writes an sbatch script into the run directory (from slurm.sbatch) that runs one srun task per
node: the engine command itself for one process on one node, else a torchrun agent per node whose ranks
meet at a c10d rendezvous on the first node. The job's state is read from squeue while it is queued or
running, then from sacct, or from scontrol where the cluster keeps no accounting. Stop asks with SIGTERM
(the trainer saves a checkpoint and exits 143); kill cancels the job. Output goes to files in the run
directory, tailed like the local launcher's."""
from __future__ import annotations

import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from service.worker.launchers import FileTail, Launcher, LaunchRequest, Process

TEMPLATE = Path(__file__).with_name("slurm.sbatch")
SIGNAL_BEFORE_S = 120  # checkpointing a large model to shared storage takes a while
# squeue states of a job that has not ended (squeue -o %T)
ACTIVE = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_FED",
          "REQUEUE_HOLD", "RESIZING", "SIGNALING", "STAGE_OUT", "RESV_DEL_HOLD", "STOPPED"}
# exit codes (docs/engine-contract.md) of jobs that ended without one of their own
ENDED_WITHOUT_CODE = {"CANCELLED": 143, "PREEMPTED": 143, "TIMEOUT": 143, "DEADLINE": 143,
                      "NODE_FAIL": 3, "BOOT_FAIL": 3, "OUT_OF_MEMORY": 3}
GRES = {"npu": "npu", "cuda": "gpu"}  # backend -> generic resource name in the cluster's gres.conf


class SlurmError(OSError):
    """sbatch refused the job (the runner records a failed start)."""


def _slurm(*argv: str, env: dict | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(list(argv), env=env, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(list(argv), 124, "", f"{argv[0]}: no answer in {timeout:g}s")


def slurm_time(seconds: float) -> str:
    """--time as days-hours:minutes:seconds (Slurm rounds up to whole minutes)."""
    s = max(1, math.ceil(seconds))
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return f"{d}-{h:02d}:{m:02d}:{s:02d}"


def term_before_limit(limit_s: float) -> int:
    """Seconds before the time limit at which Slurm sends SIGTERM to the job's steps (--signal=TERM@N), so
    the engine saves a checkpoint and exits 143 instead of being killed at the limit: two minutes, or three
    quarters of a shorter limit (Slurm sends it up to a minute early, and rounds the limit up to minutes)."""
    minutes = max(1, math.ceil(limit_s / 60))
    return int(min(SIGNAL_BEFORE_S, minutes * 60 * 3 // 4))


def exit_code_of(state: str, exit_code: str) -> int:
    """Slurm's ExitCode "rc:signal" as one code: a death by signal N reads 128+N, as for local processes."""
    rc, _, sig = exit_code.partition(":")
    code = 128 + int(sig) if sig.isdigit() and int(sig) else int(rc) if rc.isdigit() else 1
    if state == "COMPLETED":
        return code
    if state in ("PREEMPTED", "OUT_OF_MEMORY"):  # what happened matters more than how the step exited
        return ENDED_WITHOUT_CODE[state]
    return code or ENDED_WITHOUT_CODE.get(state, 1)


class SlurmProcess(Process):
    poll_every_s = 1.0  # the runner polls every 50 ms; slurmctld is asked at most this often

    def __init__(self, job_id: str, command: list[str], stdout: Path, stderr: Path):
        self.id, self.command = job_id, command
        self.tails = [FileTail(stdout, "stdout"), FileTail(stderr, "stderr")]
        self.notes: list[tuple[str, float, str]] = [("system", time.time(), f"slurm job {job_id} submitted")]
        self.seen: tuple[str, str] | None = None  # last (state, reason) reported
        self.code: int | None = None
        self.next_query = 0.0
        self.misses = 0  # queries in a row that found the job nowhere
        self.problem = ""  # the last squeue failure reported

    # ------------------------------------------------------------ state

    def _note(self, line: str, stream: str = "system") -> None:
        self.notes.append((stream, time.time(), line))

    def _queued(self) -> str | None:
        """The job's state while squeue lists it, "" once it has left the queue, None if squeue failed."""
        q = _slurm("squeue", "-h", "-j", self.id, "-o", "%T|%r")
        if q.returncode != 0:
            if "Invalid job id" in q.stderr:  # purged from the controller already
                return ""
            if q.stderr.strip() != self.problem:  # say so once, not every second
                self.problem = q.stderr.strip()
                self._note(f"squeue failed, will retry: {self.problem}")
            return None
        self.problem = ""
        line = q.stdout.strip().splitlines()[0] if q.stdout.strip() else ""
        state, _, reason = line.partition("|")
        if state and (state, reason) != self.seen:
            self.seen = (state, reason)
            self._note(f"slurm job {self.id}: {state}" + (f" ({reason})" if reason not in ("", "None") else ""))
        return state

    def _final(self) -> tuple[str, str] | None:
        """(State, ExitCode) of an ended job: sacct where accounting is kept, else scontrol."""
        acct = _slurm("sacct", "-n", "-X", "-P", "-j", self.id, "-o", "State,ExitCode")
        if acct.returncode == 0 and acct.stdout.strip():
            state, _, code = acct.stdout.strip().splitlines()[0].partition("|")
            return state.split()[0], code  # "CANCELLED by 0" -> CANCELLED
        show = _slurm("scontrol", "show", "job", "-o", self.id)
        state = re.search(r"\bJobState=(\S+)", show.stdout)
        code = re.search(r"\bExitCode=(\S+)", show.stdout)
        if show.returncode == 0 and state and code:
            return state.group(1), code.group(1)
        return None

    def poll(self) -> int | None:
        if self.code is not None:
            return self.code
        now = time.monotonic()
        if now < self.next_query:
            return None
        self.next_query = now + self.poll_every_s
        state = self._queued()
        if state is None or state in ACTIVE:
            return None
        final = self._final()
        if final is None or final[0] in ACTIVE:  # left the queue; accounting may lag a moment
            self.misses += 1
            if final is not None or self.misses < 5:
                return None
            self._note(f"error: slurm has no record of job {self.id} any more (squeue, sacct and scontrol "
                       "know nothing of it); its outcome is unknown", "stderr")
            self.code = 1
            return self.code
        self.code = exit_code_of(*final)
        self._note(f"slurm job {self.id} ended: {final[0]}, ExitCode {final[1]} -> exit code {self.code}")
        return self.code

    # ------------------------------------------------------------ output and stopping

    def drain(self):
        notes, self.notes = self.notes, []
        return notes + [line for t in self.tails for line in t.read()]

    def drain_final(self):
        notes, self.notes = self.notes, []
        return notes + [line for t in self.tails for line in t.read(final=True)]

    def terminate(self):
        # SIGTERM to the job's steps: the engine (and torchrun, which passes it on to its ranks) saves a
        # checkpoint and exits. Not --full: srun, signalled in the batch step, would abort the step at once
        # and the ranks would die before they checkpoint.
        if self.code is not None:
            return
        # a pending job has nothing to signal (scancel would retry for half a minute): cancel it
        if self._queued() in ("PENDING", "") or _slurm("scancel", "--signal=TERM", self.id,
                                                      timeout=10).returncode != 0:
            _slurm("scancel", self.id)

    def kill(self):
        if self.code is None:
            _slurm("scancel", self.id)


class SlurmLauncher(Launcher):
    name = "slurm"

    @classmethod
    def available(cls) -> bool:
        return shutil.which("sbatch") is not None

    @staticmethod
    def _path(p: Path) -> str:
        return str(p).replace("%", "%%")  # sbatch expands %j and friends in file names

    def sbatch_args(self, req: LaunchRequest, stdout: Path, stderr: Path) -> list[str]:
        opts = req.options or {}
        # singleton: a job left running by an earlier attempt (its worker died) keeps the run directory
        # until it has ended, as the local launcher's inherited lock does
        args = ["sbatch", "--parsable", f"--job-name=tinyforge-{req.job_id}-{req.stage}",
                "--dependency=singleton", f"--nodes={req.nodes}", "--ntasks-per-node=1",
                f"--chdir={req.cwd or os.getcwd()}", "--export=ALL", "--open-mode=append",
                f"--output={self._path(stdout)}", f"--error={self._path(stderr)}"]
        if opts.get("partition"):
            args.append(f"--partition={opts['partition']}")
        if opts.get("account"):
            args.append(f"--account={opts['account']}")
        if req.backend in GRES:
            args.append(f"--gres={GRES[req.backend]}:{req.processes_per_node}")
        else:  # cpu, or auto: a task without --gres sees no accelerator, so its ranks run on cores
            args.append(f"--cpus-per-task={req.processes_per_node}")
        if req.time_limit_s:
            args += [f"--time={slurm_time(req.time_limit_s)}", f"--signal=TERM@{term_before_limit(req.time_limit_s)}"]
        return args + [str(a) for a in opts.get("extra_args") or []]  # last: they override the above

    def step_command(self, req: LaunchRequest) -> str:
        """What each node's srun task runs (a shell fragment: the rendezvous comes from the script)."""
        argv = shlex.join(req.argv)
        if req.nodes == 1 and req.processes_per_node == 1:
            return argv
        return (f"{shlex.quote(sys.executable)} -m torch.distributed.run --nnodes=\"$SLURM_NNODES\" "
                f"--nproc-per-node={req.processes_per_node} --rdzv-id=\"$SLURM_JOB_ID\" --rdzv-backend=c10d "
                f"--rdzv-endpoint=\"$head_node:$rdzv_port\" --no-python {argv}")

    def script(self, req: LaunchRequest, submit: list[str]) -> str:
        # srun does not take --cpus-per-task over from the allocation in every Slurm version: pass it on
        srun_args = "" if req.backend in GRES else f"--cpus-per-task={req.processes_per_node} "
        values = {"stage": req.stage, "job_id": req.job_id, "submit": shlex.join(submit),
                  "srun_args": srun_args, "command": self.step_command(req)}
        return re.sub(r"\{\{(\w+)\}\}", lambda m: values[m.group(1)], TEMPLATE.read_text())

    def start(self, req: LaunchRequest) -> SlurmProcess:
        stdout = req.run_dir / f"{req.output_stem}.stdout"
        stderr, script = stdout.with_suffix(".stderr"), stdout.with_suffix(".sbatch")
        stdout.parent.mkdir(parents=True, exist_ok=True)
        submit = [*self.sbatch_args(req, stdout, stderr), str(script)]
        script.write_text(self.script(req, submit))
        proc = _slurm(*submit, env=req.env, timeout=60)
        job_id = proc.stdout.strip().split(";")[0]  # --parsable: "ID" or "ID;cluster"
        if proc.returncode != 0 or not job_id.isdigit():
            raise SlurmError(f"sbatch exited {proc.returncode}: {(proc.stderr or proc.stdout).strip()}")
        return SlurmProcess(job_id, submit, stdout, stderr)
