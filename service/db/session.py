"""Database connections: SQLite (WAL, one writer at a time) or PostgreSQL.

`db.read()` and `db.write()` are the only ways code gets a session. On SQLite a write transaction
starts with BEGIN IMMEDIATE, so it takes the write lock up front instead of failing to upgrade a
read snapshot later, and writers inside one process queue on a lock rather than on SQLite's
sleeping busy handler (which would add tens of milliseconds to tail latency)."""
from __future__ import annotations

import contextlib
import threading
from pathlib import Path

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import sessionmaker


def normalise_url(url: str) -> str:
    # psycopg 3 is the installed driver; accept the plain scheme users type
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def make_engine(url: str, pre_ping: bool = True) -> Engine:
    url = normalise_url(url)
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30},
                               pool_size=16, max_overflow=32)

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn, _record):
            dbapi_conn.isolation_level = None  # let SQLAlchemy's begin event below emit BEGIN
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process crashes
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            # checkpoints (which fsync) run in housekeeping, off the request path; this is the backstop
            cur.execute("PRAGMA wal_autocheckpoint=20000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn):
            conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("sqlite_write")
                                 else "BEGIN")
        return engine
    # pre_ping costs a round trip per checkout; the API skips it (a dead connection answers 503 once and
    # the pool reconnects), workers keep it (they must ride out a database restart)
    return create_engine(url, pool_size=16, max_overflow=32, pool_pre_ping=pre_ping, pool_recycle=1800)


class Database:
    def __init__(self, url: str, pre_ping: bool = True):
        self.url = normalise_url(url)
        self.engine = make_engine(self.url, pre_ping)
        self.is_sqlite = self.engine.dialect.name == "sqlite"
        self._read = sessionmaker(self.engine, expire_on_commit=False)
        self._write = sessionmaker(self.engine.execution_options(sqlite_write=True), expire_on_commit=False)
        self._write_lock = threading.Lock() if self.is_sqlite else contextlib.nullcontext()

    @contextlib.contextmanager
    def read(self):
        with self._read() as s:
            yield s

    @contextlib.contextmanager
    def write(self):
        """One transaction: committed when the block ends, rolled back if it raises."""
        with self._write_lock, self._write() as s, s.begin():
            yield s

    def checkpoint(self) -> None:
        """SQLite: copy the write-ahead log into the database file (PASSIVE: writers go on meanwhile)."""
        if not self.is_sqlite:
            return
        raw = self.engine.raw_connection()
        try:
            raw.driver_connection.execute("PRAGMA wal_checkpoint(PASSIVE)")
        finally:
            raw.close()

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def dispose(self) -> None:
        self.engine.dispose()

