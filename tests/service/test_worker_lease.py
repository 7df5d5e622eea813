"""The attempt's lease (service/worker/lease.py) on a real database: a write extends it; once another
token owns the attempt, a write raises LeaseLost and commits nothing; an outage longer than the lease ends
in LeaseLost instead of retrying forever."""
from __future__ import annotations


import pytest
from sqlalchemy import select, update
from sqlalchemy.exc import OperationalError

from service.db import Database, migrate
from service.db.models import Attempt, Job
from service.services import jobs
from service.services.placement import WorkerSnapshot
from service.settings import Settings
from service.worker import claiming
from service.worker.lease import Lease, LeaseLost


@pytest.fixture
def claimed(db_url, tmp_path):
    settings = Settings(home=tmp_path, database_url=db_url, stage_specs="tests.support.fake_specs:STAGE_SPECS",
                        data_roots=(tmp_path,))
    migrate.upgrade(db_url)
    db = Database(db_url)
    jobs.submit(db, settings, WorkerSnapshot(db, 30), {"name": "l", "stages": [{"kind": "train"}]}, None, None)
    claim = claiming.claim(db, "w1", {"cpu": 1}, ("local",), lease_s=30)
    assert claim is not None
    yield db, claim
    db.dispose()


def test_a_write_extends_the_lease_and_a_lost_one_commits_nothing(claimed):
    db, claim = claimed
    lease = Lease(db, claim, lease_s=30, retry_s=0.05)
    with db.read() as s:
        before = s.scalar(select(Attempt.lease_expires_at).where(Attempt.id == claim.attempt_id))
    with lease.write() as s:
        s.execute(update(Job).where(Job.id == claim.job_id).values(name="renamed"))
    with db.read() as s:
        assert s.scalar(select(Attempt.lease_expires_at).where(Attempt.id == claim.attempt_id)) > before
        assert s.scalar(select(Job.name).where(Job.id == claim.job_id)) == "renamed"
    with db.write() as s:  # the housekeeper requeued the attempt and another worker took it
        s.execute(update(Attempt).where(Attempt.id == claim.attempt_id).values(lease_token="someone-else"))
    with pytest.raises(LeaseLost, match=f"attempt {claim.number} of job {claim.job_id} lost its lease"):
        with lease.write() as s:
            s.execute(update(Job).where(Job.id == claim.job_id).values(name="late"))
    with db.read() as s:
        assert s.scalar(select(Job.name).where(Job.id == claim.job_id)) == "renamed"


def test_retrying_gives_up_once_the_lease_would_have_expired(claimed):
    db, claim = claimed
    lease = Lease(db, claim, lease_s=0.3, retry_s=0.05)
    tries = []

    def outage():
        tries.append(1)
        raise OperationalError("SELECT 1", {}, Exception("connection refused"))
    with pytest.raises(LeaseLost, match="database unreachable for longer than the lease"):
        lease.retrying(outage)
    assert len(tries) > 1 and lease.expired()
    answers = iter([OperationalError("SELECT 1", {}, Exception("blip")), None])

    def blip():
        err = next(answers)
        if err:
            raise err
        return "ok"
    fresh = Lease(db, claim, lease_s=30, retry_s=0.05)
    assert fresh.retrying(blip) == "ok"  # a short outage is carried through
