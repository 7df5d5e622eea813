"""Figures from fault-injection and fuzz tests, for `bench/chaos_report.py`.

Each test that injects faults or fuzzes calls `record(name, **figures)` once it has measured them; the
figures land in `$TINYFORGE_CHAOS_DIR` (default `build/chaos/` in the repository) as one JSON file
per name, overwritten by the next run. Known figures (use the ones that apply):
faults_injected, jobs_completed, acknowledged, found, duplicates, lost, http_5xx,
schema_violations, fuzz_cases, plus a short `fault` description and `passed`."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def chaos_dir() -> Path:
    return Path(os.environ.get("TINYFORGE_CHAOS_DIR") or REPO / "build" / "chaos")


def record(name: str, fault: str, passed: bool = True, **figures) -> Path:
    out = chaos_dir()
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"name": name, "fault": fault, "passed": passed, "at": time.time(), **figures},
                              indent=1))
    tmp.replace(path)
    return path
