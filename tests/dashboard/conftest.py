"""Fixtures of the dashboard tests: Debian's chromium (installed with apt-get when missing) driven by
Playwright, and a real `tinyforge serve` with its embedded worker running the real engine commands
(the Service helper of tests/support/service.py). The browser, its pages (open_page) and the screenshot
helpers are in tests/conftest.py: screenshots go to tests/dashboard/artifacts/ and, with
UPDATE_DOCS_SCREENSHOTS=1, to docs/img/."""
from __future__ import annotations

import sys
from pathlib import Path

from tests.conftest import page_shot, shot  # noqa: F401 - the dashboard tests import them from here
from tests.support.service import Service  # noqa: F401 - the dashboard tests import it from here

# test modules import these helpers as `dashboard_fixtures` (a bare `conftest` is ambiguous)
if __name__ in sys.modules:
    sys.modules.setdefault("dashboard_fixtures", sys.modules[__name__])

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


# the real engine commands (as tests/service/test_service_e2e.py), with a short cancel grace
REAL_ENGINE = {"TINYFORGE_STAGE_SPECS": "engine.spec:STAGE_SPECS",
               "TINYFORGE_ENGINE_COMMAND": f"{sys.executable} -m tinyforge.cli",
               "TINYFORGE_LEASE_S": "60", "TINYFORGE_CANCEL_GRACE_S": "20", "TINYFORGE_HEARTBEAT_S": "0.5"}
