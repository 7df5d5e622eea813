"""Metric series of a job's stages, downsampled in SQL so a chart never receives more than
`max_points` points per series whatever the run's length.

Points fall into `max_points` equal step ranges; each bucket returns its last step and the mean,
min and max of its values (a chart can draw the band)."""
from __future__ import annotations

from sqlalchemy import func, select

from service.db import Database
from service.db.models import Job, MetricPoint, Stage
from service.api.schemas import MetricsOut, SeriesOut
from service.services.jobs import NotFound


def series(db: Database, job_id: str, keys: list[str] | None = None, max_points: int = 500,
           stage: str | None = None, split: str | None = None) -> MetricsOut:
    with db.read() as s:
        if s.get(Job, job_id) is None:
            raise NotFound(f"job {job_id} not found")
        stages = {st.id: st for st in s.scalars(select(Stage).where(Stage.job_id == job_id))}
        q = (select(MetricPoint.stage_id, MetricPoint.key, MetricPoint.split, func.count(), func.min(MetricPoint.step),
                    func.max(MetricPoint.step))
             .where(MetricPoint.job_id == job_id)
             .group_by(MetricPoint.stage_id, MetricPoint.key, MetricPoint.split))
        if keys:
            q = q.where(MetricPoint.key.in_(keys))
        if split:
            q = q.where(MetricPoint.split == split)
        if stage:
            q = q.where(MetricPoint.stage_id.in_([i for i, st in stages.items() if st.name == stage]))
        out = []
        for stage_id, key, sp, count, lo, hi in s.execute(q).all():
            where = (MetricPoint.stage_id == stage_id, MetricPoint.key == key, MetricPoint.split == sp)
            if count <= max_points:
                rows = s.execute(select(MetricPoint.step, MetricPoint.value).where(*where)
                                 .order_by(MetricPoint.step, MetricPoint.id)).all()
                points = [[st_, v] for st_, v in rows]
            else:
                bucket = (MetricPoint.step - lo) * max_points // (hi - lo + 1)  # floor division in SQL
                rows = s.execute(select(func.max(MetricPoint.step), func.avg(MetricPoint.value),
                                        func.min(MetricPoint.value), func.max(MetricPoint.value))
                                 .where(*where).group_by(bucket).order_by(func.max(MetricPoint.step))).all()
                points = [[st_, v, mn, mx] for st_, v, mn, mx in rows]
            st = stages.get(stage_id)
            out.append(SeriesOut(stage_id=stage_id, run_id=stage_id, stage=st.name if st else None, key=key, split=sp,
                                 count=count, downsampled=count > max_points, points=points))
    out.sort(key=lambda x: (stages[x.stage_id].position if x.stage_id in stages else 0, x.key, x.split))
    return MetricsOut(job_id=job_id, max_points=max_points, series=out)
