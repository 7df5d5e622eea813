"""Summary of the fault-injection and fuzz figures the tests recorded (tests/chaos_record.py).

    python bench/chaos_report.py [DIR]      # default: $TINYFORGE_CHAOS_DIR or build/chaos/

One row per recorded run (faults injected, jobs completed, submissions acknowledged vs found,
duplicates, lost, 5xx answers, schema violations, fuzz cases, duration), then the totals. Exits 1 when
any recorded run has passed=false, 0 otherwise (also when nothing was recorded yet)."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# (figure, column title); a figure a run did not record shows as "-"
COLUMNS = [("faults_injected", "faults"), ("jobs_completed", "jobs ok"), ("acknowledged", "acked"),
           ("found", "found"), ("duplicates", "dups"), ("lost", "lost"), ("http_5xx", "5xx"),
           ("schema_violations", "schema viol."), ("fuzz_cases", "fuzz cases"), ("duration_s", "secs")]


def load(directory: Path) -> tuple[list[dict], list[str]]:
    runs, problems = [], []
    for path in sorted(directory.glob("*.json")):
        try:
            run = json.loads(path.read_text())
            if not isinstance(run, dict):
                raise ValueError("not an object")
        except (OSError, ValueError) as exc:
            problems.append(f"{path.name}: unreadable ({exc})")
            continue
        run.setdefault("name", path.stem)
        runs.append(run)
    return runs, problems


def cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return str(len(value))
    return str(value)


def total(runs: list[dict], key: str):
    if key == "found":  # compared with the acknowledged total: only runs that count both
        runs = [r for r in runs if "acknowledged" in r]
    values = [r[key] for r in runs if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)]
    return sum(values) if values else None


def table(runs: list[dict]) -> str:
    head = ["run", "passed"] + [title for _, title in COLUMNS]
    rows = [[r["name"], cell(bool(r.get("passed")))] + [cell(r.get(key)) for key, _ in COLUMNS] for r in runs]
    rows.append(["TOTAL", f"{sum(bool(r.get('passed')) for r in runs)}/{len(runs)}"]
                + [cell(total(runs, key)) for key, _ in COLUMNS])
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    fmt = lambda row: "  ".join(x.ljust(w) if i == 0 else x.rjust(w) for i, (x, w) in enumerate(zip(row, widths)))
    rule = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(head), rule, *map(fmt, rows[:-1]), rule, fmt(rows[-1])])


def main(argv: list[str]) -> int:
    directory = Path(argv[0]) if argv else Path(os.environ.get("TINYFORGE_CHAOS_DIR") or REPO / "build" / "chaos")
    runs, problems = load(directory)
    print(f"chaos report: {len(runs)} recorded run(s) in {directory}")
    if runs:
        print(table(runs))
        print()
        for r in runs:
            age = time.time() - r["at"] if isinstance(r.get("at"), (int, float)) else None
            when = f", recorded {age / 60:.0f} min ago" if age is not None else ""
            print(f"  {r['name']}: {r.get('fault') or '(no description)'}{when}")
    failed = [r["name"] for r in runs if not r.get("passed")]
    for p in problems:
        print(f"  problem: {p}")
    if failed:
        print(f"FAILED: {', '.join(failed)}")
    return 1 if failed or problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
