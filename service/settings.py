"""Service settings: environment variables are the defaults, command-line flags override them."""
from __future__ import annotations

import functools
import os
import shlex
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

# the bundled sample corpus (data/sample next to the packages) is a data root by default
SAMPLE_CORPUS = Path(__file__).resolve().parents[1] / "data" / "sample"


def default_home() -> Path:
    # the engine's default too (engine/paths.py): `tinyforge serve` in a checkout shows what `make demo` ran
    return Path(os.environ.get("TINYFORGE_HOME") or ".tinyforge").expanduser().resolve()


@dataclass(frozen=True)
class Settings:
    home: Path = field(default_factory=default_home)
    database_url: str = ""  # "" = sqlite file in home
    data_roots: tuple[Path, ...] = ()  # () = (home, bundled sample corpus)
    # argv prefix of engine commands: prefix + [kind, "--config", FILE, "--out", DIR]
    engine_command: tuple[str, ...] = (sys.executable, "-m", "tinyforge.cli")
    # "module:attr" of the {kind: "module:Class"} registry of stage config schemas
    stage_specs: str = "engine.spec:STAGE_SPECS"
    lease_s: float = 60.0  # a running attempt's lease; extended by every heartbeat
    heartbeat_s: float = 1.0  # worker flushes logs/metrics and extends its lease this often
    worker_timeout_s: float = 30.0  # a worker silent this long no longer counts for scheduling
    poll_s: float = 1.0  # idle worker's claim interval
    cancel_grace_s: float = 30.0  # SIGTERM -> SIGKILL
    housekeeping_s: float = 2.0  # lease sweep, queue time limits, pending reasons, webhooks
    max_body_bytes: int = 1 << 20
    idempotency_ttl_s: float = 7 * 24 * 3600.0
    webhook_secret: str = ""  # "" = generated once into home/webhook.secret
    webhook_max_attempts: int = 8
    token_cache_s: float = 5.0  # revoked tokens stop working within this many seconds
    api_threads: int = 40  # request threads (blocking handlers); fewer contend less for the GIL

    @classmethod
    def from_env(cls, **overrides) -> "Settings":
        env = os.environ
        kw: dict = {}
        if env.get("TINYFORGE_DATABASE_URL"):
            kw["database_url"] = env["TINYFORGE_DATABASE_URL"]
        if env.get("TINYFORGE_DATA_ROOTS"):
            kw["data_roots"] = tuple(Path(p).expanduser() for p in env["TINYFORGE_DATA_ROOTS"].split(":") if p)
        if env.get("TINYFORGE_ENGINE_COMMAND"):
            kw["engine_command"] = tuple(shlex.split(env["TINYFORGE_ENGINE_COMMAND"]))
        if env.get("TINYFORGE_STAGE_SPECS"):
            kw["stage_specs"] = env["TINYFORGE_STAGE_SPECS"]
        if env.get("TINYFORGE_WEBHOOK_SECRET"):
            kw["webhook_secret"] = env["TINYFORGE_WEBHOOK_SECRET"]
        for name, conv in (("lease_s", float), ("heartbeat_s", float), ("worker_timeout_s", float),
                           ("poll_s", float), ("cancel_grace_s", float), ("housekeeping_s", float),
                           ("max_body_bytes", int), ("token_cache_s", float), ("api_threads", int)):
            value = env.get(f"TINYFORGE_{name.upper()}")
            if value:
                kw[name] = conv(value)
        kw.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**kw)

    def with_(self, **kw) -> "Settings":
        return replace(self, **{k: v for k, v in kw.items() if v is not None})

    @property
    def url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'tinyforge.db'}"

    @functools.cached_property
    def roots(self) -> tuple[Path, ...]:
        roots = self.data_roots or (self.home, SAMPLE_CORPUS)
        return tuple(Path(r).expanduser().resolve() for r in roots)

    @property
    def runs_dir(self) -> Path:
        return self.home / "runs"

    def ensure_home(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.runs_dir.mkdir(exist_ok=True)

    def secret(self) -> bytes:
        """HMAC key of webhook signatures."""
        if self.webhook_secret:
            return self.webhook_secret.encode()
        path = self.home / "webhook.secret"
        if not path.exists():  # first use: write aside, then link, so readers never see a partial file
            self.ensure_home()
            tmp = path.with_name(f".webhook.secret.{os.getpid()}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(os.urandom(32).hex())
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass  # another process won the race
            finally:
                tmp.unlink()
        return path.read_text().strip().encode()
