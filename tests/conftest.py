"""Shared fixtures: an isolated state directory per session, and one small trained run reused by
tests that only need *a* checkpoint."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample"
# Debian's chromium, driven by Playwright (its own browser download does not work here)
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


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


@pytest.fixture
def group_of_one_env(monkeypatch):
    """The variables engine.distributed.init fills in for a process group of one in this process, set
    through monkeypatch so that they leave with the test: set by init itself they would stay and reach
    every later subprocess (lm-eval's accelerate then tried to join a group on a long-gone port)."""
    from engine import distributed

    for key, value in (("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", str(distributed._free_port())),
                       ("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0")):
        monkeypatch.setenv(key, value)


@pytest.fixture
def restore_determinism():
    """For tests that compile a training step on a CPU: engine.determinism.for_compiled_cpu turns torch's
    deterministic algorithms on for the process; put them back for the tests after, and drop the graphs
    compiled under them (guarded on that flag, a later compile of the same code, e.g. GPT.forward in
    test_model's no-recompile test, would count as a recompile)."""
    import torch

    before = torch.are_deterministic_algorithms_enabled(), torch.utils.deterministic.fill_uninitialized_memory
    yield
    torch.use_deterministic_algorithms(before[0])
    torch.utils.deterministic.fill_uninitialized_memory = before[1]
    torch._dynamo.reset()


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, micro_spec):
    """One finished micro run (checkpoint + metrics), shared."""
    from engine.train import train

    out = tmp_path_factory.mktemp("trained_run")
    result = train(micro_spec(), out, show_progress=False, log=lambda *a: None)
    return out, result


# one browser for the whole session: a second sync Playwright in the same thread refuses to start
@pytest.fixture(scope="session")
def chromium() -> Path:
    if not CHROMIUM.exists():
        if shutil.which("apt-get") is None or os.geteuid() != 0:
            pytest.skip("/usr/bin/chromium is missing and apt-get cannot install it here (needs root)")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for cmd in (["apt-get", "update", "-q"],
                    ["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium", "fonts-dejavu-core"]):
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
            if proc.returncode != 0:
                pytest.fail(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return CHROMIUM


@pytest.fixture(scope="session")
def browser(chromium):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the dev extra: pip install -e '.[dev]'")
    pw = sync_api.sync_playwright().start()
    b = pw.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS, headless=True)
    yield b
    b.close()
    pw.stop()
