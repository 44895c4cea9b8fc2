"""The leaderboard: every evaluated checkpoint (and base model) on the full test set.

Ranking is by mean score over *all* items, with paired statistics
(:mod:`bakeoff.evaluate.stats`): a checkpoint can fail an item every other
checkpoint passes and still be the best overall. The leaderboard says so
explicitly: ``winner_losses`` lists the items where the winner scores below
another checkpoint, ``slice_losses`` the slices where it is not the best, and
``disagreements`` the items on which checkpoints do not all agree.

Scores come from the cache; a score whose scorer version changed is recomputed
from the stored output (no generation). Models whose outputs do not cover the
test set (an interrupted run) are left out and listed in ``excluded``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import polars as pl

from bakeoff.evaluate import cache
from bakeoff.evaluate.items import load_items
from bakeoff.evaluate.runner import score_items
from bakeoff.evaluate.stats import DEFAULT_B, rank_models
from bakeoff.workspace import BakeoffError, Workspace

SLICE_ORDER = ("in-domain", "adjacent", "far")


@dataclass
class Entry:
    label: str
    weights_digest: str
    is_base: bool
    run_id: str | None
    experiment: str | None
    step: int | None
    kind: str | None
    path: str | None
    datasets: list[str]
    base_model: str | None
    gen_config: str
    template: str
    n: int
    score: float
    lo: float
    hi: float
    p_best: float
    rank: int
    p_vs_leader: float | None
    p_holm: float | None
    diff_lo: float | None
    diff_hi: float | None
    slices: dict[str, float]
    tasks: dict[str, float]
    gap: float | None
    loglik_per_token: float | None

    @property
    def significantly_worse(self) -> bool:
        return self.p_holm is not None and self.p_holm < 0.05


@dataclass
class Leaderboard:
    testset: str
    testset_digest: str
    n_items: int
    test: str
    entries: list[Entry]
    slices: list[str]
    tasks: list[str]
    winner_losses: list[dict[str, Any]] = field(default_factory=list)
    n_winner_losses: int = 0
    slice_losses: list[dict[str, Any]] = field(default_factory=list)
    n_disagreements: int = 0
    disagreements: list[dict[str, Any]] = field(default_factory=list)
    excluded: list[dict[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: item-level matrix for drill-down: one dict per item (id, slice, task, prompt,
    #: reference, scores {label: score}, outputs {label: output})
    items: list[dict[str, Any]] = field(default_factory=list)

    @property
    def winner(self) -> Entry | None:
        return self.entries[0] if self.entries else None

    def to_json(self, with_items: bool = False) -> dict[str, Any]:
        rows = []
        for e in self.entries:
            d = asdict(e)
            d["interval"] = [e.lo, e.hi]
            d["significantly_worse_than_leader"] = e.significantly_worse
            rows.append(d)
        out = {"testset": self.testset, "testset_digest": self.testset_digest, "n_items": self.n_items,
               "test": self.test, "slices": self.slices, "tasks": self.tasks,
               "winner": self.winner.label if self.winner else None, "checkpoints": rows,
               "n_winner_losses": self.n_winner_losses, "winner_losses": self.winner_losses, "slice_losses": self.slice_losses,
               "n_disagreements": self.n_disagreements, "disagreements": self.disagreements,
               "excluded": self.excluded, "warnings": self.warnings}
        if with_items:
            out["items"] = self.items
        return out


def _ordered_slices(values: list[str]) -> list[str]:
    known = [s for s in SLICE_ORDER if s in values]
    return known + sorted(v for v in values if v not in SLICE_ORDER)


def _nan_to_none(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and np.isnan(x)) else float(x)


def _short(text: Any, n: int = 300) -> str:
    text = "" if text is None else str(text)
    return text if len(text) <= n else text[: n - 1] + "…"


def build_leaderboard(ws: Workspace, testset: str, experiment: str | None = None,
                      n_boot: int = DEFAULT_B, seed: int = 0, reward: Any = None,
                      max_listed: int = 50) -> Leaderboard:
    """Rank every model evaluated on ``testset`` (optionally: only checkpoints of
    ``experiment``, plus base models)."""
    version = ws.resolve(testset)
    runs = cache.runs_for(ws, version.ref)
    if runs.height == 0:
        raise BakeoffError(f"nothing evaluated on {version.ref} yet: run `bakeoff evaluate run --testset "
                           f"{version.ref} --checkpoints ...` first")
    if experiment:
        runs = runs.filter((pl.col("experiment") == experiment) | pl.col("is_base").fill_null(False))
        if runs.filter(~pl.col("is_base").fill_null(False)).height == 0:
            raise BakeoffError(f"no checkpoint of experiment {experiment!r} evaluated on {version.ref}")
    # The latest evaluation of each model.
    runs = runs.sort("completed_at").unique("weights_digest", keep="last", maintain_order=True)
    warnings: list[str] = []
    if runs["gen_config"].n_unique() > 1:
        warnings.append("models were evaluated with different generation settings: "
                        + ", ".join(sorted(set(runs["settings"].to_list()))))
    reward_digests = {json.loads(s).get("reward_digest") for s in runs["settings"].to_list()} - {None}
    if len(reward_digests) > 1:
        warnings.append("models were scored with different reward models")
    _, items = load_items(ws, version.ref, next(iter(reward_digests), None))
    items = items.with_row_index("_row")

    excluded: list[dict[str, str]] = []
    cols: list[np.ndarray] = []
    outputs: list[dict[str, str]] = []
    kept: list[dict[str, Any]] = []
    for run in runs.iter_rows(named=True):
        label = run["label"] or run["weights_digest"][:12]
        try:
            with cache.connect(ws):  # one catalog connection per model, not one per query
                scored, _ = score_items(ws, items, run["weights_digest"], run["template"], run["gen_config"],
                                        reward)
        except BakeoffError as exc:
            excluded.append({"label": label, "reason": str(exc)})
            continue
        joined = items.select("_row", "item_digest").join(scored, on="item_digest", how="left").sort("_row")
        missing = joined["score"].null_count()
        if missing:
            excluded.append({"label": label, "reason": f"{missing} of {items.height} items not evaluated "
                                                       "(interrupted run? re-run `evaluate run` to resume)"})
            continue
        cols.append(joined["score"].to_numpy().astype(np.float64))
        outputs.append(dict(zip(items["id"].to_list(), joined["output"].to_list())))
        kept.append(run)
    if not kept:
        raise BakeoffError(f"no model has scores for all {items.height} items of {version.ref}: "
                           + "; ".join(f"{e['label']}: {e['reason']}" for e in excluded))

    S = np.column_stack(cols)
    stats = rank_models(S, n_boot=n_boot, seed=seed)
    slices = _ordered_slices(items["slice"].unique().to_list())
    tasks = sorted(t for t in items["task"].unique().to_list())
    slice_idx = {s: (items["slice"] == s).to_numpy() for s in slices}
    task_idx = {t: (items["task"] == t).to_numpy() for t in tasks}
    logliks = _logliks(ws, items, kept)

    entries = []
    for j, run in enumerate(kept):
        sl = {s: float(S[m, j].mean()) for s, m in slice_idx.items()}
        gap = sl["in-domain"] - sl["adjacent"] if "in-domain" in sl and "adjacent" in sl else None
        entries.append(Entry(
            label=run["label"] or run["weights_digest"][:12], weights_digest=run["weights_digest"],
            is_base=bool(run["is_base"]), run_id=run["run_id"], experiment=run["experiment"], step=run["step"],
            kind=run["kind"], path=run["path"], datasets=json.loads(run["datasets"] or "[]"),
            base_model=run["base_model"], gen_config=run["gen_config"], template=run["template"],
            n=S.shape[0], score=float(stats.mean[j]), lo=float(stats.lo[j]), hi=float(stats.hi[j]),
            p_best=float(stats.p_best[j]), rank=int(stats.rank[j]),
            p_vs_leader=_nan_to_none(stats.p_vs_leader[j]), p_holm=_nan_to_none(stats.p_holm[j]),
            diff_lo=None if j == stats.leader else float(stats.diff_lo[j]),
            diff_hi=None if j == stats.leader else float(stats.diff_hi[j]),
            slices=sl, tasks={t: float(S[m, j].mean()) for t, m in task_idx.items()}, gap=gap,
            loglik_per_token=logliks.get(run["weights_digest"])))
    order = np.argsort(stats.rank)
    board = Leaderboard(version.ref, version.digest, items.height, stats.test, [entries[j] for j in order],
                        slices, tasks, excluded=excluded, warnings=warnings)
    _explain_winner(board, items, S, [entries[j].label for j in range(len(entries))], stats.leader, outputs,
                    max_listed, stats.rank)
    return board


def _logliks(ws: Workspace, items: pl.DataFrame, runs: list[dict[str, Any]]) -> dict[str, float]:
    """Mean per-token log-likelihood of the references, per model (where stored)."""
    with cache.connect(ws) as con:
        con.register("_items", items.select("item_digest").to_arrow())
        try:
            rows = con.execute(
                """SELECT l.weights_digest, l.template, sum(l.loglik) / nullif(sum(l.n_tokens), 0), count(*)
                   FROM eval_logliks l JOIN _items i USING (item_digest)
                   GROUP BY l.weights_digest, l.template""").fetchall()
        finally:
            con.unregister("_items")
    want = {(r["weights_digest"], r["template"]) for r in runs}
    return {d: float(v) for d, t, v, n in rows if (d, t) in want and n == items.height and v is not None}


def _explain_winner(board: Leaderboard, items: pl.DataFrame, S: np.ndarray, labels: list[str], leader: int,
                    outputs: list[dict[str, str]], max_listed: int, rank: np.ndarray) -> None:
    """Where the winner loses: items and slices, plus items checkpoints disagree on."""
    ids = items["id"].to_list()
    meta = items.select("id", "slice", "task", "prompt", "reference").to_dicts()
    others = [j for j in range(S.shape[1]) if j != leader]
    win = S[:, leader]
    best_other = S[:, others].max(axis=1) if others else win
    losses = np.nonzero(best_other > win + 1e-12)[0]
    # Largest loss first; among equal losses, items more models get right first.
    n_beat = (S[:, others] > win[:, None] + 1e-12).sum(axis=1) if others else np.zeros(len(win))
    losses = losses[np.lexsort((-n_beat[losses], -(best_other[losses] - win[losses])))]
    for i in losses[:max_listed]:
        beaten_by = sorted((j for j in others if S[i, j] > win[i] + 1e-12), key=lambda j: rank[j])
        best_j = max(others, key=lambda j: (S[i, j], -rank[j]))  # ties: the better-ranked model
        beaten_by = [labels[j] for j in beaten_by]
        board.winner_losses.append({
            "id": ids[i], "slice": meta[i]["slice"], "task": meta[i]["task"],
            "prompt": _short(_prompt_text(meta[i]["prompt"])), "reference": _short(meta[i]["reference"]),
            "winner_score": float(win[i]), "best_other_score": float(S[i, best_j]),
            "best_other": labels[best_j], "beaten_by": beaten_by,
            "winner_output": _short(outputs[leader].get(ids[i])),
            "best_other_output": _short(outputs[best_j].get(ids[i]))})
    board.n_winner_losses = int(len(losses))
    for s in board.slices:
        m = (items["slice"] == s).to_numpy()
        means = S[m].mean(axis=0)
        j = int(np.argmax(means))
        if means[j] > means[leader] + 1e-12:
            board.slice_losses.append({"slice": s, "winner_score": float(means[leader]),
                                       "best": labels[j], "best_score": float(means[j]),
                                       "n_items": int(m.sum())})
    spread = S.max(axis=1) - S.min(axis=1)
    disagree = np.nonzero(spread > 1e-12)[0]
    board.n_disagreements = int(len(disagree))
    for i in disagree[np.argsort(-spread[disagree], kind="stable")][:max_listed]:
        board.disagreements.append({
            "id": ids[i], "slice": meta[i]["slice"], "task": meta[i]["task"],
            "spread": float(spread[i]), "scores": {labels[j]: float(S[i, j]) for j in range(S.shape[1])}})
    for i in range(S.shape[0]):
        board.items.append({
            "id": ids[i], "slice": meta[i]["slice"], "task": meta[i]["task"],
            "prompt": _prompt_text(meta[i]["prompt"]), "reference": meta[i]["reference"],
            "scores": {labels[j]: float(S[i, j]) for j in range(S.shape[1])},
            "outputs": {labels[j]: outputs[j].get(ids[i]) for j in range(S.shape[1])}})


def _prompt_text(prompt: list[dict[str, str]] | None) -> str:
    return "\n".join(f"{m['role']}: {m['content']}" for m in prompt or [])
