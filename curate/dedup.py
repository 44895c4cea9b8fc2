"""Exact and MinHash near-duplicate removal.

Two stages, both in keep-priority order (``keep``: first row, longest text, or
highest quality score):

1. **exact** -- rows whose *normalised* text (lowercase, punctuation and
   whitespace runs collapsed; see :func:`bakeoff.curate.minhash.normalize`) is
   identical -- compared by a 128-bit fingerprint of the normalised text: all
   but the highest-priority one are removed (similarity 1.0), and are never
   shingled or signed.
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

import contextlib
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
    # numba threads for the kernels (None: numba's default, one per core). The
    # result is identical for any value; on a machine whose cores are busy
    # with other work, 1 avoids waiting on threads that are not scheduled.
    threads: int | None = None

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
        if self.threads is not None and self.threads < 1:
            raise BakeoffError("dedup threads must be >= 1")
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
    if cfg.threads is None:
        return _dedup_texts(texts, cfg, order, show_progress)
    import numba

    old = numba.get_num_threads()
    numba.set_num_threads(min(cfg.threads, numba.config.NUMBA_NUM_THREADS))
    try:
        return _dedup_texts(texts, cfg, order, show_progress)
    finally:
        numba.set_num_threads(old)


def _dedup_texts(texts: Sequence[str] | pl.Series, cfg: DedupConfig, order: np.ndarray | None,
                 show_progress: bool) -> DedupResult:
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
    # Pass 1, batch by batch: normalise once and fingerprint each normalised
    # text (128 bits). The exact stage needs only the fingerprints, and rows it
    # removes are never shingled or signed.
    from bakeoff.console import progress

    with progress() if show_progress else contextlib.nullcontext() as bar:
        norm_cb = sig_cb = None
        if bar is not None:
            t_norm = bar.add_task("normalise + fingerprint", total=n)
            t_sig = bar.add_task("minhash signatures", total=n)
            norm_cb = lambda done: bar.update(t_norm, completed=done)  # noqa: E731
            sig_cb = lambda done: bar.update(t_sig, completed=done)  # noqa: E731
        corpus = mh.NormalizedCorpus(series, batch_size=cfg.batch_size, progress_cb=norm_cb)
        t1 = time.perf_counter()
        active = corpus.lengths > 0  # an empty normalised text has no shingles

        # Stage 1: identical normalised text (equal 128-bit fingerprints). The
        # group's representative is its member with the smallest rank.
        if cfg.exact:
            idx = np.flatnonzero(active)
            d = corpus.fingerprint[idx]
            srt = idx[np.lexsort((rank[idx], d[:, 1], d[:, 0]))]
            ds = corpus.fingerprint[srt]
            new_group = np.ones(srt.size, bool)
            new_group[1:] = (ds[1:] != ds[:-1]).any(axis=1)
            rep = srt[np.flatnonzero(new_group)[np.cumsum(new_group) - 1]]
            dup = srt[~new_group]
            partner[dup] = rep[~new_group]
            similarity[dup] = 1.0
            stage[dup] = EXACT
            active[dup] = False
        t2 = time.perf_counter()
        survivors = np.flatnonzero(active)
        sk = None
        if bar is not None:
            bar.update(t_sig, total=int(survivors.size))
        if cfg.near and survivors.size:
            sk = corpus.sketch(survivors, num_perm=cfg.num_perm, ngram=cfg.ngram, seed=cfg.seed,
                               unit=cfg.unit, progress_cb=sig_cb)
        del corpus
    t3 = time.perf_counter()

    # Stage 2: MinHash LSH over the survivors, greedy in rank order, verified.
    t4 = t3
    if sk is not None:
        pos = np.full(n, -1, np.int64)
        pos[survivors] = np.arange(survivors.size)
        sub_order = pos[order[active[order]]]
        near_partner, near_sim, lsh_stats = mh.greedy_dedup(sk, cfg.threshold, sub_order, cfg.fp_weight)
        t4 = time.perf_counter()
        hit = np.flatnonzero(near_partner >= 0)
        rows = survivors[hit]
        partner[rows] = survivors[near_partner[hit]]
        similarity[rows] = near_sim[hit]
        stage[rows] = NEAR
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
    stats["timings"] = {"normalize_s": round(t1 - t0, 4), "exact_s": round(t2 - t1, 4),
                        "sketch_s": round(t3 - t2, 4), "lsh_verify_s": round(t4 - t3, 4),
                        "total_s": round(time.perf_counter() - t0, 4)}
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
