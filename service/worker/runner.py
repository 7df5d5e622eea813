"""Running one claimed attempt: its stages in order, each an engine subprocess (docs/engine-contract.md):
resolve the stage's ${stages...} references, lock its run directory, launch it, watch it
(monitor.py), and end the attempt. Every write goes through the attempt's lease (lease.py), shared
with the monitor: a runner that lost its lease stops its process and writes nothing more."""
from __future__ import annotations

import collections
import fcntl
import logging
import os
import threading
import time
from pathlib import Path

import yaml
from sqlalchemy import func, select, update

from engine.stages import STAGES
from service import planning, refs
from service.db import Database
from service.db.models import Artifact, Attempt, Job, MetricPoint, Stage
from service.services import lifecycle
from service.settings import Settings
from service.jobspec import STAGE_COMMANDS
from service.worker import devices
from service.worker.launchers import LaunchRequest, load_launcher
from service.worker.lease import Lease, LeaseLost
from service.worker.monitor import Outcome, StageMonitor
from service.worker.claiming import Claim

log = logging.getLogger("tinyforge.worker")


class AttemptRunner:
    def __init__(self, db: Database, settings: Settings, worker_id: str, claim: Claim, stop: threading.Event):
        self.db, self.settings, self.worker_id, self.claim, self.stop = db, settings, worker_id, claim, stop
        # every database call of the attempt goes through the lease (and the monitor's too)
        self.lease = Lease(db, claim, settings.lease_s, settings.heartbeat_s)

    # ------------------------------------------------------------ attempt

    def run(self) -> str:
        try:
            job, stages = self.lease.retrying(self._load)
            outcome = Outcome("succeeded")
            for st in stages:
                if st.status == "succeeded":
                    continue
                if self.stop.is_set():  # between stages: hand the rest to another worker
                    outcome = Outcome("preempted", "preempted", f"worker {self.worker_id} shut down")
                    break
                outcome = self.run_stage(job, st, stages)
                if outcome.status != "succeeded":
                    break
            if outcome.status != "lost":
                self.lease.retrying(lambda: self._finish(outcome))
            return outcome.status
        except LeaseLost as exc:
            log.warning("%s; stopping", exc)
            return "lost"

    def _load(self) -> tuple[Job, list[Stage]]:
        with self.db.read() as s:
            job = s.get(Job, self.claim.job_id)
            return job, list(s.scalars(select(Stage).where(Stage.job_id == job.id).order_by(Stage.position)))

    def _finish(self, o: Outcome) -> None:
        with self.lease.write() as s:
            job, attempt = s.get(Job, self.claim.job_id), s.get(Attempt, self.claim.attempt_id)
            status = {"succeeded": "succeeded", "cancelled": "cancelled",
                      "preempted": "preempted"}.get(o.status, "failed")
            lifecycle.end_attempt(s, job, attempt, status, time.time(), failure_class=o.failure_class,
                                  reason=o.reason, exit_code=o.exit_code)

    # ------------------------------------------------------------ one stage

    def resolve(self, st: Stage, stages: list[Stage]) -> tuple[dict, list[dict]]:
        earlier = {x.name: x for x in stages if x.position < st.position}
        with self.db.read() as s:
            fresh = {x.id: x for x in s.scalars(select(Stage).where(Stage.id.in_([x.id for x in earlier.values()])))}
            arts: dict[str, list[Artifact]] = collections.defaultdict(list)
            for a in s.scalars(select(Artifact).where(Artifact.stage_id.in_(list(fresh)))
                               .order_by(Artifact.created_at, Artifact.id)):
                arts[a.stage_id].append(a)
        inputs: list[dict] = []

        def lookup(ref: refs.Ref, key: str = ""):
            src = fresh.get(earlier[ref.stage].id) if ref.stage in earlier else None
            if src is None or src.status != "succeeded":
                raise refs.RefError((), f"${{{ref.text}}}: stage {ref.stage} has not succeeded")
            if ref.what == "run_dir":
                value = src.run_dir
            elif ref.what == "summary":
                value = src.summary or {}
                for part in ref.key.split("."):
                    if not isinstance(value, dict) or part not in value:
                        raise refs.RefError((), f"${{{ref.text}}}: stage {ref.stage}'s summary has no {ref.key}")
                    value = value[part]
            else:
                mine = arts[src.id]
                hit = [a for a in mine if a.name == ref.key] or [a for a in mine if a.type == ref.key]
                if not hit:
                    have = ", ".join(f"{a.name} ({a.type})" for a in mine) or "none"
                    raise refs.RefError((), f"${{{ref.text}}}: stage {ref.stage} recorded no artifact named or "
                                            f"typed {ref.key!r}; it recorded: {have}")
                value = hit[-1].path
            inputs.append({"ref": ref.text, "key": key, "stage_id": src.id,
                           "artifact": ref.key if ref.what == "artifacts" else None,
                           "path": value if ref.what != "summary" else None})
            return value

        resolved = {}
        for k, v in st.config.items():
            resolved[k] = refs.substitute(v, lambda r, _k=k: lookup(r, self._key_of(st.config[_k], r, _k)))
        return resolved, inputs

    @staticmethod
    def _key_of(value, ref: refs.Ref, top: str) -> str:
        for loc, r in refs.find({top: value}):
            if r.text == ref.text:
                return ".".join(map(str, loc))
        return top

    def _lock_run_dir(self, run_dir: Path, st: Stage) -> int | None:
        """Hold run_dir/.lock for the stage's lifetime; the child inherits it, so a process left over from
        an earlier attempt (its worker killed) keeps the directory until it has exited."""
        fd = os.open(run_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.time() + self.settings.cancel_grace_s + self.settings.lease_s
        said = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                pass
            if time.time() > deadline:
                os.close(fd)
                return None
            try:
                self.lease.retrying(lambda: self._keep_lease(st, "" if said else f"stage {st.name}: waiting for a "
                                                       "process of an earlier attempt to release the run directory"))
            except LeaseLost:
                os.close(fd)  # a worker lives on after a lost attempt: do not leak the descriptor
                raise
            said = True
            time.sleep(max(0.2, min(1.0, self.settings.heartbeat_s)))

    def _keep_lease(self, st: Stage, line: str) -> None:
        with self.lease.write() as s:
            if line:
                lifecycle.system_log(s, st.job_id, line, st.id, self.claim.number)

    def run_stage(self, job: Job, st: Stage, stages: list[Stage]) -> Outcome:
        run_dir = Path(st.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        try:
            config, inputs = self.lease.retrying(lambda: self.resolve(st, stages))
            # the paths again, resolved: a symlink swapped since submission must not lead the stage out
            # of the data roots (earlier stages' outputs, under runs/, are inputs too)
            planning.recheck_paths(self.settings.stage_specs, st.kind, config,
                                   (*self.settings.roots, self.settings.runs_dir))
        except (refs.RefError, planning.PathRecheckError) as exc:
            reason = f"stage {st.name}: {exc.msg}"

            def fail(s_id=st.id):
                with self.lease.write() as s:
                    s.execute(update(Stage).where(Stage.id == s_id).values(status="failed"))
                    lifecycle.system_log(s, job.id, reason, s_id, self.claim.number)
            self.lease.retrying(fail)
            return Outcome("failed", "user", reason)
        config_path = run_dir / "stage.yaml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        lock_fd = self._lock_run_dir(run_dir, st)
        if lock_fd is None:
            return Outcome("failed", "infra", f"stage {st.name}: run directory still locked by an earlier attempt")
        try:
            held = self._devices(job, st)
            if isinstance(held, Outcome):
                return held
            try:
                return self._run_locked(job, st, run_dir, config_path, config, inputs, lock_fd, held)
            finally:
                if held is not None:
                    held.release()
        finally:
            os.close(lock_fd)

    @staticmethod
    def _processes(job: Job, st: Stage) -> int:
        kind = STAGES.get(st.kind)  # a kind outside the registry (a test's fake engine) runs one process
        return job.devices_per_node if kind is not None and kind.distributed else 1

    def _devices(self, job: Job, st: Stage) -> devices.Allocation | Outcome | None:
        """This stage's own accelerators on this host (service/worker/devices.py), waiting while other
        stages hold them; None for a CPU stage or a launcher that places devices itself (Slurm)."""
        kind = devices.stage_kind(job.backend) if job.launcher == "local" else None
        if kind is None:
            return None
        count, locks = self._processes(job, st), devices.lock_dir(self.settings.home)
        deadline = time.time() + self.settings.cancel_grace_s + self.settings.lease_s
        said = False
        while True:
            try:
                held = devices.allocate(kind, count, locks)
            except ValueError as exc:
                return Outcome("failed", "infra", f"stage {st.name}: {exc}")
            if held is not None:
                break
            if time.time() > deadline:
                return Outcome("failed", "infra", f"stage {st.name}: {count} {kind} device(s) still held by "
                                                  "other stages on this host")
            self.lease.retrying(lambda: self._keep_lease(st, "" if said else f"stage {st.name}: waiting for {count} "
                                                   f"free {kind} device(s) on this host"))
            said = True
            time.sleep(max(0.2, min(1.0, self.settings.heartbeat_s)))

        def note():
            with self.lease.write() as s:
                lifecycle.add_event(s, job.id, "devices_assigned", f"stage {st.name} on {kind} {','.join(held.ids)}",
                                    self.claim.number, {"stage": st.name, "kind": kind, "ids": held.ids,
                                                        "env": held.env, "worker": self.worker_id})
        try:
            self.lease.retrying(note)
        except LeaseLost:
            held.release()
            raise
        return held

    def _run_locked(self, job, st, run_dir, config_path, config, inputs, lock_fd, held=None) -> Outcome:
        argv = [*self.settings.engine_command, STAGE_COMMANDS.get(st.kind, st.kind), "--config", str(config_path),
                "--out", str(run_dir)]
        env = {**os.environ, "TINYFORGE_HOME": str(self.settings.home), "TINYFORGE_JOB_ID": job.id,
               "TINYFORGE_RUN_ID": st.id, "TINYFORGE_ATTEMPT": str(self.claim.number), "PYTHONUNBUFFERED": "1",
               **(held.env if held is not None else {})}
        launcher_cls = load_launcher(job.launcher)
        if launcher_cls is None:
            return Outcome("failed", "infra", f"launcher {job.launcher} is not available on worker {self.worker_id}")
        spec_resources = (job.spec or {}).get("resources", {})
        req = LaunchRequest(argv=argv, run_dir=run_dir, env=env, job_id=job.id, stage=st.name, backend=job.backend,
                            processes_per_node=self._processes(job, st), nodes=job.nodes,
                            time_limit_s=job.time_limit_s, pass_fds=(lock_fd, *(held.fds if held else ())),
                            options=spec_resources.get(job.launcher) or {},
                            output_stem=f"logs/attempt-{self.claim.number}")
        started = self.lease.retrying(lambda: self._mark_started(job, st, config, inputs))
        if started is None:
            return Outcome("cancelled", reason="cancelled on request")
        metrics_offset, last_steps = started
        try:
            proc = launcher_cls().start(req)
        except OSError as exc:
            return Outcome("failed", "infra", f"stage {st.name}: could not start {argv[0]}: {exc}")

        def store_launch_id():
            with self.lease.write() as s:
                s.execute(update(Stage).where(Stage.id == st.id).values(launch_id=proc.id))
        try:
            self.lease.retrying(store_launch_id)
        except LeaseLost:
            proc.terminate()  # the monitor's first flush sees the lost lease and finishes stopping it
        return StageMonitor(self.lease, self.settings, self.stop, self.worker_id, job, st, run_dir, proc,
                            metrics_offset, last_steps).run()

    def _mark_started(self, job, st, config, inputs) -> tuple[int, dict] | None:
        """The stage is running (None: a cancel is pending); returns what of its metrics is stored."""
        now = time.time()
        with self.lease.write() as s:
            if s.scalar(select(Job.cancel_requested).where(Job.id == job.id)):
                return None
            row = s.get(Stage, st.id)
            row.status, row.started_at = "running", row.started_at or now
            row.resolved_config, row.inputs, row.exit_code, row.finished_at = config, inputs, None, None
            s.execute(update(Attempt).where(Attempt.id == self.claim.attempt_id).values(stage_name=st.name))
            lifecycle.add_event(s, job.id, "stage_started", f"stage {st.name} ({st.kind}) started",
                                self.claim.number, {"stage": st.name}, now)
            metrics_offset = row.metrics_offset
            last_steps = {(k, sp): m for k, sp, m in s.execute(
                select(MetricPoint.key, MetricPoint.split, func.max(MetricPoint.step))
                .where(MetricPoint.stage_id == st.id).group_by(MetricPoint.key, MetricPoint.split)).all()}
        return metrics_offset, last_steps
