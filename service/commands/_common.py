"""Options shared by the service commands: flags override the TINYFORGE_* environment variables."""
from __future__ import annotations

import functools
import logging
from pathlib import Path

import click

from service.settings import Settings, SettingsError


def settings_options(fn):
    @click.option("--home", type=click.Path(path_type=Path), default=None,
                  help="state directory (env TINYFORGE_HOME; default ./.tinyforge)")
    @click.option("--database-url", default=None,
                  help="sqlite:///FILE or postgresql://... (env TINYFORGE_DATABASE_URL; default SQLite in home)")
    @functools.wraps(fn)
    def wrapper(*args, home, database_url, **kw):
        try:
            settings = Settings.from_env(home=home, database_url=database_url)
        except SettingsError as exc:  # names the variable and what it expected
            raise click.UsageError(str(exc)) from None
        return fn(*args, settings=settings, **kw)
    return wrapper


def log_options(fn):
    @click.option("--log-level", default="info", show_default=True)
    @click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True,
                  help="json: one object a line (time, level, logger, message and the record's fields, e.g. "
                       "route, status, duration_ms, request_id of the access log)")
    @functools.wraps(fn)
    def wrapper(*args, log_level, log_format, **kw):
        setup_logging(log_level, log_format)
        return fn(*args, **kw)
    return wrapper


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler()
    if fmt == "json":
        from pythonjsonlogger.json import JsonFormatter
        handler.setFormatter(JsonFormatter("{asctime}{levelname}{name}{message}", style="{",
                                           rename_fields={"asctime": "time", "levelname": "level", "name": "logger"}))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), handlers=[handler], force=True)
