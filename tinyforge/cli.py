"""Root of the `tinyforge` command. Each subcommand is a small module over library functions,
imported only when invoked or listed, so that `tinyforge --help` stays fast (no torch).

The stage kinds' commands come from the stage registry (engine/stages.py); the tools and the service's
commands are listed here. A command whose module fails to import is an error naming the module and the
cause, never a command that silently disappears."""
from __future__ import annotations

import click

from engine.importing import import_object
from engine.stages import STAGES

# command name -> "module:attribute" of a click command: every stage kind's, then the rest
COMMANDS: dict[str, str] = {
    **{kind.command: kind.entry for kind in STAGES.values()},
    "demo": "service.commands.demo:demo",
    "arch": "engine.commands.arch:arch",
    "import-hf": "engine.commands.export_hf:import_hf",
    "generate": "engine.commands.generate:generate",
    "serve": "service.commands.serve:serve",
    "worker": "service.commands.worker:worker",
    "jobs": "service.commands.jobs:jobs",
    "token": "service.commands.token:token",
    "db": "service.commands.db:db",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        try:
            return import_object(COMMANDS[name], f"command {name!r}")
        except ImportError as exc:  # a broken module: say which, and exit non-zero
            raise click.ClickException(str(exc)) from exc


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tinyforge", prog_name="tinyforge")  # the installed distribution's version
def main():
    """tinyforge: train tiny language models with the PanGu-pi Pro recipe."""


if __name__ == "__main__":
    main()
