"""Fixtures of the service tests: the harness of tests/support/service.py (real databases, a real
`tinyforge serve`, real workers running tests/support/fake_engine.py). Test modules import the helpers
from tests.support.service; the fixtures are imported here so pytest finds them for this directory.
Other test directories still load this file by path for its names (tests/security,
tests/engine/ablate/test_ablate.py)."""
from __future__ import annotations

from tests.support.service import (  # noqa: F401 - fixtures and the names other directories load from here
    PY, REPO, TERMINAL, Service, _db_url, api, base_env, db_url, drop_pg_schema, free_port, make_pg_schema,
    module_db_url, service, stage)
