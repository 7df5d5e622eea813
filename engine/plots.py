"""PNG plots of what a user would rather look at than read."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def save(fig, path: Path) -> Path:
    """Lay out, write as PNG and release the figure (figures left open accumulate across a long run)."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def loss_curve(metrics: list[dict], path: Path, title: str = "loss") -> Path:
    last = {}
    for row in metrics:  # a resumed run may repeat steps after its last checkpoint: keep the last row
        last[(row.get("split"), row["step"])] = row
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for split, style in (("train", "-"), ("val", "o-")):
        rows = sorted((k[1], r["loss"]) for k, r in last.items() if k[0] == split and "loss" in r)
        if rows:
            ax.plot(*zip(*rows), style, label=split, markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return save(fig, path)
