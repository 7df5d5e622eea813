"""Group commit under contention (threads in one process, real databases): one job per idempotency key,
every thread told the same job id for the same key and body, a conflict for another body."""
from __future__ import annotations

import concurrent.futures as cf
import random

from sqlalchemy import func, select

from service.db import Database, migrate
from service.db.models import Attempt, IdempotencyKey, Job, Stage
from service.services import jobs
from service.services.group_commit import committer
from service.services.jobs import Conflict
from service.services.placement import WorkerSnapshot
from service.settings import Settings


def test_concurrent_submissions_commit_in_batches_without_duplicates(db_url, tmp_path):
    settings = Settings(home=tmp_path, database_url=db_url, stage_specs="tests.support.fake_specs:STAGE_SPECS",
                        data_roots=(tmp_path,))
    migrate.upgrade(db_url)
    db = Database(db_url)
    workers = WorkerSnapshot(db, 30)
    rng = random.Random(0)
    # 400 requests over 40 keys; a key's body is one of two (the second wins only if it came first)
    requests = [(f"key-{rng.randrange(40)}", rng.random() < 0.1) for _ in range(400)] + \
               [(None, False)] * 40

    def one(req):
        key, other_body = req
        spec = {"name": "other" if other_body else "same", "stages": [{"kind": "train", "config": {"steps": 2}}]}
        try:
            job, created = jobs.submit(db, settings, workers, spec, key, None)
            return key, other_body, job.id, created
        except Conflict:
            return key, other_body, "conflict", False

    with cf.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(one, requests))
    batches = committer(db)
    assert batches.writers == 0 and not batches.pending
    assert batches.written == len(requests) and batches.batches < batches.written  # some were written together
    by_key: dict = {}
    for key, other_body, job_id, created in answers:
        if key is not None:
            by_key.setdefault(key, {}).setdefault(other_body, set()).add(job_id)
    with db.read() as s:
        stored = dict(s.execute(select(IdempotencyKey.key, IdempotencyKey.job_id)).all())
        n_jobs = s.scalar(select(func.count()).select_from(Job))
        n_attempts = s.scalar(select(func.count()).select_from(Attempt))
        n_stages = s.scalar(select(func.count()).select_from(Stage))
    assert n_jobs == n_attempts == n_stages == len(stored) + 40  # keyed jobs once each, unkeyed 40
    for key, bodies in by_key.items():
        winner = stored[key]
        ids = {i for v in bodies.values() for i in v} - {"conflict"}
        assert ids == {winner}, (key, bodies)  # everyone with the winning body got the one job
        losers = [v for v in bodies.values() if v == {"conflict"}]
        assert len(losers) <= 1  # the other body was refused, never given a job
    created = sum(1 for a in answers if a[3])
    assert created == n_jobs
    db.dispose()
