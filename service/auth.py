"""Bearer API tokens: random, shown once, stored as sha256; scopes read < submit < admin."""
from __future__ import annotations

import hashlib
import secrets
import threading
import time
from dataclasses import dataclass

from sqlalchemy import select

from service.db import Database
from service.db.models import ApiToken, new_id

SCOPES = ("read", "submit", "admin")
PREFIX = "tf_"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Principal:
    token_id: str
    name: str
    scope: str

    def allows(self, needed: str) -> bool:
        return SCOPES.index(self.scope) >= SCOPES.index(needed)


def create_token(db: Database, scope: str, name: str = "") -> tuple[str, ApiToken]:
    if scope not in SCOPES:
        raise ValueError(f"scope: expected one of {', '.join(SCOPES)}, got {scope!r}")
    token = PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(id=new_id("t"), name=name or scope, token_hash=hash_token(token), scope=scope,
                   created_at=time.time())
    with db.write() as s:
        s.add(row)
    return token, row


def revoke_token(db: Database, token_id: str) -> bool:
    with db.write() as s:
        row = s.get(ApiToken, token_id)
        if row is None or row.revoked_at is not None:
            return False
        row.revoked_at = time.time()
        return True


def list_tokens(db: Database) -> list[ApiToken]:
    with db.read() as s:
        return list(s.scalars(select(ApiToken).order_by(ApiToken.created_at)))


class TokenCache:
    """Looks tokens up by hash; remembers answers for `ttl` seconds so that a read costs no query."""

    def __init__(self, db: Database, ttl: float):
        self.db, self.ttl = db, ttl
        self._cache: dict[str, tuple[float, Principal | None]] = {}
        self._lock = threading.Lock()

    def lookup(self, token: str) -> Principal | None:
        h = hash_token(token)
        now = time.monotonic()
        hit = self._cache.get(h)
        if hit and now - hit[0] < self.ttl:
            return hit[1]
        with self.db.read() as s:
            row = s.scalar(select(ApiToken).where(ApiToken.token_hash == h))
        principal = (Principal(row.id, row.name, row.scope)
                     if row is not None and row.revoked_at is None else None)
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[h] = (now, principal)
        return principal


def bootstrap_admin_token(db: Database, path) -> bool:
    """On a database without tokens, create an admin token and write it to `path` (mode 0600), so that the
    first user and the CLI on this machine can sign in. Returns whether it did."""
    import os
    with db.read() as s:
        if s.scalar(select(ApiToken.id).limit(1)) is not None:
            return False
    token, _ = create_token(db, "admin", "bootstrap (serve)")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return True
