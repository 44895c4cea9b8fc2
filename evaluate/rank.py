"""The leaderboard: every evaluated checkpoint (and base model) on the full test set.

Ranking is by mean score over *all* items, with paired statistics
(:mod:`bakeoff.evaluate.stats`): a checkpoint can fail an item every other
checkpoint passes and still be the best overall. What it claims:

- ``best_set``: the checkpoints that cannot be told apart from the best
  (family-wise error <= 5 % over every pairwise claim); ``winner`` is named only
  when that set has one member.
- Every cell (overall, per slice, per task, the generalisation gap) has its n
  and an interval; cells with n < 30 are flagged ``small``.
- ``winner_losses`` lists the items where the leader scores below another
  checkpoint, ``slice_losses`` the slices where it is not the best (with n and
  an interval of the difference), ``disagreements`` the items on which
  checkpoints do not all agree.

Nothing is dropped silently: checkpoints sharing identical weights are one row
naming every label (``aliases``); every known model that is not ranked (an
interrupted evaluation, missing scores) is in ``not_ranked`` with the reason
and how many items it lacks; checkpoints of the experiment never evaluated on
this test set are in ``unevaluated`` with the command that evaluates them.
Models generated in different environments (settings, batch size, dtype,
device, library versions) are ranked together only with ``allow_mixed``.

Scores come from the cache; a score whose scorer version changed is recomputed
from the stored output (no generation).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from bakeoff.evaluate import cache
from bakeoff.evaluate.items import load_items
from bakeoff.evaluate.runner import score_items
from bakeoff.evaluate.stats import DEFAULT_B, diff_interval_independent, mean_interval, pair_test, rank_models
from bakeoff.workspace import BakeoffError, Workspace

SLICE_ORDER = ("in-domain", "adjacent", "far")
#: Cells with fewer items than this are flagged: their numbers are mostly noise.
SMALL_N = 30
#: The ``template``/``gen_config`` of imported predictions.
IMPORTED = "imported"


def cell(x: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """Mean, n, 95 % interval (Wilson / BCa) and the small-n flag of one cell."""
    x = np.asarray(x, dtype=np.float64)
    if len(x) == 0:
        return {"mean": None, "n": 0, "lo": None, "hi": None, "small": True}
    lo, hi = mean_interval(x, seed=seed)
    return {"mean": float(x.mean()), "n": int(len(x)), "lo": float(lo), "hi": float(hi), "small": len(x) < SMALL_N}


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
    p_vs_leader: float | None     # raw paired test against the leader (uncorrected, descriptive)
    p_adj: float | None           # family-wise adjusted p-value that this is not the best
    diff_lo: float | None         # simultaneous interval of (this - best of the others)
    diff_hi: float | None
    significantly_worse: bool
    worse_than: str | None
    in_best_set: bool
    slices: dict[str, float]
    tasks: dict[str, float]
    gap: float | None
    loglik_per_token: float | None
    slice_stats: dict[str, dict[str, Any]] = field(default_factory=dict)
    task_stats: dict[str, dict[str, Any]] = field(default_factory=dict)
    gap_lo: float | None = None
    gap_hi: float | None = None
    gap_small: bool = False
    aliases: list[str] = field(default_factory=list)
    imported: bool = False
    round: int | None = None
    dataset: str | None = None
    env: dict[str, Any] = field(default_factory=dict)
    #: items whose prompt was cut to fit the model's context (and their share)
    n_truncated: int = 0
    truncated_share: float = 0.0


#: Above this share of items with a cut prompt, the leaderboard warns.
TRUNCATION_WARN = 0.05


@dataclass
class Leaderboard:
    testset: str
    testset_digest: str
    n_items: int
    test: str
    entries: list[Entry]
    slices: list[str]
    tasks: list[str]
    best_set: list[str] = field(default_factory=list)
    critical: float | None = None
    winner_losses: list[dict[str, Any]] = field(default_factory=list)
    n_winner_losses: int = 0
    slice_losses: list[dict[str, Any]] = field(default_factory=list)
    n_disagreements: int = 0
    disagreements: list[dict[str, Any]] = field(default_factory=list)
    not_ranked: list[dict[str, Any]] = field(default_factory=list)
    unevaluated: list[dict[str, Any]] = field(default_factory=list)
    evaluate_command: str | None = None
    #: "round 2 vs round 1": each round's best checkpoint against the previous round's
    round_comparison: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: item-level matrix for drill-down: one dict per item (id, slice, task, prompt,
    #: reference, scores {label: score}, outputs {label: output})
    items: list[dict[str, Any]] = field(default_factory=list)

    @property
    def leader(self) -> Entry | None:
        """The highest mean (not necessarily distinguishable from the runners-up)."""
        return self.entries[0] if self.entries else None

    @property
    def winner(self) -> Entry | None:
        """The sole best checkpoint, or None when several cannot be told apart."""
        return self.leader if len(self.best_set) == 1 else None

    def to_json(self, with_items: bool = False) -> dict[str, Any]:
        rows = []
        for e in self.entries:
            d = asdict(e)
            d["interval"] = [e.lo, e.hi]
            d["significantly_worse_than_leader"] = e.significantly_worse
            rows.append(d)
        out = {"testset": self.testset, "testset_digest": self.testset_digest, "n_items": self.n_items,
               "test": self.test, "slices": self.slices, "tasks": self.tasks,
               "winner": self.winner.label if self.winner else None,
               "leader": self.leader.label if self.leader else None, "best_set": self.best_set,
               "critical": self.critical, "checkpoints": rows,
               "n_winner_losses": self.n_winner_losses, "winner_losses": self.winner_losses,
               "slice_losses": self.slice_losses, "n_disagreements": self.n_disagreements,
               "disagreements": self.disagreements, "not_ranked": self.not_ranked,
               "excluded": self.not_ranked, "unevaluated": self.unevaluated,
               "evaluate_command": self.evaluate_command, "round_comparison": self.round_comparison,
               "warnings": self.warnings}
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


def _describe_env(run: dict[str, Any], envs: set[str]) -> str:
    settings = json.loads(run["settings"] or "{}")
    parts = [f"{k}={v}" for k, v in sorted(settings.items()) if k in ("max_new_tokens", "do_sample", "temperature",
                                                                       "top_p", "seed")]
    for e in sorted(envs):
        parts.append(", ".join(f"{k}={v}" for k, v in sorted(json.loads(e or "{}").items())))
    return "; ".join(parts)


def build_leaderboard(ws: Workspace, testset: str, experiment: str | None = None,
                      n_boot: int = DEFAULT_B, seed: int = 0, reward: Any = None,
                      max_listed: int = 50, allow_mixed: bool = False) -> Leaderboard:
    """Rank every model evaluated on ``testset`` (optionally: only checkpoints of
    ``experiment``, plus base models)."""
    version = ws.resolve(testset)
    runs = cache.runs_for(ws, version.ref)
    started = cache.started_for(ws, version.ref)
    if runs.height == 0 and started.height == 0:
        raise BakeoffError(f"nothing evaluated on {version.ref} yet: run `bakeoff evaluate run --testset "
                           f"{version.ref} --checkpoints ...` first")
    if experiment:
        runs = runs.filter((pl.col("experiment") == experiment) | pl.col("is_base").fill_null(False))
        if runs.filter(~pl.col("is_base").fill_null(False)).height == 0:
            raise BakeoffError(f"no checkpoint of experiment {experiment!r} evaluated on {version.ref}")
    # The latest evaluation of each model.
    runs = runs.sort("completed_at").unique("weights_digest", keep="last", maintain_order=True)
    warnings: list[str] = []
    reward_digests = {json.loads(s).get("reward_digest") for s in runs["settings"].to_list()} - {None}
    if len(reward_digests) > 1:
        warnings.append("models were scored with different reward models")
    _, items = load_items(ws, version.ref, next(iter(reward_digests), None))
    items = items.with_row_index("_row")
    names = cache.aliases(ws, runs["weights_digest"].to_list())

    not_ranked: list[dict[str, Any]] = []
    cols: list[np.ndarray] = []
    outputs: list[dict[str, str]] = []
    kept: list[dict[str, Any]] = []
    envs: list[set[str]] = []
    for run in runs.iter_rows(named=True):
        labels = [a["label"] for a in names.get(run["weights_digest"], [])] or [run["label"] or run["weights_digest"][:12]]
        run["aliases"] = labels
        run["label"] = " = ".join(labels)
        run["is_base"] = bool(run["is_base"]) or any(a["is_base"] for a in names.get(run["weights_digest"], []))
        try:
            with cache.connect(ws):  # one catalog connection per model, not one per query
                scored, _ = score_items(ws, items, run["weights_digest"], run["template"], run["gen_config"],
                                        reward)
                env_rows = cache.load_outputs(ws, run["weights_digest"], run["template"], run["gen_config"],
                                              with_env=True)
        except BakeoffError as exc:
            not_ranked.append({"label": run["label"], "reason": str(exc), "missing": None})
            continue
        joined = items.select("_row", "item_digest").join(scored, on="item_digest", how="left").sort("_row")
        missing = joined["score"].null_count()
        if missing:
            not_ranked.append({"label": run["label"], "missing": int(missing),
                               "reason": f"{missing} of {items.height} items not evaluated (interrupted run? "
                                         "re-run `evaluate run` to resume)"})
            continue
        used = env_rows.join(items.select("prompt_digest").unique(), on="prompt_digest", how="semi")
        envs.append(set(used["env"].fill_null("{}").unique().to_list()))
        cut = set(used.filter(pl.col("truncated"))["prompt_digest"].to_list())
        run["n_truncated"] = int(items["prompt_digest"].is_in(list(cut)).sum()) if cut else 0
        cols.append(joined["score"].to_numpy().astype(np.float64))
        outputs.append(dict(zip(items["id"].to_list(), joined["output"].to_list())))
        kept.append(run)
    not_ranked += _interrupted(ws, items, started, runs, experiment)
    if not kept:
        raise BakeoffError(f"no model has scores for all {items.height} items of {version.ref}: "
                           + "; ".join(f"{e['label']}: {e['reason']}" for e in not_ranked))

    # Outputs stored before environments were recorded ("{}") cannot be checked: warn, do not refuse.
    unknown = [r["label"] for r, e in zip(kept, envs) if r["template"] != IMPORTED and e <= {"{}"}]
    if unknown:
        warnings.append(f"the generation environment of {', '.join(unknown)} was not recorded (outputs from an "
                        "older bakeoff); it could not be checked against the others")
    local = [(r, e - {"{}"}) for r, e in zip(kept, envs) if r["template"] != IMPORTED]
    generated = {_describe_env(r, e) for r, e in local}
    mixed = (len({r["gen_config"] for r, _ in local}) > 1
             or len({frozenset(e) for _, e in local if e}) > 1 or any(len(e) > 1 for _, e in local))
    if mixed:
        msg = ("models were generated under different settings or environments, which changes answers: "
               + " | ".join(sorted(generated)))
        if not allow_mixed:
            raise BakeoffError(msg + ". Re-evaluate them under one setting, or rank anyway with --allow-mixed.")
        warnings.append(msg + " (ranked together because of --allow-mixed)")
    if any(r["template"] == IMPORTED for r in kept):
        warnings.append("imported predictions were generated outside bakeoff; their settings are those the "
                        "importer declared")

    S = np.column_stack(cols)
    stats = rank_models(S, n_boot=n_boot, seed=seed)
    slices = _ordered_slices(items["slice"].unique().to_list())
    tasks = sorted(t for t in items["task"].unique().to_list())
    slice_idx = {s: (items["slice"] == s).to_numpy() for s in slices}
    task_idx = {t: (items["task"] == t).to_numpy() for t in tasks}
    logliks = _logliks(ws, items, kept)
    labels = [r["label"] for r in kept]

    entries = []
    for j, run in enumerate(kept):
        sl = {s: cell(S[m, j], seed) for s, m in slice_idx.items()}
        gap = gap_lo = gap_hi = None
        gap_small = False
        if "in-domain" in sl and "adjacent" in sl:
            a, b = S[slice_idx["in-domain"], j], S[slice_idx["adjacent"], j]
            gap = float(a.mean() - b.mean())
            gap_lo, gap_hi = diff_interval_independent(a, b)
            gap_small = min(len(a), len(b)) < SMALL_N
        meta = _meta(run)
        k = stats.worse_than[j]
        alias_meta = names.get(run["weights_digest"], [])
        kinds = list(dict.fromkeys("base" if a["is_base"] else (a["meta"].get("kind") or "?") for a in alias_meta))
        kind = " = ".join(kinds) if len(kinds) > 1 else (run["kind"] or ("base" if run["is_base"] else None))
        entries.append(Entry(
            label=run["label"], weights_digest=run["weights_digest"],
            is_base=run["is_base"], run_id=run["run_id"], experiment=run["experiment"], step=run["step"],
            kind=kind, path=run["path"], datasets=json.loads(run["datasets"] or "[]"),
            base_model=run["base_model"], gen_config=run["gen_config"], template=run["template"],
            n=S.shape[0], score=float(stats.mean[j]), lo=float(stats.lo[j]), hi=float(stats.hi[j]),
            p_best=float(stats.p_best[j]), rank=int(stats.rank[j]),
            p_vs_leader=_nan_to_none(stats.p_vs_leader[j]), p_adj=_nan_to_none(stats.p_adj[j]),
            diff_lo=_nan_to_none(stats.diff_lo[j]), diff_hi=_nan_to_none(stats.diff_hi[j]),
            significantly_worse=bool(stats.significantly_worse[j]), worse_than=None if k is None else labels[k],
            in_best_set=j in stats.best_set,
            slices={s: c["mean"] for s, c in sl.items()}, slice_stats=sl,
            tasks={t: float(S[m, j].mean()) for t, m in task_idx.items()},
            task_stats={t: cell(S[m, j], seed) for t, m in task_idx.items()},
            gap=gap, gap_lo=gap_lo, gap_hi=gap_hi, gap_small=gap_small,
            loglik_per_token=logliks.get(run["weights_digest"]), aliases=run["aliases"],
            imported=run["template"] == IMPORTED, round=meta.get("round"),
            dataset=(json.loads(run["datasets"] or "[]") or [None])[0],
            env={"settings": json.loads(run["settings"] or "{}"),
                 "generated_with": [json.loads(e or "{}") for e in sorted(envs[j])]},
            n_truncated=run["n_truncated"], truncated_share=run["n_truncated"] / S.shape[0]))
        if run["n_truncated"] / S.shape[0] > TRUNCATION_WARN:
            warnings.append(f"{run['label']}: the prompts of {run['n_truncated']} of {S.shape[0]} items "
                            f"({run['n_truncated'] / S.shape[0]:.0%}) were cut to fit the model's context; its "
                            "score on them is not its score on the task. Use a model with a longer context, fewer "
                            "max_new_tokens, or a test set without such long items.")
    order = sorted(range(len(entries)), key=lambda j: (stats.rank[j], j != stats.leader, -stats.p_best[j], j))
    board = Leaderboard(version.ref, version.digest, items.height, stats.test, [entries[j] for j in order],
                        slices, tasks, best_set=[labels[j] for j in stats.best_set], critical=stats.critical,
                        not_ranked=not_ranked, warnings=warnings)
    _explain_winner(board, items, S, labels, stats.leader, outputs, max_listed, stats.rank)
    board.round_comparison = compare_rounds(entries, S, slice_idx)
    _unevaluated(ws, board, kept, started, experiment)
    return board


def compare_rounds(entries: list[Entry], S: np.ndarray, slice_idx: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """Round r+1 vs round r: the paired difference of each round's best checkpoint
    (highest mean among that round's checkpoints), overall and per slice, with n,
    a 95 % interval and the paired test's p-value. ``entries`` are aligned with
    the columns of ``S``."""
    by_round: dict[int, int] = {}
    for j, e in enumerate(entries):
        if e.round is not None and not e.is_base and (e.round not in by_round or e.score > entries[by_round[e.round]].score):
            by_round[e.round] = j
    rounds = sorted(by_round)
    out = []
    for prev, new in zip(rounds, rounds[1:]):
        a, b = by_round[new], by_round[prev]

        def diff(mask: np.ndarray) -> dict[str, Any]:
            x, y = S[mask, a], S[mask, b]
            p, lo, hi = pair_test(x, y, 0.95)
            return {"diff": float(x.mean() - y.mean()), "lo": float(lo), "hi": float(hi), "p": float(p),
                    "n": int(mask.sum()), "small": int(mask.sum()) < SMALL_N}

        out.append({"round": new, "vs_round": prev, "checkpoint": entries[a].label,
                    "vs_checkpoint": entries[b].label, "overall": diff(np.ones(S.shape[0], dtype=bool)),
                    "slices": {s: diff(m) for s, m in slice_idx.items()}})
    return out


def _meta(run: dict[str, Any]) -> dict[str, Any]:
    try:
        return json.loads(run.get("meta") or "{}")
    except ValueError:
        return {}


def _interrupted(ws: Workspace, items: pl.DataFrame, started: pl.DataFrame, runs: pl.DataFrame,
                 experiment: str | None) -> list[dict[str, Any]]:
    """Evaluations that began on this test set and never completed (under the same
    model, template and settings): listed with how many items they lack."""
    done = {(r["weights_digest"], r["template"], r["gen_config"]) for r in runs.iter_rows(named=True)}
    done_digests = set(runs["weights_digest"].to_list())
    out = []
    prompts = set(items["prompt_digest"].to_list())
    for s in started.iter_rows(named=True):
        key = (s["weights_digest"], s["template"], s["gen_config"])
        if key in done or s["weights_digest"] in done_digests:
            continue
        if experiment:
            with cache.connect(ws) as con:
                row = con.execute("SELECT experiment, is_base FROM eval_models WHERE weights_digest = ?",
                                  [s["weights_digest"]]).fetchone()
            if row and row[0] != experiment and not row[1]:
                continue
        have = cache.stored_prompts(ws, *key) & prompts
        missing = len(prompts - have)
        out.append({"label": s["label"], "missing": missing, "interrupted": True,
                    "reason": f"interrupted: {missing} of {len(prompts)} prompts have no output "
                              f"(re-run `bakeoff evaluate run` on it to resume)"})
    return out


def _unevaluated(ws: Workspace, board: Leaderboard, kept: list[dict[str, Any]], started: pl.DataFrame,
                 experiment: str | None) -> None:
    """Checkpoints of the ranked experiments that were never evaluated on this test
    set (not even partly), and the command that evaluates them."""
    from bakeoff.evaluate.discover import META_FILE

    experiments = {experiment} if experiment else {r["experiment"] for r in kept if r["experiment"]}
    digests = {r["weights_digest"] for r in kept} | set(started["weights_digest"].to_list())
    with cache.connect(ws) as con:
        rows = con.execute("SELECT weights_digest, path FROM eval_aliases").fetchall()
    seen = {str(Path(p).resolve()) for d, p in rows if d in digests and p}
    missing = []
    for exp in sorted(e for e in experiments if e):
        root = ws.runs_dir() / exp
        for meta_file in sorted(root.rglob(META_FILE)) if root.is_dir() else []:
            try:
                meta = json.loads(meta_file.read_text())
            except ValueError:
                continue
            path = str(meta_file.parent.resolve())
            if meta.get("kind") != "reward" and path not in seen:  # a reward model is a scorer, not an answerer
                missing.append({"path": path, "run_id": meta.get("run_id"), "step": meta.get("step"),
                                "kind": meta.get("kind"), "round": meta.get("round")})
    board.unevaluated = missing
    if missing:
        board.evaluate_command = (f"bakeoff evaluate run --testset {board.testset} --checkpoints "
                                  + " ".join(m["path"] for m in missing))
        board.warnings.append(f"{len(missing)} checkpoint(s) of {', '.join(sorted(experiments))} were not evaluated "
                              f"on {board.testset}; evaluate them with: {board.evaluate_command}")


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
            # paired difference (best there - leader) on that slice, with its interval
            _, lo, hi = pair_test(S[m, j], S[m, leader], 0.95)
            board.slice_losses.append({"slice": s, "winner_score": float(means[leader]),
                                       "best": labels[j], "best_score": float(means[j]),
                                       "n_items": int(m.sum()), "diff_lo": float(lo), "diff_hi": float(hi),
                                       "small": int(m.sum()) < SMALL_N})
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
