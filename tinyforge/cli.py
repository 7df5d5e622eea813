"""Root of the `tinyforge` command. Each subcommand is a small module over library functions,
imported only when invoked so that `tinyforge --help` stays fast and optional parts stay optional."""
from __future__ import annotations

import importlib

import click

# command name -> "module:attribute" of a click command
COMMANDS: dict[str, str] = {
    "demo": "service.commands.demo:demo",
    "train": "engine.commands.train:train",
    "arch": "engine.commands.arch:arch",
    "export-hf": "engine.commands.export_hf:export_hf",
    "import-hf": "engine.commands.export_hf:import_hf",
    "tokenizer": "engine.commands.tokenizer:tokenizer",
    "inherit": "engine.commands.inherit:inherit",
    "rounds": "engine.commands.rounds:rounds",
    "eval": "engine.commands.evaluate:evaluate",
    "generate": "engine.commands.generate:generate",
    "ablate": "engine.commands.ablate:ablate",
    "serve": "service.commands.serve:serve",
    "worker": "service.commands.worker:worker",
    "jobs": "service.commands.jobs:jobs",
    "token": "service.commands.token:token",
    "db": "service.commands.db:db",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(name for name in COMMANDS if self._available(name))

    @staticmethod
    def _available(name: str) -> bool:
        module = COMMANDS[name].split(":")[0]
        return importlib.util.find_spec(module) is not None

    def get_command(self, ctx, name):
        if name not in COMMANDS or not self._available(name):
            return None
        module, attr = COMMANDS[name].split(":")
        return getattr(importlib.import_module(module), attr)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tinyforge", prog_name="tinyforge")  # the installed distribution's version
def main():
    """tinyforge: train tiny language models with the PanGu-pi Pro recipe."""


if __name__ == "__main__":
    main()
