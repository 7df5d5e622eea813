"""Service settings: the TINYFORGE_* environment variables (pydantic-settings; a bad value is refused
naming the variable and what it expected) are the defaults, command-line flags override them."""
from __future__ import annotations

import base64
import functools
import os
import shlex
import sys
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field, ValidationError
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# the bundled sample corpus (data/sample next to the packages) is a data root by default
BUNDLED_DATA = Path(__file__).resolve().parents[1] / "data"  # the shipped corpora: data/sample and data/corpus
ENV_PREFIX = "TINYFORGE_"
WHSEC = "whsec_"  # Standard Webhooks' prefix of a base64 secret


def default_home() -> Path:
    # the engine's default too (engine/paths.py): `tinyforge serve` in a checkout shows what `make demo` ran
    return Path(os.environ.get("TINYFORGE_HOME") or ".tinyforge").expanduser().resolve()


def _split(sep_split):
    # environment values are plain strings (not JSON): "a:b:c" paths, a shell-quoted command line
    return BeforeValidator(lambda v: tuple(x for x in sep_split(v) if x) if isinstance(v, str) else v)


Paths = Annotated[tuple[Path, ...], NoDecode, _split(lambda v: v.split(":"))]
Argv = Annotated[tuple[str, ...], NoDecode, _split(shlex.split)]
Seconds = Annotated[float, Field(gt=0)]


class SettingsError(ValueError):
    """A TINYFORGE_* variable (or the flag that overrides it) holds a value the service cannot use."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_ignore_empty=True, frozen=True, extra="forbid")

    home: Annotated[Path, AfterValidator(lambda p: p.expanduser().resolve())] = Field(default_factory=default_home)
    database_url: str = ""  # "" = sqlite file in home
    data_roots: Paths = ()  # () = (home, bundled sample corpus); colon-separated in the environment
    # argv prefix of engine commands: prefix + [kind, "--config", FILE, "--out", DIR]
    engine_command: Argv = (sys.executable, "-m", "tinyforge.cli")
    # "module:attr" of the {kind: "module:Class"} registry of stage config schemas
    stage_specs: str = "engine.spec:STAGE_SPECS"
    lease_s: Seconds = 60.0  # a running attempt's lease; extended by every heartbeat
    heartbeat_s: Seconds = 1.0  # worker flushes logs/metrics and extends its lease this often
    worker_timeout_s: Seconds = 30.0  # a worker silent this long no longer counts for scheduling
    poll_s: Seconds = 1.0  # idle worker's claim interval
    cancel_grace_s: Seconds = 30.0  # SIGTERM -> SIGKILL
    housekeeping_s: Seconds = 2.0  # lease sweep, queue time limits, pending reasons, webhooks
    max_body_bytes: Annotated[int, Field(gt=0)] = 1 << 20
    idempotency_ttl_s: Seconds = 7 * 24 * 3600.0
    webhook_secret: str = ""  # "whsec_BASE64" (Standard Webhooks) or any text; "" = generated into home
    webhook_max_attempts: Annotated[int, Field(ge=1)] = 8
    token_cache_s: Annotated[float, Field(ge=0)] = 5.0  # revoked tokens stop working within this many seconds
    api_threads: Annotated[int, Field(ge=1)] = 40  # request threads (blocking handlers); fewer contend less for the GIL

    def __init__(self, **kw: Any):
        try:
            super().__init__(**kw)
        except ValidationError as exc:
            raise SettingsError("; ".join(
                f"{ENV_PREFIX}{'_'.join(map(str, e['loc'])).upper()}: {e['msg']} (got {e.get('input')!r})"
                for e in exc.errors())) from None

    @classmethod
    def from_env(cls, **overrides) -> "Settings":
        return cls(**{k: v for k, v in overrides.items() if v is not None})

    def with_(self, **kw) -> "Settings":
        return type(self)(**{**self.model_dump(), **{k: v for k, v in kw.items() if v is not None}})

    @property
    def url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'tinyforge.db'}"

    @functools.cached_property
    def roots(self) -> tuple[Path, ...]:
        roots = self.data_roots or (self.home, BUNDLED_DATA)
        return tuple(Path(r).expanduser().resolve() for r in roots)

    @property
    def runs_dir(self) -> Path:
        return self.home / "runs"

    def ensure_home(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.runs_dir.mkdir(exist_ok=True)

    def secret(self) -> bytes:
        """HMAC key of webhook signatures: a `whsec_` secret's base64 bytes, other text as it is."""
        text = self.webhook_secret_text()
        return base64.b64decode(text[len(WHSEC):]) if text.startswith(WHSEC) else text.encode()

    def webhook_secret_text(self) -> str:
        """The secret as configured, or generated once into home/webhook.secret in `whsec_` form (what
        a receiver gives its Standard Webhooks library)."""
        if self.webhook_secret:
            return self.webhook_secret
        path = self.home / "webhook.secret"
        if not path.exists():  # first use: write aside, then link, so readers never see a partial file
            self.ensure_home()
            tmp = path.with_name(f".webhook.secret.{os.getpid()}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(WHSEC + base64.b64encode(os.urandom(32)).decode())
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass  # another process won the race
            finally:
                tmp.unlink()
        return path.read_text().strip()
