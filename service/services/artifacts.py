"""Artifacts (what stages recorded in result.json) and the lineage graph between stages."""
from __future__ import annotations

import os
import tarfile
from collections import deque
from pathlib import Path

from sqlalchemy import or_, select

from service.db import Database
from service.db.models import Artifact, Job, Stage
from service.api.schemas import ArtifactOut, LineageOut
from service.services.jobs import NotFound
from service.services.views import artifact_view


def list_for_job(db: Database, job_id: str) -> list[ArtifactOut]:
    with db.read() as s:
        if s.get(Job, job_id) is None:
            raise NotFound(f"job {job_id} not found")
        names = {st.id: st.name for st in s.scalars(select(Stage).where(Stage.job_id == job_id))}
        rows = s.scalars(select(Artifact).where(Artifact.job_id == job_id).order_by(Artifact.created_at, Artifact.id))
        return [artifact_view(a, names.get(a.stage_id)) for a in rows]


def get(db: Database, artifact_id: str) -> Artifact:
    with db.read() as s:
        a = s.get(Artifact, artifact_id)
    if a is None:
        raise NotFound(f"artifact {artifact_id} not found")
    return a


class _Chunks:
    """A write-only file object whose writes are collected for a streaming response."""

    def __init__(self):
        self.parts: list[bytes] = []

    def write(self, b) -> int:
        self.parts.append(bytes(b))
        return len(b)

    def take(self) -> bytes:
        out, self.parts = b"".join(self.parts), []
        return out


def tar_stream(root: Path):
    """Yield an uncompressed tar of a directory file by file (checkpoints are mostly incompressible)."""
    sink = _Chunks()
    with tarfile.open(fileobj=sink, mode="w|") as tar:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(filenames):
                path = Path(dirpath) / name
                if path.is_symlink():
                    continue  # never follow links out of the run directory
                tar.add(path, arcname=str(Path(root.name) / path.relative_to(root)), recursive=False)
                yield sink.take()
    yield sink.take()


def lineage(db: Database, stage_id: str) -> LineageOut:
    """The stages upstream of a stage (through ${stages...} references and result.json inputs, across jobs
    when an input path is another stage's artifact) and the stages of its job that used it, directly or not."""
    with db.read() as s:
        start = s.get(Stage, stage_id)
        if start is None:
            raise NotFound(f"stage {stage_id} not found")
        nodes: dict[str, dict] = {}
        edges: set[tuple[str, str, str]] = set()

        def stage_node(st: Stage) -> str:
            nodes[st.id] = {"id": st.id, "type": "stage", "job_id": st.job_id, "stage": st.name, "kind": st.kind,
                            "status": st.status}
            return st.id

        def producer(path: str) -> Artifact | None:
            return s.scalar(select(Artifact).where(or_(Artifact.path == path, Artifact.path == path.rstrip("/")))
                            .order_by(Artifact.created_at.desc()).limit(1))

        def source_id(inp: dict) -> str | None:
            return inp.get("stage_id") or inp.get("run_id")  # run_id: what rows written before the rename hold

        todo = deque([start])
        stage_node(start)
        while todo:
            st = todo.popleft()
            for inp in st.inputs or []:
                role = inp.get("key") or inp.get("role") or "input"
                src = s.get(Stage, source_id(inp)) if source_id(inp) else None
                if src is None and inp.get("path"):
                    art = producer(inp["path"])
                    src = s.get(Stage, art.stage_id) if art else None
                if src is not None:
                    if src.id not in nodes:
                        stage_node(src)
                        todo.append(src)
                    edges.add((src.id, st.id, role))
                elif inp.get("path"):
                    pid = "path:" + inp["path"]
                    nodes.setdefault(pid, {"id": pid, "type": "path", "path": inp["path"]})
                    edges.add((pid, st.id, role))
        # downstream within the job: stages that used this stage, or a stage that used it, ...
        below = {start.id}
        for st in s.scalars(select(Stage).where(Stage.job_id == start.job_id, Stage.position > start.position)
                            .order_by(Stage.position)):
            for inp in st.inputs or []:
                if source_id(inp) in below:
                    if st.id not in nodes:
                        stage_node(st)
                    below.add(st.id)
                    edges.add((source_id(inp), st.id, inp.get("key") or "input"))
    return LineageOut(stage_id=stage_id, run_id=stage_id, nodes=list(nodes.values()),
                      edges=[{"from": a, "to": b, "role": r} for a, b, r in sorted(edges)])
