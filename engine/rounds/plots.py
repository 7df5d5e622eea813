"""Plots of the rounds stage: the score histogram of a draw and the forgetting curve across rounds."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from engine.plots import plt, save


def score_histogram(scores: np.ndarray, chosen: np.ndarray, path: Path, title: str) -> Path:
    scores = np.asarray(scores)
    bins = np.histogram_bin_edges(scores, bins=min(40, max(10, len(scores) // 5)))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(scores, bins=bins, alpha=0.5, label=f"pool ({len(scores)})")
    ax.hist(scores[chosen], bins=bins, alpha=0.7, label=f"drawn ({len(chosen)})")
    ax.axvline(scores.mean(), color="C0", ls="--", lw=1)
    ax.axvline(scores[chosen].mean(), color="C1", ls="--", lw=1)
    ax.set_xlabel("score (loss, nats/token)")
    ax.set_ylabel("items")
    ax.set_title(title)
    ax.legend()
    return save(fig, path)


def forgetting_curve(rows: list[dict], boundaries: list[tuple[int, int]], path: Path, title: str) -> Path:
    """Probe loss (each round's fixed early batches) and validation loss against the global step;
    `boundaries` = [(round, first global step)] draws a line where each round starts."""
    last = {}
    for r in rows:  # a resumed round may repeat steps: keep the last row
        last[(r.get("round"), r.get("split"), r["step"])] = r
    fig, ax = plt.subplots(figsize=(7, 3.8))
    rounds = sorted({k[0] for k in last if k[0] is not None})
    for i, rnd in enumerate(rounds):
        for split, style, name in (("probe", "o-", "probe (its first tenth)"), ("val", "s--", "held-out")):
            pts = sorted((k[2], v["loss"]) for k, v in last.items() if k[0] == rnd and k[1] == split and "loss" in v)
            if pts:
                ax.plot(*zip(*pts), style, color=f"C{i}", markersize=3, label=f"round {rnd}: {name}")
    for rnd, step in boundaries[1:]:
        ax.axvline(step, color="gray", lw=0.8, ls=":")
    ax.set_xlabel("global step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save(fig, path)
