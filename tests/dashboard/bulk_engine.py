"""An engine-contract command (docs/engine-contract.md) that records a long run in a few seconds: `steps`
train points of loss and lr and a held-out loss every 100 steps, written in 20 flushed chunks as a
trainer would, for checking that charts stay light with 100k points per run. A `rounds` stage also
records a per-round table in its summary, shaped like the engine's (engine/rounds/run.py).
`python bulk_engine.py KIND --config FILE --out DIR`."""
from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import yaml


def main(argv: list[str]) -> int:
    kind = argv[0]
    cfg = yaml.safe_load(Path(argv[argv.index("--config") + 1]).read_text()) or {}
    out = Path(argv[argv.index("--out") + 1])
    out.mkdir(parents=True, exist_ok=True)
    steps, t0 = int(cfg.get("steps", 100_000)), time.time()
    (out / "run.json").write_text(json.dumps({"kind": kind, "config": cfg, "world_size": 1, "started_at": t0}))
    chunk = max(1, steps // int(os.environ.get("BULK_ENGINE_CHUNKS", 20)))
    with open(out / "metrics.jsonl", "w") as f:
        for start in range(1, steps + 1, chunk):
            rows = []
            for step in range(start, min(steps, start + chunk - 1) + 1):
                # a decaying loss with a periodic wiggle, so each downsampled bucket has a real min-max band
                loss = 2.0 + 8.0 / math.sqrt(step) + 0.3 * math.sin(step / 7.0)
                rows.append(json.dumps({"step": step, "time": t0, "split": "train", "loss": loss, "lr": 1e-3}))
                if step % 100 == 0:
                    rows.append(json.dumps({"step": step, "time": t0, "split": "val", "loss": loss + 0.2}))
            f.write("\n".join(rows) + "\n")
            f.flush()
            (out / "progress.json").write_text(json.dumps({"step": step, "total_steps": steps, "eta_s": 0,
                                                           "phase": "train"}))
            time.sleep(0.1)
    print(f"{kind}: recorded {steps} steps", flush=True)
    summary = {"steps": steps, "final_loss": loss}
    if kind == "rounds":  # two rounds over the halves of the run; the second replays hard samples
        half = steps // 2
        summary["rounds"] = [
            {"round": k, "steps": half, "tokens": half * 4096, "val_loss": 2.2 + 8.0 / math.sqrt(half * k),
             **({"selection": {"strategy": "hard", "seed": 0, "n_selected": half // 2}} if k == 2 else {})}
            for k in (1, 2)]
    (out / "result.json").write_text(json.dumps({"kind": kind, "artifacts": [], "inputs": [], "summary": summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
