"""`tinyforge serve`: the API, with one embedded worker unless --no-worker."""
from __future__ import annotations

import shlex
from pathlib import Path

import click

from service.commands._common import log_options, settings_options


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=int)
@click.option("--worker/--no-worker", "embedded_worker", default=True, show_default=True,
              help="run one worker in the same process (the single-machine default)")
@click.option("--devices", default=None, help="embedded worker's devices, e.g. cpu=2,npu=8 (default: detected)")
@click.option("--data-root", "data_roots", multiple=True, type=click.Path(path_type=Path),
              help="directory job paths may point into; repeat (env TINYFORGE_DATA_ROOTS, colon-separated)")
@click.option("--engine-command", default=None, help="argv prefix of stage commands (env TINYFORGE_ENGINE_COMMAND)")
@log_options
@settings_options
def serve(host, port, embedded_worker, devices, data_roots, engine_command, settings):
    """Serve the REST API (OpenAPI at /docs) on HOST:PORT."""
    import uvicorn

    from service.app import create_app
    from service.auth import bootstrap_admin_token
    from service.db import Database
    from service.worker.worker import parse_devices

    settings = settings.with_(data_roots=tuple(data_roots) or None,
                              engine_command=tuple(shlex.split(engine_command)) if engine_command else None)
    options = {"devices": parse_devices(devices)} if devices else {}
    app = create_app(settings, embedded_worker=embedded_worker, worker_options=options)
    token_file = settings.home / "admin.token"
    db = Database(settings.url)
    if bootstrap_admin_token(db, token_file):
        click.echo(f"created an admin token in {token_file} (the CLI reads it from there)", err=True)
    db.dispose()
    click.echo(f"tinyforge API on http://{host}:{port} (database {settings.url.split('@')[-1]}, "
               f"{'embedded worker' if embedded_worker else 'no worker'})", err=True)
    # logging stays as configured above (text or JSON); tinyforge.access is the access log, so not uvicorn's
    uvicorn.run(app, host=host, port=port, log_config=None, log_level="warning", access_log=False,
                timeout_graceful_shutdown=5)
