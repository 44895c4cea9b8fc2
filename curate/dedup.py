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
from .dedup_key import SCOPE_KEYS, Segments, check_key, segments

KEEP_POLICIES = ("first", "longest", "quality")
SCOPES = ("prompt", "response", "all")

#: stage codes in DedupResult.stage
KEPT, EXACT, NEAR = 0, 1, 2
STAGE_NAMES = {EXACT: "dedup-exact", NEAR: "dedup-minhash"}


@dataclass
class DedupConfig:
    """Settings of the dedup step (also the ``dedup`` entry of a recipe)."""

    scope: str = "all"              # prompt | response | all: shorthand for key turns | prompt | response
    # what must match, segment by segment (bakeoff.curate.dedup_key): None = the
    # scope's turns; e.g. [last_user, response] or [meta.group, last_user]
    key: list[str] | None = None
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
        if self.key is not None:
            self.key = check_key(self.key)
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
                order: np.ndarray | None = None, show_progress: bool = False,
                segments: Segments | None = None) -> DedupResult:
    """Exact then MinHash dedup of ``texts`` in keep-priority ``order``
    (default: first row wins). The Python API behind the step and the CLI.

    With ``segments`` (:func:`bakeoff.curate.dedup_key.segments`) a row is a
    list of segments (its turns) and ``texts`` is ignored: two rows are exact
    duplicates when every segment is equal after normalisation, near-duplicates
    when every segment's Jaccard is >= threshold (``similarity``: the lowest)."""
    cfg = (config or DedupConfig()).validate()
    if segments is None:
        series = mh._as_series(texts).cast(pl.String)
        segments = Segments(series, pl.Series([], dtype=pl.String),
                            np.arange(series.len() + 1, dtype=np.int64), np.zeros(series.len(), np.int64))
    if cfg.threads is None:
        return _dedup_texts(segments, cfg, order, show_progress)
    import numba

    old = numba.get_num_threads()
    numba.set_num_threads(min(cfg.threads, numba.config.NUMBA_NUM_THREADS))
    try:
        return _dedup_texts(segments, cfg, order, show_progress)
    finally:
        numba.set_num_threads(old)


def _row_fingerprints(seg_fp: np.ndarray, offsets: np.ndarray, shape: np.ndarray,
                      fold: bool | None = None) -> np.ndarray:
    """One 128-bit fingerprint per row from its segments' fingerprints, in
    order, and its shape (a row of one segment keeps that segment's).
    ``fold``: fold even plain rows (None: only when some row is not plain; a
    batch of a larger table must follow the table's choice)."""
    n = offsets.size - 1
    if fold is None:
        fold = not (n == 0 or (np.diff(offsets) == 1).all() and not shape.any())
    if not fold:
        return seg_fp[offsets[:-1]] if n else np.zeros((0, 2), np.uint64)
    # fold with position so that [a, b] and [b, a] differ: h = h * K + fp, per lane
    out = np.zeros((n, 2), np.uint64)
    out[:, 0] = shape.view(np.uint64)
    counts = np.diff(offsets)
    with np.errstate(over="ignore"):
        for t in range(int(counts.max(initial=0))):
            rows = np.flatnonzero(counts > t)
            out[rows] = out[rows] * np.uint64(0x9E3779B97F4A7C15) + seg_fp[offsets[rows] + t]
            out[rows] ^= out[rows] >> np.uint64(29)
    return out


def exact_representatives(fp: np.ndarray, rank: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact groups of rows with equal 128-bit fingerprints ``fp`` (k, 2): the
    positions of every member but the best-ranked one, and of the member each
    copies (its group's best-ranked). Shared by the local and the Ray paths."""
    srt = np.lexsort((rank, fp[:, 1], fp[:, 0]))
    ds = fp[srt]
    new_group = np.ones(srt.size, bool)
    new_group[1:] = (ds[1:] != ds[:-1]).any(axis=1)
    rep = srt[np.flatnonzero(new_group)[np.cumsum(new_group) - 1]]
    return srt[~new_group], rep[~new_group]


def merge_near(partner: np.ndarray, similarity: np.ndarray, stage: np.ndarray, rows: np.ndarray,
               kept: np.ndarray, sims: np.ndarray) -> None:
    """Record the MinHash stage's removals (``rows`` duplicate ``kept`` with
    Jaccard ``sims``) in place. Shared by the local and the Ray paths."""
    partner[rows] = kept
    similarity[rows] = sims
    stage[rows] = NEAR
    # An exact group's representative may itself be a near-duplicate of an
    # earlier kept row: its copies then point at that kept row, with the
    # same verified Jaccard (identical normalised text, identical shingles).
    moved = (stage == EXACT) & (stage[np.maximum(partner, 0)] == NEAR)
    rep = partner[moved]
    partner[moved] = partner[rep]
    similarity[moved] = similarity[rep]
    stage[moved] = NEAR


def _dedup_texts(seg: Segments, cfg: DedupConfig, order: np.ndarray | None,
                 show_progress: bool) -> DedupResult:
    t0 = time.perf_counter()
    offsets = seg.offsets
    n = offsets.size - 1
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
    # segment (128 bits). The exact stage needs only the fingerprints, and rows
    # it removes are never shingled or signed.
    from bakeoff.console import progress

    n_seg = seg.texts.len()
    with progress() if show_progress else contextlib.nullcontext() as bar:
        norm_cb = sig_cb = None
        if bar is not None:
            t_norm = bar.add_task("normalise + fingerprint", total=n_seg)
            t_sig = bar.add_task("minhash signatures", total=n_seg)
            norm_cb = lambda done: bar.update(t_norm, completed=done)  # noqa: E731
            sig_cb = lambda done: bar.update(t_sig, completed=done)  # noqa: E731
        corpus = mh.NormalizedCorpus(seg.texts, batch_size=cfg.batch_size, progress_cb=norm_cb)
        t1 = time.perf_counter()
        # a row whose segments all normalise to nothing has no shingles
        seg_len = np.r_[0, np.cumsum(corpus.lengths)]
        active = (seg_len[offsets[1:]] - seg_len[offsets[:-1]]) > 0

        # Stage 1: identical normalised segments (equal 128-bit fingerprints of
        # the rows). The group's representative is its member with the smallest rank.
        if cfg.exact:
            fp = _row_fingerprints(corpus.fingerprint, offsets, seg.shape)
            idx = np.flatnonzero(active)
            dup_pos, rep_pos = exact_representatives(fp[idx], rank[idx])
            dup = idx[dup_pos]
            partner[dup] = idx[rep_pos]
            similarity[dup] = 1.0
            stage[dup] = EXACT
            active[dup] = False
        t2 = time.perf_counter()
        survivors = np.flatnonzero(active)
        counts = np.diff(offsets)[survivors]
        sub_offsets = np.zeros(survivors.size + 1, np.int64)
        np.cumsum(counts, out=sub_offsets[1:])
        # the survivors' segments, ascending (rows and their segments are in order)
        seg_rows = np.repeat(offsets[survivors], counts) + (
            np.arange(int(sub_offsets[-1])) - np.repeat(sub_offsets[:-1], counts))
        sk = None
        if bar is not None:
            bar.update(t_sig, total=int(seg_rows.size))
        if cfg.near and survivors.size:
            sk = corpus.sketch(seg_rows, num_perm=cfg.num_perm, ngram=cfg.ngram, seed=cfg.seed,
                               unit=cfg.unit, progress_cb=sig_cb)
        del corpus
    t3 = time.perf_counter()

    # Stage 2: MinHash LSH over the survivors, greedy in rank order, verified
    # segment by segment.
    t4 = t3
    if sk is not None:
        pos = np.full(n, -1, np.int64)
        pos[survivors] = np.arange(survivors.size)
        sub_order = pos[order[active[order]]]
        plain = seg_rows.size == survivors.size and not seg.shape.any()
        near_partner, near_sim, lsh_stats = mh.greedy_dedup(
            sk, cfg.threshold, sub_order, cfg.fp_weight,
            segments=None if plain else sub_offsets, shape=None if plain else seg.shape[survivors])
        t4 = time.perf_counter()
        hit = np.flatnonzero(near_partner >= 0)
        merge_near(partner, similarity, stage, survivors[hit], survivors[near_partner[hit]], near_sim[hit])
        stats.update(lsh_stats)
        stats["shingles"] = int(sk.hashes.size)
    # counted at the end: exact copies of a near-removed row moved to NEAR above
    stats["removed_exact"] = int((stage == EXACT).sum())
    stats["removed_near"] = int((stage == NEAR).sum())
    stats["timings"] = {"normalize_s": round(t1 - t0, 4), "exact_s": round(t2 - t1, 4),
                        "sketch_s": round(t3 - t2, 4), "lsh_verify_s": round(t4 - t3, 4),
                        "total_s": round(time.perf_counter() - t0, 4)}
    return DedupResult(partner, similarity, stage, stats)


#: a step that removes more than this share of its input says so loudly
LOUD_SHARE = 0.25


def dedup_rows(df: pl.DataFrame, config: DedupConfig | None = None, executor: Any = None) -> StepOutput:
    """The dedup step: rows -> StepOutput (kept rows, ledger of removed rows
    naming the row each duplicates and why, report). ``executor``
    (:class:`bakeoff.executor.Executor`): where the batches run (default: here)."""
    cfg = (config or DedupConfig()).validate()
    key = cfg.key or SCOPE_KEYS[cfg.scope]
    seg = segments(df, key)
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
    if executor is not None and executor.is_ray:
        from .on_ray.minhash import dedup_segments_on_ray

        res = dedup_segments_on_ray(seg, cfg, order, executor)
    else:
        res = dedup_texts(None, cfg, order=order, show_progress=df.height >= 20000, segments=seg)

    removed = np.flatnonzero(res.removed)
    ids = df["id"]
    ledger = dedup_ledger(ids.gather(removed), ids.gather(res.partner[removed]), res, removed,
                          np.diff(seg.offsets)[removed], key, cfg)
    rows = df.filter(pl.Series(~res.removed))
    report = _report(df.height, ids, texts, res, cfg, key)
    return StepOutput(rows=rows, ledger=ledger, report=report)


def dedup_ledger(removed_ids: pl.Series, kept_ids: pl.Series, res: DedupResult, removed: np.ndarray,
                 counts: np.ndarray, key: list[str], cfg: DedupConfig, chunk: int = 500_000) -> pl.DataFrame:
    """The step's ledger: per removed row (``removed``, ascending; its id, the
    kept row's id, its number of segments ``counts``), stage, rule, similarity
    and the reason in words. Built ``chunk`` rows at a time: the reasons'
    intermediate strings for millions of removed rows would cost twice the
    ledger's own memory."""
    parts = []
    for lo in range(0, max(removed.size, 1), chunk):
        rows = removed[lo:lo + chunk]
        stage = pl.Series(res.stage[rows])
        kept = kept_ids.slice(lo, chunk).cast(pl.String)
        parts.append(new_ledger(
            row_id=removed_ids.slice(lo, chunk).cast(pl.String),
            stage=stage.replace_strict(STAGE_NAMES, return_dtype=pl.String),
            rule=pl.select(pl.when(pl.lit(stage == EXACT)).then(pl.lit("exact-normalized"))
                           .otherwise(pl.lit(f"jaccard>={cfg.threshold:g}"))).to_series(),
            score=res.similarity[rows],
            kept_row_id=kept,
            similarity=res.similarity[rows],
            cluster_id=kept,
            detail=_reasons(counts[lo:lo + chunk], res, rows, key, cfg),
        ))
    return pl.concat(parts)


def _reasons(counts: np.ndarray, res: DedupResult, removed: np.ndarray, key: list[str],
             cfg: DedupConfig) -> pl.Series:
    """Per removed row, the ledger detail: JSON with a sentence that says why
    (which segments were compared and how alike they were). ``counts``: the
    removed rows' numbers of segments."""
    if not removed.size:
        return pl.Series([], dtype=pl.String)
    frame = pl.DataFrame({"n": counts, "sim": res.similarity[removed], "exact": res.stage[removed] == EXACT})
    what = " + ".join(key)
    reason = (pl.when(pl.col("exact"))
              .then(pl.format("same text after normalising case, punctuation and spaces, in all {} segment(s) "
                              f"of the key [{what}]", pl.col("n")))
              .otherwise(pl.format(f"every one of the {{}} segment(s) of the key [{what}] shares >= "
                                   f"{cfg.threshold:g} of its word {cfg.ngram}-grams with the kept row "
                                   "(lowest segment Jaccard {})", pl.col("n"), pl.col("sim").round(3))))
    return frame.select(pl.struct(
        reason.alias("reason"), pl.lit(key).alias("key"), pl.lit(cfg.unit).alias("unit"),
        pl.lit(cfg.ngram).alias("ngram")).struct.json_encode().alias("detail"))["detail"]


def _largest_clusters(res: DedupResult, removed: np.ndarray, examples: int) -> pl.DataFrame:
    return pl.DataFrame({"kept": res.partner[removed], "sim": res.similarity[removed]}).group_by(
        "kept").agg(pl.len().alias("removed"), pl.col("sim").min().alias("min_jaccard")).sort(
        ["removed", "kept"], descending=[True, False]).head(examples)


def report_rows(res: DedupResult, examples: int = 3) -> np.ndarray:
    """The rows whose ids and texts :func:`_report` shows (for a caller that
    does not hold every row: the Ray executor fetches just these)."""
    removed = np.flatnonzero(res.removed)
    if not removed.size:
        return np.zeros(0, np.int64)
    need = []
    for kept in _largest_clusters(res, removed, examples)["kept"].to_list():
        need += [kept, *removed[res.partner[removed] == kept][:2].tolist()]
    if removed.size > LOUD_SHARE * res.partner.size:
        pick = np.linspace(0, removed.size - 1, min(3, removed.size)).astype(np.int64)
        need += removed[pick].tolist() + res.partner[removed[pick]].tolist()
    return np.unique(np.asarray(need, np.int64))


def _report(rows_in: int, ids: Any, texts: Any, res: DedupResult, cfg: DedupConfig, key: list[str],
            examples: int = 3) -> dict[str, Any]:
    """Counts, timings, the largest clusters with example texts and, when the
    step removes more than LOUD_SHARE of its input, a warning with removed rows
    beside the rows they were judged against. ``ids``, ``texts``: by row
    number (a Series of every row, or a dict of :func:`report_rows`)."""
    removed = np.flatnonzero(res.removed)
    clusters: list[dict[str, Any]] = []
    if removed.size:
        sizes = _largest_clusters(res, removed, examples)
        for kept, n_removed, min_j in sizes.iter_rows():
            members = removed[res.partner[removed] == kept][:2]
            clusters.append({
                "kept_row_id": ids[int(kept)], "removed": int(n_removed), "min_jaccard": round(min_j, 4),
                "kept_text": texts[int(kept)][:200],
                "removed_examples": [texts[int(m)][:200] for m in members],
            })
    report = {
        "step": "dedup", "config": cfg.to_dict(), "key": key, "rows_in": rows_in,
        "rows_out": int(rows_in - removed.size),
        "removed_exact": res.stats.get("removed_exact", 0), "removed_near": res.stats.get("removed_near", 0),
        "clusters": int(np.unique(res.partner[removed]).size) if removed.size else 0,
        "lsh": {k: res.stats[k] for k in ("bands", "rows_per_band", "verified_pairs") if k in res.stats},
        "timings": res.stats.get("timings", {}), "largest_clusters": clusters,
    }
    warning = loud_warning("dedup", rows_in, removed, res.partner[removed], texts)
    if warning:
        report["warning"] = warning
    return report


def loud_warning(step: str, rows_in: int, removed: np.ndarray, partner: np.ndarray, texts: pl.Series,
                 k: int = 3) -> dict[str, Any] | None:
    """When a step removes more than LOUD_SHARE of its input: a message and a
    few removed rows shown beside the row each was judged against."""
    if not rows_in or removed.size <= LOUD_SHARE * rows_in:
        return None
    pick = np.linspace(0, removed.size - 1, min(k, removed.size)).astype(np.int64)
    return {
        "message": f"{step} removed {removed.size:,} of {rows_in:,} rows ({removed.size / rows_in:.0%}), "
                   f"more than {LOUD_SHARE:.0%}: check the pairs below before trusting this version",
        "pairs": [{"removed": _short(texts[int(removed[i])]), "judged_against": _short(texts[int(partner[i])])}
                  for i in pick],
    }


def _short(text: str | None, n: int = 240) -> str:
    """Head and tail of a text (the question of a long prompt is at its end)."""
    text = " ".join((text or "").split())
    return text if len(text) <= n else text[: n // 2 - 1] + " … " + text[-(n // 2 - 2):]
