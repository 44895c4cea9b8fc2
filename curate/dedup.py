"""Exact and MinHash near-duplicate removal.

Two stages, both in keep-priority order (``keep``: first row, longest text, or
highest quality score):

1. **exact** -- rows whose *normalised* text (lowercase, punctuation and
   whitespace runs collapsed; see :func:`bakeoff.curate.minhash.normalize`) is
   identical -- compared by a 128-bit SHA-1 digest computed in the same pass as
   the shingles, so the normalised corpus is never held in memory: all but the
   highest-priority one are removed (similarity 1.0).
2. **minhash** -- the survivors are sketched (datasketch-equal MinHash, see
   :mod:`bakeoff.curate.minhash`) and walked in priority order: a row is removed
   only if an already-kept row shares an LSH bucket with it *and* their exact
   shingle Jaccard is >= threshold. So every removed row names a kept row it was
   verified against, and the result is the sequential greedy one whatever the
   thread or batch count.

A cluster is a kept row and the rows removed in its favour; its id is the kept
row's id.

Empty texts (after normalisation) are never duplicates of anything here:
removing all-but-one empty prompt would be a filter's job, with its own rule.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np
import polars as pl

from bakeoff.schema import text_for_scope
from bakeoff.steps import StepOutput
from bakeoff.workspace import BakeoffError, new_ledger

from . import minhash as mh

KEEP_POLICIES = ("first", "longest", "quality")
SCOPES = ("prompt", "response", "all")

#: stage codes in DedupResult.stage
KEPT, EXACT, NEAR = 0, 1, 2
STAGE_NAMES = {EXACT: "dedup-exact", NEAR: "dedup-minhash"}


@dataclass
class DedupConfig:
    """Settings of the dedup step (also the ``dedup`` entry of a recipe)."""

    scope: str = "all"              # prompt | response | all (bakeoff.schema.text_for_scope)
    exact: bool = True              # stage 1: identical normalised text
    near: bool = True               # stage 2: MinHash LSH + verified Jaccard
    threshold: float = 0.8          # Jaccard of shingle sets
    num_perm: int = 128
    ngram: int = 3
    unit: str = "word"              # word | char shingles
    seed: int = 1
    keep: str = "first"             # first | longest | quality
    quality_column: str = "quality"  # used by keep='quality'
    # LSH bands/rows come from datasketch's optimiser with this false-positive
    # weight (false-negative weight = 1 - it). Candidates are verified, so a
    # false positive only costs one Jaccard; a false negative costs recall.
    fp_weight: float = 0.01
    batch_size: int = mh.DEFAULT_BATCH

    def validate(self) -> "DedupConfig":
        if self.scope not in SCOPES:
            raise BakeoffError(f"dedup scope must be one of {SCOPES}, got {self.scope!r}")
        if self.keep not in KEEP_POLICIES:
            raise BakeoffError(f"dedup keep policy must be one of {KEEP_POLICIES}, got {self.keep!r}")
        if self.unit not in mh.UNITS:
            raise BakeoffError(f"dedup shingle unit must be one of {mh.UNITS}, got {self.unit!r}")
        if not 0.0 < self.threshold <= 1.0:
            raise BakeoffError(f"dedup threshold must be in (0, 1], got {self.threshold}")
        if self.num_perm < 2 or self.ngram < 1:
            raise BakeoffError("dedup needs num_perm >= 2 and ngram >= 1")
        if not 0.0 <= self.fp_weight <= 1.0:
            raise BakeoffError("dedup fp_weight must be in [0, 1]")
        return self

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "DedupConfig":
        d = dict(d or {})
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise BakeoffError(f"unknown dedup option(s): {', '.join(sorted(unknown))}")
        return cls(**d).validate()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class DedupResult:
    """Per input row: ``partner`` = the kept row it duplicates (-1: kept),
    ``similarity`` = verified Jaccard (1.0 for exact), ``stage`` (KEPT/EXACT/NEAR)."""

    partner: np.ndarray
    similarity: np.ndarray
    stage: np.ndarray
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def removed(self) -> np.ndarray:
        return self.partner >= 0


def keep_order(n: int, keep: str = "first", lengths: np.ndarray | None = None,
               quality: np.ndarray | None = None) -> np.ndarray:
    """Row indices from highest to lowest keep priority; ties go to the earlier
    row, so the order (and the result) is deterministic."""
    idx = np.arange(n, dtype=np.int64)
    if keep == "first":
        return idx
    if keep == "longest":
        if lengths is None:
            raise ValueError("keep='longest' needs lengths")
        return np.lexsort((idx, -np.asarray(lengths, dtype=np.int64)))
    if keep == "quality":
        if quality is None:
            raise ValueError("keep='quality' needs quality scores")
        q = np.asarray(quality, dtype=np.float64)
        q = np.where(np.isnan(q), -np.inf, q)  # a missing score ranks last
        return np.lexsort((idx, -q))
    raise ValueError(f"unknown keep policy {keep!r}")


def dedup_texts(texts: Sequence[str] | pl.Series, config: DedupConfig | None = None,
                order: np.ndarray | None = None, show_progress: bool = False) -> DedupResult:
    """Exact then MinHash dedup of ``texts`` in keep-priority ``order``
    (default: first row wins). The Python API behind the step and the CLI."""
    cfg = (config or DedupConfig()).validate()
    t0 = time.perf_counter()
    series = mh._as_series(texts).cast(pl.String)
    n = series.len()
    order = np.arange(n, dtype=np.int64) if order is None else np.ascontiguousarray(order, np.int64)
    if order.shape != (n,) or (n and not np.array_equal(np.sort(order), np.arange(n))):
        raise ValueError("order must be a permutation of the row indices")
    partner = np.full(n, -1, np.int64)
    similarity = np.zeros(n, np.float64)
    stage = np.zeros(n, np.int8)
    stats: dict[str, Any] = {"rows": n}
    if n == 0:
        stats.update(removed_exact=0, removed_near=0, timings={})
        return DedupResult(partner, similarity, stage, stats)

    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n)
    # One batched pass: normalise, hash shingles, sign, and digest each whole
    # normalised text (128 bits of SHA-1) for the exact stage. Rows the exact
    # stage removes were sketched for nothing, but the normalised corpus never
    # has to sit in memory (this is what keeps 200k rows under 1 GB).
    kw = dict(num_perm=cfg.num_perm, ngram=cfg.ngram, seed=cfg.seed, unit=cfg.unit,
              batch_size=cfg.batch_size, digests=True)
    if show_progress:
        from bakeoff.console import progress

        with progress() as p:
            task = p.add_task("minhash signatures", total=n)
            sk = mh.sketch(series, progress_cb=lambda done: p.update(task, completed=done), **kw)
    else:
        sk = mh.sketch(series, **kw)
    t1 = time.perf_counter()
    nonempty = sk.sizes > 0  # an empty normalised text has no shingles

    # Stage 1: identical normalised text (equal 128-bit digests). The group's
    # representative is its member with the smallest rank.
    active = nonempty.copy()
    if cfg.exact:
        idx = np.flatnonzero(nonempty)
        d = sk.digest[idx]
        srt = idx[np.lexsort((rank[idx], d[:, 1], d[:, 0]))]
        ds = sk.digest[srt]
        new_group = np.ones(srt.size, bool)
        new_group[1:] = (ds[1:] != ds[:-1]).any(axis=1)
        rep = srt[np.flatnonzero(new_group)[np.cumsum(new_group) - 1]]
        dup = srt[~new_group]
        partner[dup] = rep[~new_group]
        similarity[dup] = 1.0
        stage[dup] = EXACT
        active[dup] = False
    t2 = time.perf_counter()

    # Stage 2: MinHash LSH over the rest, greedy in rank order, verified.
    t3 = t2
    if cfg.near and active.any():
        sub_order = order[active[order]]
        near_partner, near_sim, lsh_stats = mh.greedy_dedup(sk, cfg.threshold, sub_order, cfg.fp_weight)
        t3 = time.perf_counter()
        hit = near_partner >= 0
        partner[hit] = near_partner[hit]
        similarity[hit] = near_sim[hit]
        stage[hit] = NEAR
        # An exact group's representative may itself be a near-duplicate of an
        # earlier kept row: its copies then point at that kept row, with the
        # same verified Jaccard (identical normalised text, identical shingles).
        moved = (stage == EXACT) & (stage[np.maximum(partner, 0)] == NEAR)
        rep = partner[moved]
        partner[moved] = partner[rep]
        similarity[moved] = similarity[rep]
        stage[moved] = NEAR
        stats.update(lsh_stats)
    stats["shingles"] = int(sk.hashes.size)
    # counted at the end: exact copies of a near-removed row moved to NEAR above
    stats["removed_exact"] = int((stage == EXACT).sum())
    stats["removed_near"] = int((stage == NEAR).sum())
    stats["timings"] = {"sketch_s": round(t1 - t0, 4), "exact_s": round(t2 - t1, 4),
                        "lsh_verify_s": round(t3 - t2, 4), "total_s": round(time.perf_counter() - t0, 4)}
    return DedupResult(partner, similarity, stage, stats)


def dedup_rows(df: pl.DataFrame, config: DedupConfig | None = None) -> StepOutput:
    """The dedup step: rows -> StepOutput (kept rows, ledger of removed rows
    naming the row each duplicates, report)."""
    cfg = (config or DedupConfig()).validate()
    texts = df.select(text_for_scope(cfg.scope))["text"]
    quality = None
    if cfg.keep == "quality":
        if cfg.quality_column not in df.columns:
            raise BakeoffError(
                f"keep='quality' needs a numeric column {cfg.quality_column!r}; columns are {df.columns}")
        try:
            quality = df[cfg.quality_column].cast(pl.Float64).fill_null(float("nan")).to_numpy()
        except pl.exceptions.PolarsError as exc:
            raise BakeoffError(f"quality column {cfg.quality_column!r} is not numeric: {exc}") from None
    lengths = texts.str.len_chars().to_numpy() if cfg.keep == "longest" else None
    order = keep_order(df.height, cfg.keep, lengths=lengths, quality=quality)
    res = dedup_texts(texts, cfg, order=order, show_progress=df.height >= 20000)

    removed = np.flatnonzero(res.removed)
    ids = df["id"]
    kept_ids = ids.gather(res.partner[removed]) if removed.size else pl.Series([], dtype=pl.String)
    rule = np.where(res.stage[removed] == EXACT, "exact-normalized", f"jaccard>={cfg.threshold:g}")
    ledger = new_ledger(
        row_id=ids.gather(removed) if removed.size else pl.Series([], dtype=pl.String),
        stage=pl.Series([STAGE_NAMES[int(s)] for s in res.stage[removed]], dtype=pl.String),
        rule=pl.Series(rule.tolist(), dtype=pl.String),
        score=res.similarity[removed],
        kept_row_id=kept_ids,
        similarity=res.similarity[removed],
        cluster_id=kept_ids,
        detail=pl.Series([json.dumps({"scope": cfg.scope, "unit": cfg.unit, "ngram": cfg.ngram})]
                         * int(removed.size), dtype=pl.String),
    )
    rows = df.filter(pl.Series(~res.removed))
    report = _report(df, texts, res, cfg)
    return StepOutput(rows=rows, ledger=ledger, report=report)


def _report(df: pl.DataFrame, texts: pl.Series, res: DedupResult, cfg: DedupConfig,
            examples: int = 3) -> dict[str, Any]:
    """Counts, timings and the largest clusters with example texts."""
    removed = np.flatnonzero(res.removed)
    clusters: list[dict[str, Any]] = []
    if removed.size:
        sizes = pl.DataFrame({"kept": res.partner[removed], "sim": res.similarity[removed]}).group_by(
            "kept").agg(pl.len().alias("removed"), pl.col("sim").min().alias("min_jaccard")).sort(
            ["removed", "kept"], descending=[True, False]).head(examples)
        for kept, n_removed, min_j in sizes.iter_rows():
            members = removed[res.partner[removed] == kept][:2]
            clusters.append({
                "kept_row_id": df["id"][int(kept)], "removed": int(n_removed), "min_jaccard": round(min_j, 4),
                "kept_text": texts[int(kept)][:200],
                "removed_examples": [texts[int(m)][:200] for m in members],
            })
    return {
        "step": "dedup", "config": cfg.to_dict(), "rows_in": df.height,
        "rows_out": int(df.height - removed.size),
        "removed_exact": res.stats.get("removed_exact", 0), "removed_near": res.stats.get("removed_near", 0),
        "clusters": int(np.unique(res.partner[removed]).size) if removed.size else 0,
        "lsh": {k: res.stats[k] for k in ("bands", "rows_per_band", "verified_pairs") if k in res.stats},
        "timings": res.stats.get("timings", {}), "largest_clusters": clusters,
    }
