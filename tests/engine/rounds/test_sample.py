"""The replay sampler: draws follow p = softmax(loss / T) without replacement (a chi-square test
with a fixed seed), never repeat an item, are reproducible from the recorded seed; diagnostics."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from engine.data import BatchSampler, DataError, WindowSubsetSampler
from engine.rounds import sample as sampling

LOSSES = np.array([1.0, 2.0, 2.5, 3.0, 4.0])


def chi2_pvalue(observed: np.ndarray, expected: np.ndarray) -> float:
    stat = float(((observed - expected) ** 2 / expected).sum())
    df = len(observed) - 1
    return float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64),
                                         torch.tensor(stat / 2, dtype=torch.float64)))


def ordered_pair_counts(p: torch.Tensor, repeats: int, seed: int) -> dict:
    g = sampling.seeded(seed)
    counts = dict.fromkeys(itertools.permutations(range(len(p)), 2), 0)
    for _ in range(repeats):
        i, j = sampling.draw(p, 2, g)
        counts[(int(i), int(j))] += 1
    return counts


def test_draws_follow_the_exp_loss_distribution_without_replacement():
    """Successive sampling: P(first = i, second = j) = p_i * p_j / (1 - p_i) with p = softmax(l / T)."""
    T, repeats = 1.0, 20000
    p = sampling.exp_distribution(LOSSES, T)
    naive = np.exp(LOSSES / T) / np.exp(LOSSES / T).sum()
    assert np.allclose(p.numpy(), naive, rtol=1e-12)
    counts = ordered_pair_counts(p, repeats, seed=0)
    pairs = list(counts)
    pn = p.numpy()
    expected = np.array([pn[i] * pn[j] / (1 - pn[i]) for i, j in pairs]) * repeats
    observed = np.array([counts[c] for c in pairs], dtype=np.float64)
    assert abs(expected.sum() - repeats) < 1e-6
    assert chi2_pvalue(observed, expected) > 1e-3
    # the same test has the power to reject a wrong distribution: uniform pairs do not fit these counts
    uniform = np.full(len(pairs), repeats / len(pairs))
    assert chi2_pvalue(observed, uniform) < 1e-12
    # and the hardest item is drawn first most often, in proportion to its probability
    first = np.array([sum(counts[(i, j)] for j in range(5) if j != i) for i in range(5)])
    assert abs(first[4] / repeats - pn[4]) < 0.015


def test_temperature_flattens_or_sharpens_the_distribution():
    p_hot = sampling.exp_distribution(LOSSES, 100.0)
    p_cold = sampling.exp_distribution(LOSSES, 0.25)
    ess = lambda p: float(1 / (p ** 2).sum())  # noqa: E731
    assert ess(sampling.exp_distribution(LOSSES, 1.0)) < ess(p_hot) < 5 and ess(p_hot) > 4.9
    assert ess(p_cold) < ess(sampling.exp_distribution(LOSSES, 1.0))
    assert int(p_cold.argmax()) == 4


def test_never_repeats_an_item_and_is_reproducible_from_the_seed():
    scores = np.random.default_rng(3).normal(3.0, 0.7, size=200)
    p = sampling.exp_distribution(scores, 0.5)
    for seed in range(25):
        drawn = sampling.draw(p, 100, sampling.seeded(seed))
        assert len(np.unique(drawn)) == 100 and drawn.min() >= 0 and drawn.max() < 200
    everything = sampling.draw(p, 200, sampling.seeded(7))
    assert sorted(everything.tolist()) == list(range(200))
    a, b = sampling.draw(p, 50, sampling.seeded(11)), sampling.draw(p, 50, sampling.seeded(11))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, sampling.draw(p, 50, sampling.seeded(12)))


def test_softmax_is_stable_for_huge_losses_and_rejects_bad_scores():
    p = sampling.exp_distribution([1e4, 1e4 - 1.0, 0.0], 1.0)
    assert torch.isfinite(p).all() and abs(float(p.sum()) - 1) < 1e-12
    assert float(p[0] / p[1]) == pytest.approx(np.e)
    with pytest.raises(ValueError, match="score: .*non-finite"):
        sampling.exp_distribution([1.0, float("nan")], 1.0)
    with pytest.raises(ValueError, match="temperature: only 1 of 3"):
        sampling.draw(sampling.exp_distribution([1e4, 0.0, 0.0], 1.0), 2, sampling.seeded(0))
    with pytest.raises(ValueError, match="rate: cannot draw 4 items from a pool of 3"):
        sampling.draw(sampling.uniform_distribution(3), 4, sampling.seeded(0))


def test_diagnostics_compare_the_drawn_set_with_the_pool():
    scores = np.arange(10, dtype=np.float64)
    p = sampling.exp_distribution(scores, 1.0)
    d = sampling.diagnostics(scores, p, np.array([9, 8, 7]))
    assert d["topk_overlap"] == 1.0 and d["mean_score_selected"] == 8.0 and d["mean_score_pool"] == 4.5
    assert d["ess"] == pytest.approx(1 / float((p ** 2).sum())) and 1 < d["ess"] < 10
    d = sampling.diagnostics(scores, sampling.uniform_distribution(10), np.array([0, 1, 9]))
    assert d["topk_overlap"] == pytest.approx(1 / 3) and d["ess_fraction"] == pytest.approx(1.0)


def test_window_subset_sampler_visits_each_chosen_window_once_per_pass():
    chosen = np.random.default_rng(0).choice(1000, size=70, replace=False)
    s = WindowSubsetSampler(1000, chosen, global_batch=8, seed=5)
    assert s.batches_per_pass == 8
    first_pass = np.concatenate([s.windows(i) for i in range(8)])
    assert len(np.unique(first_pass)) == 64 and set(first_pass) <= set(chosen)
    assert not np.array_equal(s.windows(0), s.windows(8))  # the next pass is another permutation
    assert np.array_equal(WindowSubsetSampler(1000, chosen, 8, 5).windows(9), s.windows(9))
    with pytest.raises(DataError, match="data.window_ids"):
        WindowSubsetSampler(1000, [1, 2, 3], global_batch=8, seed=0)
    with pytest.raises(DataError, match="data.window_ids"):
        WindowSubsetSampler(10, np.arange(5, 15), global_batch=8, seed=0)
    assert BatchSampler(1000, 8, 5).batches_per_epoch == 125
