"""Fixtures of the dashboard tests: Debian's chromium (installed with apt-get when missing) driven by
Playwright, and a real `tinyforge serve` with its embedded worker running the real engine commands
(the Service helper of tests/support/service.py). The browser fixtures are in tests/conftest.py. Screenshots go to tests/dashboard/artifacts/ and, with
UPDATE_DOCS_SCREENSHOTS=1, to docs/img/."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from tests.support.service import Service  # noqa: F401 - the dashboard tests import it from here

# test modules import these helpers as `dashboard_fixtures` (a bare `conftest` is ambiguous)
if __name__ in sys.modules:
    sys.modules.setdefault("dashboard_fixtures", sys.modules[__name__])

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
ARTIFACTS = Path(os.environ.get("DASHBOARD_ARTIFACTS", HERE / "artifacts"))
DOCS_IMG = REPO / "docs" / "img"


# the real engine commands (as tests/service/test_service_e2e.py), with a short cancel grace
REAL_ENGINE = {"TINYFORGE_STAGE_SPECS": "engine.spec:STAGE_SPECS",
               "TINYFORGE_ENGINE_COMMAND": f"{sys.executable} -m tinyforge.cli",
               "TINYFORGE_LEASE_S": "60", "TINYFORGE_CANCEL_GRACE_S": "20", "TINYFORGE_HEARTBEAT_S": "0.5"}


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
