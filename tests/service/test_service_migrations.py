"""Alembic migrations up and down, on a fresh database and on one holding data, SQLite and PostgreSQL."""
from __future__ import annotations

import time

from sqlalchemy import inspect, text

from service.db import migrate
from service.db.session import make_engine

TABLES = {"jobs", "job_labels", "stages", "attempts", "events", "log_lines", "metric_points", "artifacts", "workers",
          "api_tokens", "idempotency_keys", "webhook_deliveries"}


def tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def columns(url: str, table: str) -> set[str]:
    engine = make_engine(url)
    try:
        return {c["name"] for c in inspect(engine).get_columns(table)}
    finally:
        engine.dispose()


def populate_0001(url: str) -> None:
    """Rows as the 0001 schema has them (plain SQL: today's models may have moved on)."""
    now = time.time()
    engine = make_engine(url)
    with engine.begin() as c:
        c.execute(text("INSERT INTO jobs (id, name, spec, status, priority, backend, devices_per_node, nodes, launcher,"
                       " max_restarts, restarts, cancel_requested, created_at, queued_at, updated_at) VALUES"
                       " ('j1', 'old job', '{\"name\": \"old job\"}', 'succeeded', 0, 'cpu', 1, 1, 'local', 3, 0,"
                       " false, :t, :t, :t)"), {"t": now})
        c.execute(text("INSERT INTO job_labels (job_id, key, value) VALUES ('j1', 'team', 'a')"))
        c.execute(text("INSERT INTO stages (id, job_id, position, name, kind, config, status, run_dir, metrics_offset,"
                       " summary) VALUES ('r1', 'j1', 0, 'train', 'train', '{}', 'succeeded', '/runs/j1/00-train', 10,"
                       " '{\"final_loss\": 1.5}')"))
        c.execute(text("INSERT INTO attempts (id, job_id, number, status, created_at) VALUES ('a1', 'j1', 1,"
                       " 'succeeded', :t)"), {"t": now})
        c.execute(text("INSERT INTO log_lines (job_id, stage_id, attempt, stream, time, line) VALUES"
                       " ('j1', 'r1', 1, 'stdout', :t, 'hello')"), {"t": now})
        c.execute(text("INSERT INTO metric_points (job_id, stage_id, split, key, step, value) VALUES"
                       " ('j1', 'r1', 'train', 'loss', 1, 2.5)"))
        c.execute(text("INSERT INTO idempotency_keys (key, request_hash, job_id, created_at) VALUES"
                       " ('k', 'h', 'j1', :t)"), {"t": now})
    engine.dispose()


def rows(url: str) -> dict:
    engine = make_engine(url)
    with engine.connect() as c:
        out = {"job": c.execute(text("SELECT name, status FROM jobs")).all(),
               "stage": c.execute(text("SELECT name, metrics_offset FROM stages")).all(),
               "log": c.execute(text("SELECT line FROM log_lines")).all(),
               "metric": c.execute(text("SELECT key, value FROM metric_points")).all(),
               "key": c.execute(text("SELECT key, job_id FROM idempotency_keys")).all()}
    engine.dispose()
    return {k: [tuple(r) for r in v] for k, v in out.items()}


def test_fresh_database_up_and_down(db_url):
    migrate.upgrade(db_url)
    assert migrate.current(db_url) == migrate.head() == "0002"
    assert tables(db_url) == TABLES
    migrate.downgrade(db_url, "base")
    assert migrate.current(db_url) is None and tables(db_url) == set()
    migrate.upgrade(db_url)
    assert tables(db_url) == TABLES


def test_populated_database_keeps_its_data_across_migrations(db_url):
    migrate.upgrade(db_url, "0001")
    populate_0001(db_url)
    before = rows(db_url)
    assert before["job"] == [("old job", "succeeded")]
    migrate.upgrade(db_url)  # 0001 -> 0002 on a database with data
    assert "launch_id" in columns(db_url, "stages") and rows(db_url) == before
    migrate.downgrade(db_url, "0001")
    assert "launch_id" not in columns(db_url, "stages") and rows(db_url) == before
    migrate.upgrade(db_url)
    assert rows(db_url) == before
    migrate.downgrade(db_url, "base")  # all the way down, with data in every table
    assert tables(db_url) == set()
