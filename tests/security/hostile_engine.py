"""An engine stand-in for the hostile-input tests: `python hostile_engine.py KIND --config FILE --out DIR`.
It honours docs/engine-contract.md just enough (metrics, progress, result.json) and puts the config's
`echo` text wherever a stage's own text reaches the user: stdout and stderr lines, the progress phase,
an artifact name, an input path (lineage), the result summary (a value and a table row) and, with
`exit_code`, the `error:` line the failure reason is taken from. It also prints one line of raw bytes
(a NUL, invalid UTF-8). Config: keys of tests/service/fake_specs.FakeStage (echo, steps, exit_code)."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import yaml


def write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv: list[str]) -> int:
    kind = argv[0]
    cfg = yaml.safe_load(Path(argv[argv.index("--config") + 1]).read_text()) or {}
    out = Path(argv[argv.index("--out") + 1])
    out.mkdir(parents=True, exist_ok=True)
    text = str(cfg.get("echo") or "")
    steps = int(cfg.get("steps", 2))
    print(f"stdout says: {text}", flush=True)
    print(f"stderr says: {text}", file=sys.stderr, flush=True)
    os.write(1, b"raw bytes: \x00 \xff\xfe\n")  # what a stage dumping binary prints: a NUL, no UTF-8
    with open(out / "metrics.jsonl", "a") as f:
        for step in range(1, steps + 1):
            f.write(json.dumps({"step": step, "split": "train", "loss": 1.0 / step}) + "\n")
    write(out / "progress.json", json.dumps({"step": steps, "total_steps": steps, "phase": text[:60]}))
    if cfg.get("exit_code") is not None:
        print(f"error: {text}", file=sys.stderr, flush=True)
        return int(cfg["exit_code"])
    art = out / "artifacts" / "notes.txt"
    art.parent.mkdir(parents=True, exist_ok=True)
    art.write_text(text)
    write(out / "result.json", json.dumps({"kind": kind, "summary": {"note": text, "steps": steps,
                                                                      "rows": [{"label": text, "loss": 1.0}]},
                                           "inputs": [f"/data/{text}"],
                                           "artifacts": [{"name": text[:100] or "notes", "type": "text",
                                                          "path": "artifacts/notes.txt"}]}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
