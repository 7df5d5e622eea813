"""Shared fixtures: an isolated state directory per session, and one small trained run reused by
tests that only need *a* checkpoint."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample"


@pytest.fixture(scope="session", autouse=True)
def tinyforge_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("tinyforge_home")
    os.environ["TINYFORGE_HOME"] = str(home)
    return home


def run_cli(*args, cwd=None, env=None, timeout=600, check=False):
    """Run the real `tinyforge` console command in a subprocess."""
    exe = Path(sys.executable).with_name("tinyforge")
    proc = subprocess.run([str(exe), *map(str, args)], cwd=cwd, env={**os.environ, **(env or {})},
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"tinyforge {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def micro_spec():
    """A train spec for the micro preset on the bundled corpus: a few seconds on CPU."""
    from engine.spec import TrainSpec

    def make(**kw):
        base = dict(model={"preset": "micro"}, data={"sources": [str(SAMPLE)]}, steps=12, batch_size=8,
                    micro_batch=4, log_every=2, eval_every=6, eval_batches=2, checkpoint_every=6)
        base.update(kw)
        return TrainSpec.model_validate(base)
    return make


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, micro_spec):
    """One finished micro run (checkpoint + metrics), shared."""
    from engine.train import train

    out = tmp_path_factory.mktemp("trained_run")
    result = train(micro_spec(), out, show_progress=False, log=lambda *a: None)
    return out, result
