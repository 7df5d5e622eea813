"""Shared plumbing of the engine's stage commands: one error -> exit-code mapping for all of them
(docs/engine-contract.md), and logging set-up."""
from __future__ import annotations

import errno
import functools
import logging
import sys

import click

EXIT_USER, EXIT_INFRA, EXIT_PREEMPTED = 2, 3, 143


def fail(message: str, code: int):
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def stage_command(fn):
    """Run a command body, turning known failures into one `error:` line and the contract's exit code."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import torch

        from engine.checkpoint import CheckpointError
        from engine.data import DataError
        from engine.spec import SpecError
        from engine.train import Preempted

        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        try:
            return fn(*args, **kwargs)
        except Preempted as exc:
            click.echo(str(exc), err=True)
            sys.exit(EXIT_PREEMPTED)
        except (SpecError, DataError, CheckpointError, FileNotFoundError, ValueError, KeyError) as exc:
            fail(str(exc).strip("'\""), EXIT_USER)
        except (MemoryError, torch.OutOfMemoryError) as exc:
            fail(f"out of memory: {exc}", EXIT_INFRA)
        except FloatingPointError as exc:
            fail(str(exc), EXIT_USER)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                fail(f"disk full: {exc}", EXIT_INFRA)
            raise
        finally:
            # A gloo group left to the interpreter's teardown can abort the process (SIGABRT, "terminate
            # called without an active exception", pytorch#190489) after the work has succeeded.
            from engine import distributed
            distributed.shutdown()
    return wrapper


config_option = click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
                             help="stage config (YAML or JSON)")
out_option = click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True,
                          help="run directory (re-running with the same one resumes)")
set_option = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                          help="override a config field, e.g. --set optim.lr=1e-3")
