"""The FastAPI application: routers, error handlers, middleware, and background threads
(housekeeping; with `embedded_worker`, one worker in the same process)."""
from __future__ import annotations

import contextlib
import logging
import threading

import anyio.to_thread
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from service import dashboard, planning
from service.api import artifacts, errors, health, jobs, stages, tokens, workers
from service.api.schemas import Problem
from service.api.middleware import AccessLog, BodyLimit
from service.auth import TokenCache
from service.db import Database
from service.db import migrate as migrations
from service.jobspec import JobSpec
from service.prom import Metrics
from service.services import housekeeping
from service.services.placement import WorkerSnapshot
from service.settings import Settings

log = logging.getLogger("tinyforge.api")


def _housekeeping_loop(db: Database, settings: Settings, stop: threading.Event) -> None:
    while not stop.wait(settings.housekeeping_s):
        housekeeping.run_once(db, settings)


def create_app(settings: Settings | None = None, *, embedded_worker: bool = False, migrate: bool = True,
               worker_options: dict | None = None) -> FastAPI:
    settings = settings or Settings.from_env()
    planning.stage_schemas(settings.stage_specs)  # a kind without a loadable schema stops the server here
    settings.ensure_home()
    if migrate:
        migrations.upgrade(settings.url)
    db = Database(settings.url, pre_ping=embedded_worker)  # an embedded worker must survive a restart
    stop = threading.Event()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.api_threads
        threads = [threading.Thread(target=_housekeeping_loop, args=(db, settings, stop), daemon=True,
                                    name="housekeeping")]
        worker = None
        if embedded_worker:
            from service.worker.worker import Worker
            worker = Worker(db, settings, **(worker_options or {}))
            app.state.worker = worker
            threads.append(threading.Thread(target=worker.run, daemon=True, name="embedded-worker"))
        for t in threads:
            t.start()
        try:
            yield
        finally:
            stop.set()
            if worker is not None:
                worker.stop.set()  # the running stage checkpoints and the job is requeued
            for t in threads:
                t.join(settings.cancel_grace_s + 10)
            db.dispose()

    app = FastAPI(title="tinyforge", version="1", lifespan=lifespan,
                  description="Control plane of tinyforge: submit and watch training jobs (docs/service.md).")
    app.state.settings, app.state.db = settings, db
    app.state.tokens = TokenCache(db, settings.token_cache_s)
    app.state.workers = WorkerSnapshot(db, settings.worker_timeout_s)
    app.state.schema_head = migrations.head()
    app.state.stats = Metrics(db, settings.worker_timeout_s, app.state.schema_head)
    errors.install(app)
    for r in (health.router, jobs.router, stages.router, artifacts.router, workers.router, tokens.router):
        app.include_router(r)
    dashboard.mount(app)  # the web UI at /ui/, over the same public API
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(AccessLog, stats=app.state.stats)  # outermost: a 413 is counted and logged too

    def openapi():
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            job_spec = JobSpec.model_json_schema(ref_template="#/components/schemas/{model}")
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(job_spec.pop("$defs", {}))
            components["JobSpec"] = job_spec
            errors.document(schema, Problem.model_json_schema(ref_template="#/components/schemas/{model}"))
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
    return app
