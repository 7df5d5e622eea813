"""SQLAlchemy 2 models. The schema itself is owned by the Alembic migrations in migrations/.

Times are float seconds since the epoch (UTC), so that lease arithmetic is the same on every
database. Public ids are short strings that sort by creation time (see `new_id`)."""
from __future__ import annotations

import os
import threading
import time

from sqlalchemy import JSON, BigInteger, Boolean, Double, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a BIGINT identity
BigId = BigInteger().with_variant(Integer, "sqlite")

_last = [0, 0]
_lock = threading.Lock()


def new_id(prefix: str) -> str:
    """prefix + 11 hex digits of milliseconds + 3 of a per-process counter + 6 random: sorts by time."""
    with _lock:
        ms = int(time.time() * 1000)
        _last[1] = _last[1] + 1 if ms == _last[0] else 0
        _last[0] = ms
        seq = _last[1] & 0xFFF
    return f"{prefix}{ms:011x}{seq:03x}{os.urandom(3).hex()}"


class Base(DeclarativeBase):
    pass


class Job(Base):
    __tablename__ = "jobs"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), index=True)
    spec: Mapped[dict] = mapped_column(JSON)  # the submitted spec, validated and normalised
    status: Mapped[str] = mapped_column(String(16))  # queued running succeeded failed cancelled
    priority: Mapped[int] = mapped_column(Integer, default=0)
    backend: Mapped[str] = mapped_column(String(8))  # auto cpu cuda npu
    devices_per_node: Mapped[int] = mapped_column(Integer, default=1)
    nodes: Mapped[int] = mapped_column(Integer, default=1)
    launcher: Mapped[str] = mapped_column(String(16), default="local")
    max_restarts: Mapped[int] = mapped_column(Integer, default=3)
    restarts: Mapped[int] = mapped_column(Integer, default=0)
    time_limit_s: Mapped[float | None] = mapped_column(Double, nullable=True)
    queue_time_limit_s: Mapped[float | None] = mapped_column(Double, nullable=True)
    webhook_url: Mapped[str | None] = mapped_column(Text, nullable=True)
    pending_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    failure_class: Mapped[str | None] = mapped_column(String(16), nullable=True)
    failure_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    token_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    created_at: Mapped[float] = mapped_column(Double)
    queued_at: Mapped[float] = mapped_column(Double)  # start of the current wait (queue time limit)
    started_at: Mapped[float | None] = mapped_column(Double, nullable=True)
    finished_at: Mapped[float | None] = mapped_column(Double, nullable=True)
    updated_at: Mapped[float] = mapped_column(Double)

    __table_args__ = (Index("ix_jobs_claim", "status", "priority", "id"),)


class JobLabel(Base):
    __tablename__ = "job_labels"
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[str] = mapped_column(String(200))

    __table_args__ = (Index("ix_job_labels_kv", "key", "value"),)


class Stage(Base):
    """One stage of a job = one run of an engine command with its own run directory."""
    __tablename__ = "stages"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))
    config: Mapped[dict] = mapped_column(JSON)  # validated, ${...} references unresolved
    resolved_config: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    status: Mapped[str] = mapped_column(String(16))  # pending running succeeded failed cancelled
    run_dir: Mapped[str] = mapped_column(Text)
    step: Mapped[int | None] = mapped_column(Integer, nullable=True)
    total_steps: Mapped[int | None] = mapped_column(Integer, nullable=True)
    eta_s: Mapped[float | None] = mapped_column(Double, nullable=True)
    phase: Mapped[str | None] = mapped_column(String(64), nullable=True)
    metrics_offset: Mapped[int] = mapped_column(BigInteger, default=0)  # bytes of metrics.jsonl ingested
    summary: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    inputs: Mapped[list | None] = mapped_column(JSON, nullable=True)  # resolved references + result.json inputs
    exit_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    launch_id: Mapped[str | None] = mapped_column(String(64), nullable=True)  # pid, Slurm job id, ...
    started_at: Mapped[float | None] = mapped_column(Double, nullable=True)
    finished_at: Mapped[float | None] = mapped_column(Double, nullable=True)

    __table_args__ = (UniqueConstraint("job_id", "position"), UniqueConstraint("job_id", "name"))


class Attempt(Base):
    __tablename__ = "attempts"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))  # queued running succeeded failed cancelled lost
    worker_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_token: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_expires_at: Mapped[float | None] = mapped_column(Double, nullable=True, index=True)
    stage_name: Mapped[str | None] = mapped_column(String(64), nullable=True)
    exit_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    failure_class: Mapped[str | None] = mapped_column(String(16), nullable=True)  # user infra preempted
    failure_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[float] = mapped_column(Double)
    started_at: Mapped[float | None] = mapped_column(Double, nullable=True)
    heartbeat_at: Mapped[float | None] = mapped_column(Double, nullable=True)
    finished_at: Mapped[float | None] = mapped_column(Double, nullable=True)

    __table_args__ = (UniqueConstraint("job_id", "number"),)


class Event(Base):
    """Append-only state changes of a job."""
    __tablename__ = "events"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    time: Mapped[float] = mapped_column(Double)
    type: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text)
    attempt: Mapped[int | None] = mapped_column(Integer, nullable=True)
    data: Mapped[dict | None] = mapped_column(JSON, nullable=True)


class LogLine(Base):
    __tablename__ = "log_lines"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)  # = SSE event id
    job_id: Mapped[str] = mapped_column(String(32))
    stage_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    attempt: Mapped[int | None] = mapped_column(Integer, nullable=True)
    stream: Mapped[str] = mapped_column(String(8))  # stdout stderr system
    time: Mapped[float] = mapped_column(Double)
    line: Mapped[str] = mapped_column(Text)

    __table_args__ = (Index("ix_log_lines_job", "job_id", "id"),)


class MetricPoint(Base):
    """One value of one key of one metrics.jsonl line (downsampled in SQL by step buckets)."""
    __tablename__ = "metric_points"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(32), index=True)
    stage_id: Mapped[str] = mapped_column(String(32))
    split: Mapped[str] = mapped_column(String(32))
    key: Mapped[str] = mapped_column(String(64))
    step: Mapped[int] = mapped_column(BigInteger)
    value: Mapped[float] = mapped_column(Double)
    time: Mapped[float | None] = mapped_column(Double, nullable=True)

    __table_args__ = (Index("ix_metric_points_series", "stage_id", "key", "split", "step"),)


class Artifact(Base):
    __tablename__ = "artifacts"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    stage_id: Mapped[str] = mapped_column(ForeignKey("stages.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(128))
    type: Mapped[str] = mapped_column(String(32))
    path: Mapped[str] = mapped_column(Text)  # absolute
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[float] = mapped_column(Double)


class Worker(Base):
    __tablename__ = "workers"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    devices: Mapped[dict] = mapped_column(JSON)  # {"cpu": n, "cuda": n, "npu": n}
    launchers: Mapped[list] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16))  # idle busy stopped
    current_job_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    started_at: Mapped[float] = mapped_column(Double)
    heartbeat_at: Mapped[float] = mapped_column(Double, index=True)


class ApiToken(Base):
    __tablename__ = "api_tokens"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 hex; the token is never stored
    scope: Mapped[str] = mapped_column(String(8))  # read submit admin
    created_at: Mapped[float] = mapped_column(Double)
    revoked_at: Mapped[float | None] = mapped_column(Double, nullable=True)


class IdempotencyKey(Base):
    __tablename__ = "idempotency_keys"
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    created_at: Mapped[float] = mapped_column(Double, index=True)


class WebhookDelivery(Base):
    """Outbox: written with the terminal state change, delivered (with retries) afterwards."""
    __tablename__ = "webhook_deliveries"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    url: Mapped[str] = mapped_column(Text)
    event: Mapped[str] = mapped_column(String(32))
    payload: Mapped[dict] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16))  # pending delivered failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[float] = mapped_column(Double)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    response_status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[float] = mapped_column(Double)
    delivered_at: Mapped[float | None] = mapped_column(Double, nullable=True)

    __table_args__ = (Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),)
