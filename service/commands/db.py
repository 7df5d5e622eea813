"""`tinyforge db`: database migrations."""
from __future__ import annotations

import click

from service.commands._common import settings_options
from service.db import migrate


@click.group()
def db():
    """Database schema: upgrade, downgrade, show the revision."""


@db.command()
@click.argument("revision", default="head")
@settings_options
def upgrade(revision, settings):
    """Migrate the database up to REVISION (default: head)."""
    settings.ensure_home()
    migrate.upgrade(settings.url, revision)
    click.echo(f"database at {migrate.current(settings.url)}")


@db.command()
@click.argument("revision")
@settings_options
def downgrade(revision, settings):
    """Migrate the database down to REVISION (`base` removes every table)."""
    migrate.downgrade(settings.url, revision)
    click.echo(f"database at {migrate.current(settings.url) or 'base'}")


@db.command()
@settings_options
def current(settings):
    """Print the database's revision and the newest one this version knows."""
    click.echo(f"current: {migrate.current(settings.url) or 'base'}\nhead:    {migrate.head()}")
