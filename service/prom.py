"""Prometheus text exposition without a client library: request counters and latency histograms
kept in memory, and gauges read from the database at scrape time."""
from __future__ import annotations

import threading
import time
from collections import defaultdict

from sqlalchemy import func, select

from service.db import Database
from service.db.models import Job, WebhookDelivery, Worker

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class RequestStats:
    def __init__(self):
        self._lock = threading.Lock()
        self.count: dict[tuple, int] = defaultdict(int)
        self.hist: dict[tuple, list] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self.count[(method, route, str(status))] += 1
            h = self.hist.setdefault((method, route), [0] * len(BUCKETS) + [0, 0.0])  # buckets, count, sum
            for i, b in enumerate(BUCKETS):
                if seconds <= b:
                    h[i] += 1
            h[-2] += 1
            h[-1] += seconds

    def lines(self) -> list[str]:
        out = ["# HELP tinyforge_http_requests_total HTTP requests by route and status",
               "# TYPE tinyforge_http_requests_total counter"]
        with self._lock:
            for (m, r, s), n in sorted(self.count.items()):
                out.append(f'tinyforge_http_requests_total{{method="{m}",route="{r}",status="{s}"}} {n}')
            out += ["# HELP tinyforge_http_request_duration_seconds request latency",
                    "# TYPE tinyforge_http_request_duration_seconds histogram"]
            for (m, r), h in sorted(self.hist.items()):
                lab = f'method="{m}",route="{r}"'
                for b, n in zip(BUCKETS, h):
                    out.append(f'tinyforge_http_request_duration_seconds_bucket{{{lab},le="{b}"}} {n}')
                out.append(f'tinyforge_http_request_duration_seconds_bucket{{{lab},le="+Inf"}} {h[-2]}')
                out.append(f"tinyforge_http_request_duration_seconds_count{{{lab}}} {h[-2]}")
                out.append(f"tinyforge_http_request_duration_seconds_sum{{{lab}}} {h[-1]:.6f}")
        return out


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(db: Database, stats: RequestStats, worker_timeout_s: float) -> str:
    now = time.time()
    out = ["# HELP tinyforge_jobs jobs by status", "# TYPE tinyforge_jobs gauge"]
    with db.read() as s:
        by_status = dict(s.execute(select(Job.status, func.count()).group_by(Job.status)).all())
        workers = list(s.scalars(select(Worker).where(Worker.status != "stopped")))
        outbox = s.scalar(select(func.count()).select_from(WebhookDelivery)
                          .where(WebhookDelivery.status == "pending")) or 0
    for status in ("queued", "running", "succeeded", "failed", "cancelled"):
        out.append(f'tinyforge_jobs{{status="{status}"}} {by_status.get(status, 0)}')
    out += ["# HELP tinyforge_queue_depth queued jobs", "# TYPE tinyforge_queue_depth gauge",
            f"tinyforge_queue_depth {by_status.get('queued', 0)}",
            "# HELP tinyforge_workers_alive workers that heartbeated within the timeout",
            "# TYPE tinyforge_workers_alive gauge",
            f"tinyforge_workers_alive {sum(w.heartbeat_at > now - worker_timeout_s for w in workers)}",
            "# HELP tinyforge_worker_heartbeat_age_seconds seconds since each worker's last heartbeat",
            "# TYPE tinyforge_worker_heartbeat_age_seconds gauge"]
    for w in workers:
        out.append(f'tinyforge_worker_heartbeat_age_seconds{{worker="{_esc(w.id)}",status="{w.status}"}} '
                   f"{max(0.0, now - w.heartbeat_at):.3f}")
    out += ["# HELP tinyforge_webhooks_pending webhook deliveries waiting in the outbox",
            "# TYPE tinyforge_webhooks_pending gauge", f"tinyforge_webhooks_pending {outbox}"]
    return "\n".join(out + stats.lines()) + "\n"
