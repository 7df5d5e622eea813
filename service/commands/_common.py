"""Options shared by the service commands: flags override the TINYFORGE_* environment variables."""
from __future__ import annotations

import functools
import logging
from pathlib import Path

import click

from service.settings import Settings


def settings_options(fn):
    @click.option("--home", type=click.Path(path_type=Path), default=None,
                  help="state directory (env TINYFORGE_HOME; default ./.tinyforge)")
    @click.option("--database-url", default=None,
                  help="sqlite:///FILE or postgresql://... (env TINYFORGE_DATABASE_URL; default SQLite in home)")
    @functools.wraps(fn)
    def wrapper(*args, home, database_url, **kw):
        return fn(*args, settings=Settings.from_env(home=home, database_url=database_url), **kw)
    return wrapper


def setup_logging(level: str = "info") -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
