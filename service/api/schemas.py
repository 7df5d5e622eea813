"""Response shapes, one model per resource: service/services/views.py builds them, the routes return
them (validated against `response_model=`), service/client.py parses answers into them, and they
document the API in the published OpenAPI spec. Times are seconds since the epoch (UTC).

One word for one execution of a stage of a job: a *stage* (the `stages` table; `stage_id`). Fields
still named `run_id` are the same id under its old name, kept for one release (docs/service.md)."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


def _run_id():
    return Field(description="deprecated: the same as stage_id (its old name); removed in the next release",
                 deprecated=True)


class ErrorItem(BaseModel):
    loc: list[str | int]
    field: str
    msg: str
    type: str


class Problem(BaseModel):
    """RFC 9457 problem details: the body of every error answer (service/api/errors.py)."""
    type: str = Field(description='a URI naming the kind of problem; "about:blank": just the status')
    title: str
    status: int
    detail: str
    instance: str | None = Field(None, description="the request path")
    errors: list[ErrorItem] | None = Field(None, description="bad input: each field and what is wrong with it")


class MessageOut(BaseModel):
    detail: str


class StageOut(BaseModel):
    id: str
    name: str
    kind: str
    status: str
    step: int | None = None
    total_steps: int | None = None
    eta_s: float | None = None
    phase: str | None = None
    exit_code: int | None = None
    started_at: float | None = None
    finished_at: float | None = None
    run_dir: str | None = None
    launch_id: str | None = None
    summary: dict[str, Any] | None = None
    config: dict[str, Any] | None = None
    resolved_config: dict[str, Any] | None = None
    inputs: list[dict[str, Any]] | None = None


class AttemptOut(BaseModel):
    number: int
    status: str
    worker_id: str | None = None
    stage: str | None = None
    exit_code: int | None = None
    failure_class: str | None = None
    failure_reason: str | None = None
    created_at: float
    started_at: float | None = None
    heartbeat_at: float | None = None
    lease_expires_at: float | None = None
    finished_at: float | None = None


class ResourcesOut(BaseModel):
    backend: str
    devices_per_node: int
    nodes: int
    launcher: str
    max_restarts: int
    time_limit: float | None = None
    queue_time_limit: float | None = None
    devices: dict[str, dict[str, Any]] | None = None  # stage -> {kind, ids, env, worker}: its accelerators


class JobOut(BaseModel):
    id: str
    name: str
    labels: dict[str, str]
    status: str
    priority: int
    resources: ResourcesOut
    pending_reason: str | None = None
    failure_class: str | None = None
    failure_reason: str | None = None
    cancel_requested: bool
    restarts: int
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    updated_at: float
    current_stage: str | None = None
    step: int | None = None
    total_steps: int | None = None
    eta_s: float | None = None
    stages: list[StageOut]
    attempts: list[AttemptOut] | None = None
    webhook_url: str | None = None
    spec: dict[str, Any] | None = None
    comparison: dict[str, Any] | None = Field(None, description="a recipe with a scratch control: its held-out "
                                                                "bits/byte against the control's (service/recipe.py)")


class JobListOut(BaseModel):
    items: list[JobOut]
    next_cursor: str | None = None


class PlannedStageOut(BaseModel):
    name: str
    kind: str
    command: str
    config: dict[str, Any]
    references: list[str]
    validated_by: str | None = None


class PlanOut(BaseModel):
    name: str
    stages: list[PlannedStageOut]
    resources: dict[str, Any]
    schedulable: bool
    reason: str | None = Field(None, description="why a running worker cannot take it (absent when one can)")
    reason_code: Literal["no_worker", "no_launcher", "no_device", "idle", "busy"] = Field(
        description="the reason as a code (service/services/placement.py WAIT_CODES); idle and busy are schedulable")


class EventOut(BaseModel):
    id: int
    time: float
    type: str
    message: str
    attempt: int | None = None
    data: dict[str, Any] | None = None


class LogLineOut(BaseModel):
    id: int
    time: float
    stage: str | None = None
    attempt: int | None = None
    stream: str
    line: str


class LogsOut(BaseModel):
    lines: list[LogLineOut]
    next_after: int
    job_status: str


class SeriesOut(BaseModel):
    stage_id: str
    run_id: str = _run_id()
    stage: str | None = None
    key: str
    split: str
    count: int
    downsampled: bool
    points: list[list[float]]  # [step, value] or, downsampled, [last step, mean, min, max]


class MetricsOut(BaseModel):
    job_id: str
    max_points: int
    series: list[SeriesOut]


class ArtifactOut(BaseModel):
    id: str
    job_id: str
    stage_id: str = Field(description="the stage that recorded it")
    run_id: str = _run_id()
    stage: str | None = None
    name: str
    type: str
    path: str
    size_bytes: int
    created_at: float
    download_url: str


class LineageOut(BaseModel):
    stage_id: str
    run_id: str = _run_id()
    nodes: list[dict[str, Any]] = Field(description='{"type": "stage", id, job_id, stage, kind, status} or '
                                                    '{"type": "path", id, path}')
    edges: list[dict[str, Any]]


class WorkerOut(BaseModel):
    id: str
    host: str
    pid: int
    devices: dict[str, int]
    launchers: list[str]
    status: str
    current_job_id: str | None = None
    started_at: float
    heartbeat_at: float


class TokenIn(BaseModel):
    model_config = {"extra": "forbid"}
    scope: Literal["read", "submit", "admin"]
    name: str = Field("", max_length=200)


class TokenOut(BaseModel):
    id: str
    name: str
    scope: str
    created_at: float
    revoked_at: float | None = None
    token: str | None = None  # only in the answer that created it


class WhoamiOut(BaseModel):
    token_id: str
    name: str
    scope: Literal["read", "submit", "admin"]
