"""Shared fixtures: an isolated state directory per session, and one small trained run reused by
tests that only need *a* checkpoint."""
from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample"
# Debian's chromium, driven by Playwright (its own browser download does not work here)
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
# screenshots of the dashboard tests (and of the demo's job page): test artifacts, and docs/img on request
ARTIFACTS = Path(os.environ.get("DASHBOARD_ARTIFACTS", REPO / "tests" / "dashboard" / "artifacts"))
DOCS_IMG = REPO / "docs" / "img"


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
    if CHROMIUM.exists():
        return CHROMIUM
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        pytest.skip("/usr/bin/chromium is missing and apt-get cannot install it here (needs root)")
    # every test worker (pytest-xdist) has this fixture: the first one in installs, the others wait for it
    with open(Path(tempfile.gettempdir()) / "tinyforge-tests-chromium.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if CHROMIUM.exists():  # installed by the worker that held the lock before
            return CHROMIUM
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


def shot(page, name: str, docs: bool = False, full_page: bool = False) -> Path:
    """Save a screenshot as a test artifact (and into docs/img when asked to refresh the docs)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    if docs and os.environ.get("UPDATE_DOCS_SCREENSHOTS") == "1":
        DOCS_IMG.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, DOCS_IMG / f"dashboard-{name}.png")
    return path


def page_shot(page, name: str, height: int = 1180, docs: bool = True) -> None:
    """A screenshot of the page from its top, in a taller window (header, stages and charts together)."""
    size = page.viewport_size
    page.set_viewport_size({"width": size["width"], "height": height})
    page.evaluate("window.scrollTo(0, 0)")
    page.wait_for_timeout(300)  # let the charts redraw at the new size
    shot(page, name, docs=docs)
    page.set_viewport_size(size)


class Watch:
    """What a page did that a test must not miss: dialogs (alert/confirm) and script errors."""

    def __init__(self, page):
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        page.on("dialog", lambda d: (self.dialogs.append(f"{d.type}: {d.message}"), d.dismiss()))
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        # 4xx answers the app expects (a bad token, a refused spec) are logged by the browser; skip those
        page.on("console", lambda m: m.type == "error" and not m.text.startswith("Failed to load resource")
                and self.errors.append(m.text))


@pytest.fixture
def open_page(browser, request):
    """open_page(base_url, token=None, url="", width=1280, height=860) -> (page, watch): a fresh browser
    context on the dashboard, signed in with `token` when given, then at `url` (a #/ route)."""
    contexts = []

    def make(base: str, token: str | None = None, url: str = "", width: int = 1280, height: int = 860):
        ctx = browser.new_context(base_url=base, viewport={"width": width, "height": height}, accept_downloads=True)
        contexts.append(ctx)
        page = ctx.new_page()
        page.set_default_timeout(30_000)
        watch = Watch(page)
        page.goto("/ui/")
        if token:
            page.fill("#token", token)
            page.click("#signin")
            page.wait_for_selector("#scope", state="attached")
        if url:
            page.goto("/ui/" + url)
        return page, watch

    yield make
    for i, ctx in enumerate(contexts):
        if request.node.rep_call.failed if hasattr(request.node, "rep_call") else False:
            for j, p in enumerate(ctx.pages):
                try:
                    shot(p, f"FAILED-{request.node.name}-{i}-{j}", full_page=True)
                except Exception:  # noqa: BLE001
                    pass
        ctx.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)
