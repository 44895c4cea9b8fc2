"""Statistics for ranking checkpoints evaluated on the same items.

Every checkpoint answers the same test items, so comparisons are *paired*: the
bootstrap resamples items (one resample shared by all checkpoints), which keeps
the item-difficulty correlation between checkpoints and gives much tighter
differences than independent intervals would.

What the ranking claims, and why each claim holds:

- **Interval of a mean** (:func:`mean_interval`): Wilson's score interval when
  every score is 0/1 (a percentile bootstrap collapses to [1, 1] on 8 of 8
  correct and covers 68 % at n=10, p=0.9; Wilson covers ~95 %), BCa bootstrap
  otherwise.
- **"A is significantly worse than the best"** (:func:`rank_models`): every pair
  of checkpoints is compared, with a max-statistic bootstrap over *all* pairs:
  each paired difference is scaled by its standard error, and the critical
  value c is the 95th percentile of the largest recentred scaled difference
  over every pair in each bootstrap replicate. Comparing only "everyone against
  the observed leader" is not enough: the leader is chosen by looking at the
  data, so with 6 equally good checkpoints a Holm correction over those 5 tests
  calls one "significantly worse" in ~7 % of experiments (12 % with 10). Over
  all pairs the chance of *any* false claim stays near alpha whoever leads
  (measured: 5.7 % for 8 equal checkpoints on 150 binary items, 4.7 % on 600;
  ``benchmarks/bench_evaluate.py --ranking``).
- **Interval of a difference**: the simultaneous interval of a checkpoint's
  mean minus the best of the others' is built from the same c, so it lies
  below 0 exactly when the checkpoint is declared worse. For descriptive pairs
  (a slice, round 2 vs round 1) :func:`pair_test` inverts its own test
  (Clopper-Pearson on the discordant pairs for McNemar; the symmetric bootstrap
  interval for the paired bootstrap): a test and the interval shown beside it
  never contradict each other.
- **The best set**: the checkpoints not significantly worse than any other.
  They cannot be told apart from the best; a winner is named only when the set
  has a single member.
- Tied means get tied ranks (1, 1, 3).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

DEFAULT_B = 2000
ALPHA = 0.05
#: Memory bound of one bootstrap chunk (replicates x items float64 weights).
_CHUNK_CELLS = 4_000_000


def bootstrap_weights(n_items: int, n_boot: int = DEFAULT_B, seed: int = 0) -> np.ndarray:
    """(n_boot, n_items) resampling counts: each row says how many times each item
    is drawn in one bootstrap replicate (rows sum to n_items)."""
    rng = np.random.default_rng(seed)
    # Draw item indices and count them with one bincount over offset indices:
    # an order of magnitude faster than rng.multinomial row by row.
    idx = rng.integers(0, n_items, size=(n_boot, n_items))
    idx += np.arange(n_boot)[:, None] * n_items
    return np.bincount(idx.ravel(), minlength=n_boot * n_items).reshape(n_boot, n_items).astype(np.float64)


def bootstrap_means(scores: np.ndarray, n_boot: int = DEFAULT_B, seed: int = 0,
                    weights: np.ndarray | None = None) -> np.ndarray:
    """Paired bootstrap replicates of each column's mean: (n_boot, n_models).
    Computed in chunks of replicates, so many replicates of a large test set do
    not hold a (n_boot, n_items) matrix at once."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim == 1:
        scores = scores[:, None]
    n = scores.shape[0]
    if weights is not None:
        return weights @ scores / n
    chunk = max(1, min(n_boot, _CHUNK_CELLS // max(1, n)))
    parts = [bootstrap_weights(n, min(chunk, n_boot - start), seed + start) @ scores / n
             for start in range(0, n_boot, chunk)]
    return np.vstack(parts)


def percentile_interval(boot: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap interval per column of ``boot``."""
    alpha = (1 - level) / 2
    lo, hi = np.quantile(boot, [alpha, 1 - alpha], axis=0)
    return lo, hi


def prob_best(boot: np.ndarray, tol: float = 1e-12) -> np.ndarray:
    """P(model has the highest mean) across replicates; a replicate where k models
    tie at the top counts 1/k for each."""
    top = boot.max(axis=1, keepdims=True)
    at_top = boot >= top - tol
    return (at_top / at_top.sum(axis=1, keepdims=True)).mean(axis=0)


def is_binary(scores: np.ndarray) -> bool:
    s = np.asarray(scores)
    return bool(np.all((s == 0) | (s == 1)))


# --- intervals of one mean --------------------------------------------------------------

def wilson_interval(k: float, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n."""
    if n == 0:
        return (math.nan, math.nan)
    z = NormalDist().inv_cdf(1 - (1 - level) / 2)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def bca_interval(x: np.ndarray, boot: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Bias-corrected and accelerated bootstrap interval of mean(x) from its
    bootstrap replicates ``boot`` (acceleration from the jackknife, which for a
    mean is closed-form: leave-one-out means)."""
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    theta = float(x.mean())
    if n < 2 or np.allclose(x, theta):
        return (theta, theta)
    nd = NormalDist()
    below = (np.sum(boot < theta) + 0.5 * np.sum(boot == theta)) / len(boot)
    z0 = nd.inv_cdf(min(max(below, 1e-6), 1 - 1e-6))
    jack = (x.sum() - x) / (n - 1)
    dev = jack.mean() - jack
    denom = 6 * (np.sum(dev ** 2)) ** 1.5
    acc = float(np.sum(dev ** 3) / denom) if denom > 0 else 0.0
    qs = []
    for tail in ((1 - level) / 2, 1 - (1 - level) / 2):
        z = nd.inv_cdf(tail)
        qs.append(nd.cdf(z0 + (z0 + z) / (1 - acc * (z0 + z))))
    lo, hi = np.quantile(boot, qs)
    return (float(lo), float(hi))


def mean_interval(x: np.ndarray, level: float = 0.95, boot: np.ndarray | None = None,
                  seed: int = 0) -> tuple[float, float]:
    """The interval shown for a mean: Wilson for 0/1 scores, BCa otherwise."""
    x = np.asarray(x, dtype=np.float64)
    if len(x) == 0:
        return (math.nan, math.nan)
    if is_binary(x):
        return wilson_interval(float(x.sum()), len(x), level)
    if boot is None:
        boot = bootstrap_means(x, DEFAULT_B, seed)[:, 0]
    return bca_interval(x, boot, level)


def diff_interval_independent(a: np.ndarray, b: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Interval of mean(a) - mean(b) for two *different* sets of items (a slice
    gap): Newcombe's hybrid score interval for 0/1 scores, Welch's normal
    interval otherwise."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) == 0 or len(b) == 0:
        return (math.nan, math.nan)
    d = float(a.mean() - b.mean())
    if is_binary(a) and is_binary(b):
        l1, u1 = wilson_interval(a.sum(), len(a), level)
        l2, u2 = wilson_interval(b.sum(), len(b), level)
        p1, p2 = a.mean(), b.mean()
        return (d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2))
    z = NormalDist().inv_cdf(1 - (1 - level) / 2)
    var_a = a.var(ddof=1) / len(a) if len(a) > 1 else 0.0
    var_b = b.var(ddof=1) / len(b) if len(b) > 1 else 0.0
    se = math.sqrt(var_a + var_b)
    return (d - z * se, d + z * se)


# --- paired tests and the intervals that invert them -------------------------------------

def mcnemar_exact(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided exact McNemar p-value for paired 0/1 outcomes: a binomial test on
    the discordant pairs (items one got right and the other wrong)."""
    a, b = np.asarray(a) > 0.5, np.asarray(b) > 0.5
    n01 = int(np.sum(a & ~b))
    n10 = int(np.sum(~a & b))
    if n01 + n10 == 0:
        return 1.0
    # Exact two-sided binomial test with p = 1/2 (symmetric, so twice the smaller
    # tail), in integers: no scipy.stats import (slow) and no float underflow.
    n, k = n01 + n10, min(n01, n10)
    tail = sum(math.comb(n, i) for i in range(k + 1))
    return min(1.0, 2 * tail / 2 ** n)


def mcnemar_interval(a: np.ndarray, b: np.ndarray, level: float) -> tuple[float, float]:
    """Interval of mean(a) - mean(b) that inverts :func:`mcnemar_exact`: a
    Clopper-Pearson interval for the share of discordant items that favour ``a``,
    scaled by the discordant fraction. It excludes 0 exactly when the exact
    McNemar p-value is below ``1 - level``."""
    from scipy.special import betaincinv

    a, b = np.asarray(a) > 0.5, np.asarray(b) > 0.5
    n = len(a)
    n01, n10 = int(np.sum(a & ~b)), int(np.sum(~a & b))
    nd = n01 + n10
    if nd == 0:
        return (0.0, 0.0)
    tail = (1 - level) / 2
    lo = 0.0 if n01 == 0 else float(betaincinv(n01, nd - n01 + 1, tail))
    hi = 1.0 if n01 == nd else float(betaincinv(n01 + 1, nd - n01, 1 - tail))
    return (nd / n * (2 * lo - 1), nd / n * (2 * hi - 1))


def paired_bootstrap_p(a: np.ndarray, b: np.ndarray, n_boot: int = DEFAULT_B, seed: int = 0,
                       weights: np.ndarray | None = None, boot: np.ndarray | None = None) -> float:
    """Two-sided paired-bootstrap p-value for mean(a) == mean(b): how often the
    recentred bootstrap difference is at least as extreme as the observed one.
    ``boot`` (replicates of mean(a) - mean(b)) skips resampling."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    observed = d.mean()
    if np.allclose(d, 0):
        return 1.0
    if boot is None:
        boot = bootstrap_means(d, n_boot, seed, weights)[:, 0]
    extreme = np.abs(boot - observed) >= abs(observed) - 1e-12
    return float((extreme.sum() + 1) / (len(boot) + 1))


def bootstrap_diff_interval(a: np.ndarray, b: np.ndarray, boot: np.ndarray, level: float) -> tuple[float, float]:
    """Symmetric bootstrap interval of mean(a) - mean(b) from its replicates
    ``boot``: observed ± the distance that :func:`paired_bootstrap_p` needs to
    reject at ``1 - level``, so the interval excludes 0 exactly when it does."""
    d = float(np.mean(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)))
    if np.allclose(np.asarray(a) - np.asarray(b), 0):
        return (0.0, 0.0)
    dev = np.sort(np.abs(boot - d))[::-1]
    # p < 1-level  <=>  #{dev >= |d|} <= k  <=>  |d| > dev[k]
    k = math.ceil((1 - level) * (len(boot) + 1) - 1) - 1
    if k < 0:
        return (-math.inf, math.inf)
    q = float(dev[min(k, len(dev) - 1)])
    return (d - q, d + q)


def pair_test(a: np.ndarray, b: np.ndarray, level: float, boot: np.ndarray | None = None,
              binary: bool | None = None) -> tuple[float, float, float]:
    """(p-value, interval lo, hi) of mean(a) - mean(b), the interval at ``level``
    inverting the same test (McNemar for 0/1 scores, paired bootstrap otherwise)."""
    binary = is_binary(np.concatenate([a, b])) if binary is None else binary
    if binary:
        return (mcnemar_exact(a, b), *mcnemar_interval(a, b, level))
    if boot is None:
        boot = bootstrap_means(np.asarray(a) - np.asarray(b), DEFAULT_B, 0)[:, 0]
    return (paired_bootstrap_p(a, b, boot=boot), *bootstrap_diff_interval(a, b, boot, level))


def holm(pvalues: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1)."""
    p = np.asarray(pvalues, dtype=np.float64)
    m = len(p)
    if m == 0:
        return []
    order = np.argsort(p)
    adj = np.empty(m)
    running = 0.0
    for rank, idx in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[idx]))
        adj[idx] = running
    return adj.tolist()


# --- the ranking --------------------------------------------------------------------------

@dataclass
class Ranking:
    """Statistics of models (columns) on shared items (rows). Indices refer to
    columns of the score matrix."""

    mean: np.ndarray
    lo: np.ndarray            # interval of each mean (Wilson / BCa)
    hi: np.ndarray
    p_best: np.ndarray
    rank: np.ndarray          # 1 = best mean; tied means share a rank
    leader: int               # highest mean (ties: higher p_best, then column order)
    test: str                 # "mcnemar" or "bootstrap": the descriptive pairwise test vs the leader
    p_vs_leader: np.ndarray   # raw p-value of (model vs leader), uncorrected; nan for the leader
    p_adj: np.ndarray         # family-wise adjusted p-value that the model is not the best
    diff_lo: np.ndarray       # simultaneous interval of mean(model) - max(mean of the others)
    diff_hi: np.ndarray
    significantly_worse: np.ndarray  # bool: significantly worse than the best (p_adj < alpha)
    worse_than: list[int | None]     # the model it is most clearly worse than
    best_set: list[int]              # models that cannot be told apart from the best
    critical: float                  # the simultaneous critical value c
    alpha: float = ALPHA

    @property
    def winner(self) -> int | None:
        """The sole best model, or None when several cannot be told apart."""
        return self.best_set[0] if len(self.best_set) == 1 else None


def rank_models(scores: np.ndarray, n_boot: int = DEFAULT_B, seed: int = 0,
                level: float = 0.95, alpha: float = ALPHA) -> Ranking:
    """Rank models (columns of ``scores``, items x models) by mean score on the
    same items, with multiple comparisons with the best (see the module docstring).

    ``Ranking.significantly_worse[j]`` says whether model j is significantly worse
    than the best at family-wise level ``alpha``; ``Ranking.best_set`` holds the
    models that cannot be told apart from the best, ``Ranking.winner`` the sole
    best (or None).
    """
    scores = np.asarray(scores, dtype=np.float64)
    n, m = scores.shape
    if n == 0 or m == 0:
        raise ValueError("need at least one item and one model")
    binary = is_binary(scores)
    boot = bootstrap_means(scores, n_boot, seed)
    mean = scores.mean(axis=0)
    intervals = [mean_interval(scores[:, j], level, boot[:, j]) for j in range(m)]
    lo = np.array([iv[0] for iv in intervals])
    hi = np.array([iv[1] for iv in intervals])
    pb = prob_best(boot)
    rank = np.array([1 + int(np.sum(mean > mean[j] + 1e-12)) for j in range(m)])
    leader = int(np.lexsort((np.arange(m), -pb, -mean))[0])

    ms = _max_statistic(scores, boot, alpha)
    raw = np.full(m, np.nan)
    for j in range(m):
        if j != leader:
            raw[j] = (mcnemar_exact(scores[:, j], scores[:, leader]) if binary else
                      paired_bootstrap_p(scores[:, j], scores[:, leader], boot=boot[:, j] - boot[:, leader]))
    worse = ms.p_adj < alpha
    best_set = sorted((j for j in range(m) if not worse[j]), key=lambda j: (rank[j], j != leader, j))
    return Ranking(mean, lo, hi, pb, rank, leader, "mcnemar" if binary else "bootstrap", raw, ms.p_adj,
                   ms.lo, ms.hi, worse, [k if w else None for k, w in zip(ms.closest, worse)], best_set,
                   ms.critical, alpha)


@dataclass
class _MaxStat:
    p_adj: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    closest: list[int | None]
    critical: float


def _max_statistic(scores: np.ndarray, boot: np.ndarray, alpha: float) -> _MaxStat:
    """Which models are significantly worse than another, by a bootstrap max
    statistic over all pairs.

    For each pair, t_kj = (mean_k - mean_j) / se_kj (se of the paired mean
    difference). Model j is declared worse when t_kj > c for some k, c being
    the value the largest recentred statistic over *every* ordered pair exceeds
    in fewer than alpha of the bootstrap replicates: whichever models are truly
    tied, the chance of any false claim is about alpha. The simultaneous
    interval of mean_j - max_{k != j} mean_k is
    [min_k(d_jk - c se_jk), min_k(d_jk + c se_jk)]; its upper end is below 0
    exactly when j is declared worse, and the leader's lower end above 0
    exactly when it is the sole best.
    """
    n, m = scores.shape
    mean = scores.mean(axis=0)
    # se of each paired difference from the item-level differences (n-1 denominator).
    sq = scores.T @ scores / n
    var = (np.diag(sq)[:, None] + np.diag(sq)[None, :] - 2 * sq) - (mean[:, None] - mean[None, :]) ** 2
    se = np.sqrt(np.clip(var, 0, None) * n / max(1, n - 1) / n)
    diff = mean[:, None] - mean[None, :]               # diff[j, k] = mean_j - mean_k
    same = se <= 1e-15                                 # identical on every item: no comparison
    np.fill_diagonal(same, True)
    B = boot.shape[0]
    dstar = boot[:, :, None] - boot[:, None, :]        # (B, m, m)
    with np.errstate(divide="ignore", invalid="ignore"):
        # recentred statistic of "k beats b": T*[b, k] = -(d*_bk - d_bk) / se_bk
        tstar = np.where(same[None], -np.inf, -(dstar - diff[None]) / np.where(same, 1.0, se)[None])
    max_all = tstar.reshape(B, -1).max(axis=1)         # max over every ordered pair
    # p < alpha  <=>  #{T* >= t} <= K  <=>  t > (K+1)-th largest T*
    K = math.ceil(alpha * (B + 1) - 1) - 1
    critical = float(np.sort(max_all)[::-1][min(K, B - 1)]) if K >= 0 else math.inf
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(same, -np.inf, -diff / np.where(same, 1.0, se))  # t[j, k] = (mean_k - mean_j) / se
    p_adj = np.ones(m)
    closest: list[int | None] = [None] * m
    lo = np.full(m, np.nan)
    hi = np.full(m, np.nan)
    for j in range(m):
        others = [k for k in range(m) if k != j]
        if not others:
            continue
        k_best = max(others, key=lambda k: (t[j, k], mean[k]))
        closest[j] = k_best
        if np.isfinite(t[j, k_best]) and t[j, k_best] > 0:
            p_adj[j] = float((np.sum(max_all >= t[j, k_best] - 1e-12) + 1) / (B + 1))
        # a pair with identical scores on every item differs by exactly 0
        hi[j] = min(diff[j, k] + (0.0 if same[j, k] else critical * se[j, k]) for k in others)
        lo[j] = min(diff[j, k] - (0.0 if same[j, k] else critical * se[j, k]) for k in others)
    return _MaxStat(p_adj, lo, hi, closest, critical)
