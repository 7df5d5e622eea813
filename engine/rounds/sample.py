"""Drawing the next round's items: p_i = exp(s_i / T) / sum_j exp(s_j / T) (the closed form of
instance-reweighted DRO), then N0 items without replacement by torch.multinomial with a seeded
generator. The uniform control draws from p = 1/N through the same call."""
from __future__ import annotations

import numpy as np
import torch


def exp_distribution(scores, temperature: float = 1.0) -> torch.Tensor:
    """softmax(scores / T) in float64; softmax subtracts the max, so huge losses do not overflow."""
    s = torch.as_tensor(np.asarray(scores, dtype=np.float64))
    if not torch.isfinite(s).all():
        raise ValueError("score: some items have a non-finite score (loss); the previous round diverged")
    return torch.softmax(s / temperature, dim=0)


def uniform_distribution(n: int) -> torch.Tensor:
    return torch.full((n,), 1.0 / n, dtype=torch.float64)


def draw(p: torch.Tensor, n: int, generator: torch.Generator) -> np.ndarray:
    """n distinct indices, each next one drawn with probability proportional to p among those left."""
    if n > len(p):
        raise ValueError(f"rate: cannot draw {n} items from a pool of {len(p)}")
    support = int((p > 0).sum())
    if n > support:
        raise ValueError(f"temperature: only {support} of {len(p)} items keep a nonzero probability at this "
                         f"temperature, fewer than the {n} to draw; raise the temperature")
    return torch.multinomial(p, n, replacement=False, generator=generator).numpy().astype(np.int64)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def diagnostics(scores: np.ndarray, p: torch.Tensor, chosen: np.ndarray) -> dict:
    """How the drawn set differs from the pool: mean score, effective sample size of p
    (1 / sum p^2: N for uniform, 1 for a point mass) and overlap with the k highest-scoring items."""
    scores = np.asarray(scores, dtype=np.float64)
    k = len(chosen)
    if k == 0:
        return {"n_pool": len(scores), "n_selected": 0}
    pp = p.numpy()
    top = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
    ess = float(1.0 / np.sum(pp ** 2))
    return {"n_pool": int(len(scores)), "n_selected": int(k),
            "mean_score_pool": float(scores.mean()), "mean_score_selected": float(scores[chosen].mean()),
            "mean_score_top_k": float(scores[top].mean()),
            "ess": ess, "ess_fraction": ess / len(scores), "max_p": float(pp.max()),
            "topk_overlap": len(np.intersect1d(top, chosen)) / k}
