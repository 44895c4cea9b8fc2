"""Statistics: bootstrap coverage, p_best, McNemar, Holm, and ranking by overall mean."""

from __future__ import annotations

import numpy as np
import pytest

from bakeoff.evaluate.stats import (bootstrap_means, holm, mcnemar_exact, paired_bootstrap_p,
                                    percentile_interval, prob_best, rank_models)


def test_bootstrap_interval_coverage_is_about_95_percent():
    """200 simulated test sets of 200 binary items (true accuracy 0.7): the 95%
    interval contains the truth in 90-99% of them."""
    rng = np.random.default_rng(123)
    true_p, hits = 0.7, 0
    for _ in range(200):
        scores = (rng.random(200) < true_p).astype(float)
        lo, hi = percentile_interval(bootstrap_means(scores, n_boot=1000, seed=int(rng.integers(1 << 30))))
        hits += int(lo[0] <= true_p <= hi[0])
    assert 0.90 <= hits / 200 <= 0.99, hits


def test_bootstrap_coverage_continuous_scores():
    rng = np.random.default_rng(7)
    hits = 0
    for _ in range(200):
        scores = rng.beta(2, 3, size=150)  # mean 0.4
        lo, hi = percentile_interval(bootstrap_means(scores, n_boot=1000, seed=int(rng.integers(1 << 30))))
        hits += int(lo[0] <= 0.4 <= hi[0])
    assert 0.90 <= hits / 200 <= 0.99, hits


def test_prob_best_splits_ties():
    boot = np.array([[1.0, 1.0, 0.0], [0.5, 0.2, 0.1]])
    assert prob_best(boot).tolist() == pytest.approx([0.75, 0.25, 0.0])


def test_mcnemar_exact():
    a = np.array([1] * 10 + [0] * 10)
    b = np.array([0] * 10 + [0] * 10)
    # 10 discordant pairs all one way: p = 2 * 0.5**10
    assert mcnemar_exact(a, b) == pytest.approx(2 * 0.5 ** 10)
    assert mcnemar_exact(a, a) == 1.0


def test_holm():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.2, 0.4]) == pytest.approx([0.4, 0.4])
    assert holm([]) == []


def test_paired_bootstrap_detects_consistent_small_gain():
    rng = np.random.default_rng(0)
    base = rng.random(300)
    better = base + 0.05 + rng.normal(0, 0.01, 300)  # paired: tiny noise around +0.05
    assert paired_bootstrap_p(better, base) < 0.01
    assert paired_bootstrap_p(base, base) == 1.0


def test_better_overall_but_fails_one_item_ranks_first():
    """Checkpoint 0 fails item 0 that every other checkpoint passes, but passes
    far more items overall: it ranks first, with the highest p_best."""
    n = 100
    good = np.ones(n)
    good[0] = 0
    rng = np.random.default_rng(1)
    others = [np.where(rng.random(n) < 0.7, 1.0, 0.0) for _ in range(3)]
    for o in others:
        o[0] = 1.0
    S = np.column_stack([good, *others])
    r = rank_models(S, n_boot=1000)
    assert r.leader == 0 and r.rank[0] == 1
    assert r.p_best[0] > 0.99
    assert r.test == "mcnemar"
    assert np.isnan(r.p_vs_leader[0])
    assert all(r.p_holm[j] < 0.05 for j in (1, 2, 3))
    assert all(r.diff_hi[j] < 0 for j in (1, 2, 3))


def test_rank_continuous_uses_bootstrap():
    rng = np.random.default_rng(2)
    S = rng.random((50, 3))
    r = rank_models(S, n_boot=500)
    assert r.test == "bootstrap"
    assert sorted(r.rank.tolist()) == [1, 2, 3]
    assert r.p_best.sum() == pytest.approx(1.0)
