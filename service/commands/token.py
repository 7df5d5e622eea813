"""`tinyforge token`: API tokens (stored hashed; a token is printed once, when created)."""
from __future__ import annotations

import time

import click

from service import auth
from service.commands._common import settings_options
from service.db import Database, migrate


def _db(settings) -> Database:
    settings.ensure_home()
    migrate.upgrade(settings.url)
    return Database(settings.url)


@click.group()
def token():
    """Create, list and revoke API tokens."""


@token.command()
@click.option("--scope", type=click.Choice(auth.SCOPES), required=True,
              help="read: look; submit: also submit/cancel/retry; admin: also manage tokens")
@click.option("--name", default="", help="a label to recognise the token by")
@settings_options
def create(scope, name, settings):
    """Create a token and print it on stdout (only this once)."""
    secret, _ = auth.create_token(_db(settings), scope, name)
    click.echo(secret)


@token.command("list")
@settings_options
def list_(settings):
    """List tokens (never the tokens themselves)."""
    for t in auth.list_tokens(_db(settings)):
        state = "revoked" if t.revoked_at else "active"
        click.echo(f"{t.id}  {t.scope:6}  {state:7}  {time.strftime('%Y-%m-%d %H:%M', time.gmtime(t.created_at))}"
                   f"  {t.name}")


@token.command()
@click.argument("token_id")
@settings_options
def revoke(token_id, settings):
    """Revoke a token by its id (see `token list`)."""
    if not auth.revoke_token(_db(settings), token_id):
        raise click.ClickException(f"token {token_id} not found or already revoked")
    click.echo(f"revoked {token_id}")
