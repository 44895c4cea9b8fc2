"""Rank models on a per-item metric matrix, overall and per slice, and on the
log-likelihood of the test set's references.

The evaluation leaderboard ranks on generated answers (exact, numeric, fields).
A small model can get better at a task long before its answers turn exactly
right; the log-likelihood of the reference answer shows that, without
generating. ``loglik_matrix`` reads it from the evaluation cache (mean
log-probability per reference token, one value per item and model) and
``rank_table`` ranks any items x models matrix the same way the leaderboard
does: ``rank_models`` from :mod:`bakeoff.evaluate.stats`, paired over items,
overall and within each slice.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from bakeoff.workspace import Workspace



@dataclass
class RankedRow:
    label: str
    mean: float
    lo: float
    hi: float
    p_best: float
    rank: int
    p_vs_best: float | None            # multiplicity-adjusted p-value against the leader
    worse_than_best: bool              # significantly worse than the leader
    slices: dict[str, float] = field(default_factory=dict)


@dataclass
class RankTable:
    """A ranking of models on one metric; ``by_slice`` holds the same ranking
    within each slice (models keep their labels)."""

    metric: str
    n_items: int
    rows: list[RankedRow]
    by_slice: dict[str, list[RankedRow]] = field(default_factory=dict)
    slice_sizes: dict[str, int] = field(default_factory=dict)
    #: the items x models matrix ranked, its column labels and each item's slice
    scores: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)), repr=False)
    labels: list[str] = field(default_factory=list, repr=False)
    item_slices: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)

    def column(self, label: str, slice_name: str | None = None) -> np.ndarray:
        col = self.scores[:, self.labels.index(label)]
        return col if slice_name is None else col[self.item_slices == slice_name]

    def row(self, label: str, slice_name: str | None = None) -> RankedRow | None:
        rows = self.rows if slice_name is None else self.by_slice.get(slice_name, [])
        return next((r for r in rows if r.label == label), None)

    def to_json(self) -> dict[str, Any]:
        return {"metric": self.metric, "n_items": self.n_items, "rows": [asdict(r) for r in self.rows],
                "by_slice": {s: [asdict(r) for r in rows] for s, rows in self.by_slice.items()},
                "slice_sizes": self.slice_sizes}


def _rank(labels: list[str], scores: np.ndarray, seed: int) -> list[RankedRow]:
    from bakeoff.evaluate.stats import rank_models

    r = rank_models(scores, seed=seed)
    rows = [RankedRow(labels[j], float(r.mean[j]), float(r.lo[j]), float(r.hi[j]), float(r.p_best[j]),
                      int(r.rank[j]), None if np.isnan(r.p_adj[j]) else float(r.p_adj[j]),
                      bool(r.significantly_worse[j]))
            for j in range(len(labels))]
    return sorted(rows, key=lambda x: x.rank)


def rank_table(metric: str, labels: list[str], scores: np.ndarray, slices: list[str],
               seed: int = 0) -> RankTable:
    """Rank the columns of ``scores`` (items x models), overall and per slice."""
    scores = np.asarray(scores, dtype=np.float64)
    slice_arr = np.asarray(slices)
    table = RankTable(metric, scores.shape[0], _rank(labels, scores, seed), scores=scores,
                      labels=list(labels), item_slices=slice_arr)
    from bakeoff.evaluate.rank import SLICE_ORDER

    present = list(dict.fromkeys(slices))
    for s in [x for x in SLICE_ORDER if x in present] + [x for x in present if x not in SLICE_ORDER]:
        m = slice_arr == s
        table.slice_sizes[s] = int(m.sum())
        table.by_slice[s] = _rank(labels, scores[m], seed)
        means = scores[m].mean(axis=0)
        for row in table.rows:
            row.slices[s] = float(means[labels.index(row.label)])
    return table


def paired_p(a: np.ndarray, b: np.ndarray, seed: int = 0) -> float:
    """Two-sided p-value of one paired comparison of two models on the same items
    (the test ``rank_models`` uses: McNemar on 0/1 scores, else paired bootstrap)."""
    from bakeoff.evaluate.stats import rank_models

    r = rank_models(np.column_stack([a, b]), seed=seed)
    return float(np.nanmin(r.p_vs_leader)) if np.isfinite(r.p_vs_leader).any() else 1.0


def leaderboard_matrix(board: Any) -> tuple[list[str], np.ndarray, list[str]]:
    """(labels, items x models scores, slice of each item) of an evaluation
    ``Leaderboard`` (its item-level drill-down)."""
    labels = [e.label for e in board.entries]
    scores = np.array([[it["scores"][lab] for lab in labels] for it in board.items], dtype=np.float64)
    return labels, scores, [it["slice"] for it in board.items]


def loglik_matrix(ws: Workspace, board: Any) -> tuple[list[str], np.ndarray, list[str]] | None:
    """Per-item mean log-likelihood per reference token of every leaderboard model
    that has one for every item (None if fewer than two do)."""
    import polars as pl

    from bakeoff.evaluate import cache
    from bakeoff.evaluate.items import load_items

    _, items = load_items(ws, board.testset)
    items = items.select("id", "item_digest", "slice")
    with cache.connect(ws) as con:
        ll = (con.sql(
            "SELECT weights_digest, template, item_digest, loglik, n_tokens FROM eval_logliks").pl())
    labels, cols = [], []
    for e in board.entries:
        mine = ll.filter((pl.col("weights_digest") == e.weights_digest) & (pl.col("template") == e.template))
        joined = items.join(mine, on="item_digest", how="left")
        if joined["loglik"].null_count():
            continue
        per_token = (joined["loglik"] / joined["n_tokens"].clip(lower_bound=1)).to_numpy()
        labels.append(e.label)
        cols.append(per_token)
    if len(cols) < 2:
        return None
    return labels, np.column_stack(cols), items["slice"].to_list()
