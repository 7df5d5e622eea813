"""Prometheus metrics through prometheus_client: request counters and latency histograms observed by
the AccessLog middleware, gauges read from the database at scrape time (a custom collector, so every
API process reports the same shared state), process and Python metrics, and tinyforge_build_info.
One registry per app, so several apps in one process (tests) never share counters."""
from __future__ import annotations

import platform
import time
from importlib import metadata

from prometheus_client import CollectorRegistry, Counter, Histogram, Info, PlatformCollector, ProcessCollector
from prometheus_client import disable_created_metrics
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from sqlalchemy import func, select

from service.db import Database
from service.db.models import Job, WebhookDelivery, Worker

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
disable_created_metrics()  # no *_created series: the exposition keeps the names it always had


def version() -> str:
    try:
        return metadata.version("tinyforge")
    except metadata.PackageNotFoundError:  # a checkout that was never installed
        return "0+unknown"


class DatabaseCollector:
    """Jobs by status, queue depth, worker heartbeats and the webhook outbox, read at each scrape."""

    def __init__(self, db: Database, worker_timeout_s: float):
        self.db, self.worker_timeout_s = db, worker_timeout_s

    def describe(self):
        return []  # the values need the database: read nothing at registration

    def collect(self):
        now = time.time()
        with self.db.read() as s:
            by_status = dict(s.execute(select(Job.status, func.count()).group_by(Job.status)).all())
            workers = list(s.scalars(select(Worker).where(Worker.status != "stopped")))
            outbox = s.scalar(select(func.count()).select_from(WebhookDelivery)
                              .where(WebhookDelivery.status == "pending")) or 0
        jobs = GaugeMetricFamily("tinyforge_jobs", "jobs by status", labels=["status"])
        for status in JOB_STATUSES:
            jobs.add_metric([status], by_status.get(status, 0))
        yield jobs
        yield GaugeMetricFamily("tinyforge_queue_depth", "queued jobs", value=by_status.get("queued", 0))
        yield GaugeMetricFamily("tinyforge_workers_alive", "workers that heartbeated within the timeout",
                                value=sum(w.heartbeat_at > now - self.worker_timeout_s for w in workers))
        age = GaugeMetricFamily("tinyforge_worker_heartbeat_age_seconds", "seconds since each worker's last "
                                "heartbeat", labels=["worker", "status"])
        for w in workers:
            age.add_metric([w.id, w.status], round(max(0.0, now - w.heartbeat_at), 3))
        yield age
        yield GaugeMetricFamily("tinyforge_webhooks_pending", "webhook deliveries waiting in the outbox", value=outbox)


class Metrics:
    def __init__(self, db: Database, worker_timeout_s: float, schema_head: str = ""):
        self.registry = CollectorRegistry()
        self.requests = Counter("tinyforge_http_requests", "HTTP requests by route and status",
                                ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram("tinyforge_http_request_duration_seconds", "request latency", ["method", "route"],
                                 buckets=BUCKETS, registry=self.registry)
        Info("tinyforge_build", "the running tinyforge", registry=self.registry).info(
            {"version": version(), "python": platform.python_version(), "schema": schema_head})
        ProcessCollector(registry=self.registry)  # process_cpu_seconds_total, process_resident_memory_bytes, ...
        PlatformCollector(registry=self.registry)  # python_info
        self.registry.register(DatabaseCollector(db, worker_timeout_s))

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """The page and its content type: OpenMetrics when the scraper asks for it, else Prometheus text."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type
