"""`tinyforge worker`: claim queued jobs from the database and run their stages."""
from __future__ import annotations

import shlex
import signal

import click

from service.commands._common import log_options, settings_options


@click.command()
@click.option("--devices", default=None, help="what this worker offers, e.g. cpu=2,npu=8 (default: detected)")
@click.option("--launcher", "launchers", multiple=True, help="launchers to offer (default: every available one)")
@click.option("--id", "worker_id", default=None, help="worker id (default: host-pid-random)")
@click.option("--engine-command", default=None, help="argv prefix of stage commands (env TINYFORGE_ENGINE_COMMAND)")
@click.option("--alive-file", default=None, help="touched at every heartbeat that reached the database "
                                                "(for container health checks)")
@log_options
@settings_options
def worker(devices, launchers, worker_id, engine_command, alive_file, settings):
    """Run jobs until SIGTERM/SIGINT (a running stage then checkpoints and its job is requeued)."""
    from service.db import Database
    from service.worker.worker import Worker, parse_devices

    if engine_command:
        settings = settings.with_(engine_command=tuple(shlex.split(engine_command)))
    settings.ensure_home()
    w = Worker(Database(settings.url), settings, worker_id=worker_id,
               devices=parse_devices(devices) if devices else None, launchers=list(launchers) or None,
               alive_file=alive_file)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: w.stop.set())
    w.run()
