"""An attempt's lease: the one place that decides whether this worker may still write for an attempt.

Every write of a running attempt goes through `Lease.write()`, which first extends the lease for the
attempt's token in the same transaction (a fenced write): a worker whose lease was taken over (the
housekeeper requeued the attempt) gets `LeaseLost` and must stop its process and write nothing more.
`retrying` carries a write (or read) through database outages until the lease would have expired, so
an outage at any moment neither kills the worker nor leaves a started stage unwatched. The attempt
runner and the stage monitor both receive the same Lease."""
from __future__ import annotations

import contextlib
import logging
import time
from typing import Callable, TypeVar

from sqlalchemy import update
from sqlalchemy.exc import SQLAlchemyError

from service.db import Database
from service.db.models import Attempt
from service.worker.claiming import Claim

log = logging.getLogger("tinyforge.worker")
T = TypeVar("T")


class LeaseLost(Exception):
    """Another worker may now own the attempt: stop, write nothing more."""


class Lease:
    def __init__(self, db: Database, claim: Claim, lease_s: float, retry_s: float):
        self.db, self.claim, self.lease_s = db, claim, lease_s
        self.retry_s = min(1.0, retry_s)  # pause between tries while the database is out
        self.last_ok = time.time()  # the last time the lease was extended

    @property
    def attempt(self) -> int:
        """The attempt's number (1, 2, ...), as logs and events name it."""
        return self.claim.number

    def expired(self, now: float | None = None) -> bool:
        """No extension for longer than the lease: the housekeeper may have requeued the attempt."""
        return (now or time.time()) - self.last_ok > self.lease_s

    def _extend(self, s, now: float) -> None:
        moved = s.execute(update(Attempt).where(Attempt.id == self.claim.attempt_id,
                                                Attempt.lease_token == self.claim.token,
                                                Attempt.status == "running")
                          .values(lease_expires_at=now + self.lease_s, heartbeat_at=now)).rowcount
        if moved != 1:
            raise LeaseLost(f"attempt {self.claim.number} of job {self.claim.job_id} lost its lease")

    @contextlib.contextmanager
    def write(self):
        """A transaction that commits only while this attempt still holds its lease (and extends it)."""
        now = time.time()
        with self.db.write() as s:
            self._extend(s, now)
            yield s
        self.last_ok = now

    def retrying(self, fn: Callable[[], T]) -> T:
        """fn() (a fenced write or a read), retried through database errors until the lease would have
        expired; then LeaseLost."""
        while True:
            try:
                return fn()
            except LeaseLost:
                raise
            except SQLAlchemyError as exc:
                if self.expired():
                    raise LeaseLost(f"database unreachable for longer than the lease: {exc}") from None
                log.warning("database write failed, retrying: %s", exc)
                time.sleep(self.retry_s)
