"""Exact + MinHash dedup on Ray, in stages, with the local step's result.

1. **sign** (``map_batches`` over blocks of rows): normalise each row's
   segments, fingerprint them (for the exact stage), and sketch them: a
   row's MinHash is the element-wise minimum of its segments' (as locally),
   cut into LSH band keys -- all with :mod:`bakeoff.curate.minhash`'s kernels.
2. **exact** (:mod:`.exact`): a hash groupby of the fingerprints.
3. **buckets** (a ``groupby`` shuffle of the band keys of the rows the exact
   stage kept): rows sharing a (band, key) bucket become candidate pairs,
   oriented from the better-ranked row, same shape and sizes that can reach
   the threshold only.
4. **verify** (a ``groupby`` of the pairs by the two blocks holding their
   rows): each group reads those two blocks of texts from the object store,
   shingles just the rows it needs and keeps the pairs whose *every* segment
   (turn) has exact Jaccard >= threshold -- ``minhash._row_jaccard``, the
   local check.
5. **greedy** (driver): the rows in keep order; a row is removed iff an
   already-kept row is a verified partner, naming the most similar (ties to
   the better-ranked) -- the local rule, so the same rows go, with the same
   partners.

Why a greedy walk and not connected components: components would remove C
when A~B and B~C even if A and C differ, and the local step keeps C (its only
partner, B, was removed). The walk is linear in the verified pairs, which are
what the driver holds (24 bytes each) -- never the texts or the sketches.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numba
import numpy as np
import polars as pl
import pyarrow as pa

from bakeoff.curate.minhash import _row_jaccard
from bakeoff.executor import Executor, ray_session

from . import collect, map_options, maybe_die, parallelism, use_task_shuffle

_EPS = 1e-12
#: Removed rows per chunk of the ledger the driver builds (and spills).
LEDGER_CHUNK = 500_000


# --- 1. sign ----------------------------------------------------------------------------------

def _segments_of(block: pa.Table) -> tuple[pl.Series, np.ndarray]:
    """The flat segment texts of a block's rows and their row offsets (from 0)."""
    segs = block.column("segs").combine_chunks()
    offs = segs.offsets.to_numpy().astype(np.int64)
    values = segs.values.slice(int(offs[0]), int(offs[-1] - offs[0]))
    return pl.Series("text", values), offs - offs[0]


def _sign_block(block: pa.Table, cfg: Any, fold: bool, bands: int, rows_per_band: int, rank: Any) -> pa.Table:
    """``rank``: the keep rank of every row (an object ref of the array), or
    None: the row number (keep first)."""
    import ray

    from bakeoff.curate import minhash as mh
    from bakeoff.curate.dedup import _row_fingerprints

    maybe_die()
    texts, offs = _segments_of(block)
    shape = block.column("shape").to_numpy()
    corpus = mh.NormalizedCorpus(texts, batch_size=cfg.batch_size)
    seg_len = np.r_[0, np.cumsum(corpus.lengths)]
    active = (seg_len[offs[1:]] - seg_len[offs[:-1]]) > 0
    fp = _row_fingerprints(corpus.fingerprint, offs, shape, fold=fold)[active]
    rows = np.flatnonzero(active)
    row = block.column("row").to_numpy()[rows]
    out = {"row": row, "rank": row if rank is None else ray.get(rank)[row],
           "fp0": fp[:, 0], "fp1": fp[:, 1], "shape": shape[rows]}
    if cfg.near:
        counts = np.diff(offs)[rows]
        sub = np.zeros(rows.size + 1, np.int64)
        np.cumsum(counts, out=sub[1:])
        seg_rows = np.repeat(offs[rows], counts) + (np.arange(int(sub[-1])) - np.repeat(sub[:-1], counts))
        sk = corpus.sketch(seg_rows, num_perm=cfg.num_perm, ngram=cfg.ngram, seed=cfg.seed, unit=cfg.unit)
        sig = np.minimum.reduceat(sk.sig, sub[:-1], axis=0) if rows.size else sk.sig[:0]
        out["nsh"] = np.add.reduceat(np.diff(sk.hoffs), sub[:-1]) if rows.size else np.zeros(0, np.int64)
        keys = mh._band_keys(np.ascontiguousarray(sig), bands, rows_per_band)  # (bands, rows)
        out["keys"] = pa.FixedSizeListArray.from_arrays(pa.array(keys.T.reshape(-1)), bands)
    return pa.table(out)


# --- 3. buckets -------------------------------------------------------------------------------

def _explode(batch: pa.Table, bands: int, partitions: int, removed: Any) -> pa.Table:
    """One row per (row, band) of the rows the exact stage kept, with the
    shuffle key of its bucket. ``removed``: an object ref of the exact stage's mask."""
    import ray

    row = batch.column("row").to_numpy()
    keep = ~ray.get(removed)[row]
    keys = batch.column("keys").combine_chunks().values.to_numpy().reshape(-1, bands)[keep]
    k = int(keep.sum())
    band = np.tile(np.arange(bands, dtype=np.uint64), k)
    key = keys.reshape(-1)
    with np.errstate(over="ignore"):
        mixed = key * np.uint64(0x9E3779B97F4A7C15) + band * np.uint64(0xBF58476D1CE4E5B9)
        mixed ^= mixed >> np.uint64(31)
    rep = lambda col: np.repeat(batch.column(col).to_numpy()[keep], bands)  # noqa: E731
    return pa.table({"band": band, "key": key, "row": rep("row"), "rank": rep("rank"), "shape": rep("shape"),
                     "nsh": rep("nsh"), "part": (mixed % np.uint64(partitions)).astype(np.int64)})


@numba.njit(cache=True)
def _pairs_in_buckets(starts, ends, row, shape, nsh, threshold):
    """Every (earlier, later) pair of rows in one bucket (rows sorted by rank
    within it) of the same shape whose shingle counts can reach ``threshold``."""
    m = 0
    for s in range(starts.shape[0]):
        c = ends[s] - starts[s]
        m += c * (c - 1) // 2
    a = np.empty(m, np.int64)
    b = np.empty(m, np.int64)
    t = 0
    for s in range(starts.shape[0]):
        for i in range(starts[s], ends[s]):
            for j in range(i + 1, ends[s]):
                if shape[i] != shape[j]:
                    continue
                if min(nsh[i], nsh[j]) < (threshold - 1e-12) * max(nsh[i], nsh[j]):
                    continue
                a[t] = row[i]
                b[t] = row[j]
                t += 1
    return a[:t], b[:t]


def _bucket_pairs(batch: dict[str, np.ndarray], threshold: float, starts: np.ndarray,
                  blocks: int) -> dict[str, np.ndarray]:
    """One shuffle partition of band keys -> the candidate pairs of its buckets.
    A bucket is cut by shape first: only rows of one shape can pair, and a
    bucket of many same-word rows with different numbers (a table's rows)
    would otherwise cost the square of its size."""
    srt = np.lexsort((batch["rank"], batch["shape"], batch["key"], batch["band"]))
    band, key, shape = batch["band"][srt], batch["key"][srt], batch["shape"][srt]
    edge = np.r_[True, (band[1:] != band[:-1]) | (key[1:] != key[:-1]) | (shape[1:] != shape[:-1]), True]
    bounds = np.flatnonzero(edge)
    first, last = bounds[:-1], bounds[1:]
    big = (last - first) > 1
    a, b = _pairs_in_buckets(first[big], last[big], batch["row"][srt].astype(np.int64), shape.astype(np.int64),
                             batch["nsh"][srt].astype(np.int64), float(threshold))
    if a.size:
        pairs = np.unique(np.stack([a, b], axis=1), axis=0)
        a, b = pairs[:, 0], pairs[:, 1]
    return {"a": a, "b": b, "blocks": _block_of(starts, a) * blocks + _block_of(starts, b)}


def _block_of(starts: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The block holding each row (``starts``: each block's first row, then n)."""
    return np.searchsorted(starts, rows, side="right") - 1


# --- 4. verify --------------------------------------------------------------------------------

@numba.njit(cache=True)
def _verify_pairs(ia, ib, hashes, hoffs, soffs, shape, threshold):
    out = np.empty(ia.shape[0], np.float64)
    for t in range(ia.shape[0]):
        out[t] = _row_jaccard(hashes, hoffs, soffs, shape, ia[t], ib[t], threshold)
    return out


def _verify_group(batch: dict[str, np.ndarray], blocks: list[Any], starts: np.ndarray,
                  cfg: Any) -> dict[str, np.ndarray]:
    """The candidate pairs whose rows lie in one pair of blocks, verified on
    the texts of those blocks (read from the object store)."""
    import ray

    from bakeoff.curate import minhash as mh

    maybe_die()
    pairs = np.unique(np.stack([batch["a"], batch["b"]], axis=1).astype(np.int64), axis=0)
    need = np.unique(pairs.reshape(-1))
    texts_parts, counts_parts, shape_parts = [], [], []
    where = _block_of(starts, need)
    for blk in np.unique(where):
        table = ray.get(blocks[int(blk)])
        local = need[where == blk] - int(starts[blk])
        sub = table.take(pa.array(local))
        texts, offs = _segments_of(sub)
        texts_parts.append(texts)
        counts_parts.append(np.diff(offs))
        shape_parts.append(sub.column("shape").to_numpy())
    texts = pl.concat(texts_parts)
    counts = np.concatenate(counts_parts)
    soffs = np.zeros(need.size + 1, np.int64)
    np.cumsum(counts, out=soffs[1:])
    sk = mh.sketch(texts, num_perm=2, ngram=cfg.ngram, seed=cfg.seed, unit=cfg.unit)  # only the shingle hashes
    ia, ib = np.searchsorted(need, pairs[:, 0]), np.searchsorted(need, pairs[:, 1])
    jac = _verify_pairs(ia, ib, sk.hashes, sk.hoffs, soffs, np.concatenate(shape_parts).astype(np.int64),
                        float(cfg.threshold) - _EPS)
    ok = jac >= cfg.threshold - _EPS
    return {"a": pairs[ok, 0], "b": pairs[ok, 1], "jac": jac[ok]}


# --- 5. greedy on the driver ------------------------------------------------------------------

@numba.njit(cache=True)
def _greedy_walk(a, b, jac, rank, n):
    """``a``/``b``/``jac``: verified pairs, ``rank[a] < rank[b]``, sorted by
    ``rank[b]``. The local greedy's decisions (``minhash._greedy``)."""
    partner = np.full(n, -1, np.int64)
    sim = np.zeros(n, np.float64)
    i = 0
    m = a.shape[0]
    while i < m:
        d = b[i]
        best = -1
        bestj = -1.0
        while i < m and b[i] == d:
            k = a[i]
            if partner[k] == -1 and (jac[i] > bestj or (jac[i] == bestj and rank[k] < rank[best])):
                best = k
                bestj = jac[i]
            i += 1
        if best >= 0:
            partner[d] = best
            sim[d] = bestj
    return partner, sim


# --- the stage --------------------------------------------------------------------------------

def _input_table(seg: Any) -> pa.Table:
    texts = seg.texts.cast(pl.String).fill_null("").to_arrow(compat_level=pl.CompatLevel.oldest())
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    segs = pa.LargeListArray.from_arrays(pa.array(seg.offsets, pa.int64()), texts)
    n = seg.offsets.size - 1
    return pa.table({"row": np.arange(n, dtype=np.int64), "shape": seg.shape, "segs": segs})


def dedup_segments_on_ray(seg: Any, cfg: Any, order: np.ndarray, executor: Executor) -> Any:
    """What :func:`bakeoff.curate.dedup.dedup_texts` returns for ``seg``, computed on Ray."""
    n = seg.offsets.size - 1
    order = np.ascontiguousarray(order, np.int64)
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n)
    counts = np.diff(seg.offsets)
    fold = not ((counts == 1).all() and not seg.shape.any())  # the local choice, for every block
    with ray_session(executor) as ray:
        cpus = parallelism(ray)
        table = _input_table(seg)
        # two blocks per CPU at least, and at most ~50k rows each
        per = max(1, min(50_000, -(-n // (2 * cpus))))
        blocks = [ray.put(table.slice(lo, per)) for lo in range(0, n, per)]
        del table
        starts = np.asarray(list(range(0, n, per)) + [n], np.int64)
        return dedup_blocks_on_ray(blocks, starts, rank, cfg, fold, executor)


def dedup_blocks_on_ray(blocks: list[Any], starts: np.ndarray, rank: np.ndarray | None, cfg: Any, fold: bool,
                        executor: Executor) -> Any:
    """Exact + MinHash dedup of the rows in ``blocks`` (object refs of tables
    with ``row``, ``shape`` and ``segs``, the row's segment texts; block k
    holds rows ``starts[k]`` to ``starts[k+1]``): the
    :class:`bakeoff.curate.dedup.DedupResult` the local path gives. ``rank``:
    each row's keep rank (None: the row number, keep first)."""
    from bakeoff.console import log
    from bakeoff.curate import minhash as mh
    from bakeoff.curate.dedup import EXACT, DedupResult, merge_near

    from .exact import exact_duplicates

    t0 = time.perf_counter()
    n = int(starts[-1])
    partner = np.full(n, -1, np.int64)
    similarity = np.zeros(n, np.float64)
    stage = np.zeros(n, np.int8)
    stats: dict[str, Any] = {"rows": n, "executor": "ray"}
    if n == 0:
        stats.update(removed_exact=0, removed_near=0, timings={})
        return DedupResult(partner, similarity, stage, stats)
    bands, rows_per_band = mh.lsh_params(float(cfg.threshold), cfg.num_perm, cfg.fp_weight)

    with ray_session(executor) as ray:
        use_task_shuffle(ray)
        cpus = parallelism(ray)
        rank_ref = None if rank is None else ray.put(np.ascontiguousarray(rank, np.int64))
        ds = ray.data.from_arrow_refs(blocks)
        signed = ds.map_batches(_sign_block, fn_kwargs={"cfg": cfg, "fold": fold, "bands": bands,
                                                        "rows_per_band": rows_per_band, "rank": rank_ref},
                                **map_options()).materialize()
        t1 = time.perf_counter()
        log(f"dedup on ray: signed {n:,} rows in {len(blocks)} blocks ({t1 - t0:.1f}s)")

        removed = np.zeros(n, bool)
        if cfg.exact:
            partitions = max(2 * cpus, n // 500_000)
            dup, rep = exact_duplicates(ray, signed.select_columns(["row", "rank", "fp0", "fp1"]), partitions)
            partner[dup] = rep
            similarity[dup] = 1.0
            stage[dup] = EXACT
            removed[dup] = True
            del dup, rep
        t2 = time.perf_counter()

        verified = 0
        if cfg.near:
            partitions = max(2 * cpus, n * bands // 2_000_000)
            pairs = (signed.map_batches(_explode, fn_kwargs={"bands": bands, "partitions": partitions,
                                                             "removed": ray.put(removed)}, **map_options())
                     .groupby("part", num_partitions=partitions)
                     .map_groups(_bucket_pairs, batch_format="numpy",
                                 fn_kwargs={"threshold": cfg.threshold, "starts": starts, "blocks": len(blocks)})
                     .groupby("blocks", num_partitions=partitions)
                     .map_groups(_verify_group, batch_format="numpy",
                                 fn_kwargs={"blocks": blocks, "starts": starts, "cfg": cfg}, ))
            found = collect(pairs)
            t3 = time.perf_counter()
            a = found["a"].to_numpy() if found.num_rows else np.zeros(0, np.int64)
            b = found["b"].to_numpy() if found.num_rows else np.zeros(0, np.int64)
            jac = found["jac"].to_numpy() if found.num_rows else np.zeros(0, np.float64)
            del found
            verified = int(a.size)
            if rank is None:
                rank = np.arange(n, dtype=np.int64)
            walk = np.argsort(rank[b], kind="stable")
            near_partner, near_sim = _greedy_walk(a[walk], b[walk], jac[walk], rank, n)
            hit = np.flatnonzero(near_partner >= 0)
            merge_near(partner, similarity, stage, hit, near_partner[hit], near_sim[hit])
        else:
            t3 = t2
        del signed
    t4 = time.perf_counter()
    stats.update(bands=bands, rows_per_band=rows_per_band, verified_pairs=verified,
                 removed_exact=int((stage == EXACT).sum()), removed_near=int((stage == 2).sum()),
                 timings={"sign_s": round(t1 - t0, 4), "exact_s": round(t2 - t1, 4),
                          "buckets_verify_s": round(t3 - t2, 4), "greedy_s": round(t4 - t3, 4),
                          "total_s": round(t4 - t0, 4)})
    return DedupResult(partner, similarity, stage, stats)


__all__ = ["dedup_segments_on_ray", "dedup_blocks_on_ray"]


# --- the step over streamed rows ------------------------------------------------------------------

def _segment_block(table: pa.Table, key: list[str], scope: str, keep: str, quality_column: str) -> pa.Table:
    """A block of rows -> its rows' segments (``row``, ``shape``, ``segs``),
    segment counts (``nseg``) and what the keep order reads (``len``, ``quality``)."""
    from bakeoff.curate.dedup_key import segments
    from bakeoff.schema import text_for_scope

    df = pl.from_arrow(table)
    seg = segments(df.drop("_row"), key)
    out = _input_table(seg).set_column(0, "row", table.column("_row"))
    out = out.append_column("nseg", pa.array(np.diff(seg.offsets).astype(np.int32)))
    if keep == "longest":
        out = out.append_column("len", df.select(text_for_scope(scope))["text"].str.len_chars().cast(pl.Int64)
                                .to_arrow())
    elif keep == "quality":
        out = out.append_column("quality", df[quality_column].cast(pl.Float64).fill_null(float("nan")).to_arrow())
    return out


def _scope_text(table: pa.Table, scope: str) -> pa.Table:
    from bakeoff.schema import text_for_scope

    df = pl.from_arrow(table)
    return df.select("_row", text_for_scope(scope)).to_arrow()


def dedup_on_ray(source: Any, config: Any, executor: Executor, spill: Path | None = None) -> Any:
    """The dedup step (:func:`bakeoff.curate.dedup.dedup_rows`) over the rows of
    ``source`` (:class:`.rows.RowSource`), on Ray: the local ledger and report,
    as a :class:`RayStepOutput`. ``spill``: a folder; the ledger is written
    there as it is built and comes back as a LazyFrame over those files. The
    driver holds per-row numbers (keep rank, segment counts, the result's
    partner and similarity), the verified pairs, and a chunk of the ledger
    with its ids at a time -- no texts but the few the report quotes."""
    from bakeoff.curate.dedup import DedupConfig, _report, dedup_ledger, keep_order, report_rows
    from bakeoff.curate.dedup_key import SCOPE_KEYS
    from bakeoff.workspace import BakeoffError

    from . import RayStepOutput

    cfg = (config or DedupConfig()).validate()
    key = cfg.key or SCOPE_KEYS[cfg.scope]
    if cfg.keep == "quality" and cfg.quality_column not in source.columns:
        raise BakeoffError(f"keep='quality' needs a numeric column {cfg.quality_column!r}; "
                           f"columns are {source.columns}")
    n = source.n
    with ray_session(executor) as ray:
        blocks, starts = source.blocks(ray, _segment_block, {"key": key, "scope": cfg.scope, "keep": cfg.keep,
                                                             "quality_column": cfg.quality_column})
        small = ["row", "nseg"] + {"longest": ["len"], "quality": ["quality"]}.get(cfg.keep, [])
        per_row = collect(ray.data.from_arrow_refs(blocks).select_columns(small), sort_by="row") if n else None
        nseg = per_row["nseg"].to_numpy() if n else np.zeros(0, np.int32)
        rank = None
        if cfg.keep != "first" and n:
            order = keep_order(n, cfg.keep, lengths=per_row["len"].to_numpy() if cfg.keep == "longest" else None,
                               quality=per_row["quality"].to_numpy() if cfg.keep == "quality" else None)
            rank = np.empty(n, np.int64)
            rank[order] = np.arange(n)
            del order
        del per_row
        # always fold the segment fingerprints: for rows of one plain segment
        # (where the local path does not fold) folding is a bijection of the
        # fingerprint, so the exact groups are the same
        res = dedup_blocks_on_ray(blocks, starts, rank, cfg, True, executor)
        del blocks
        removed = np.flatnonzero(res.removed)
        # The ledger a chunk of removed rows at a time, each chunk with the ids
        # of its rows and their kept twins only, and written to ``spill`` as it
        # is made: half of a 10M-row corpus may be duplicates, whose ids and
        # reasons alone would be ~1.5 GB on the driver.
        parts: list[Any] = []
        for k, lo in enumerate(range(0, max(removed.size, 1), LEDGER_CHUNK)):
            rows = removed[lo:lo + LEDGER_CHUNK]
            kept = res.partner[rows]
            ids = source.fetch(ray, np.union1d(rows, kept), columns=["id"])
            id_rows = ids["_row"].to_numpy()
            part = dedup_ledger(ids["id"].gather(np.searchsorted(id_rows, rows)),
                                ids["id"].gather(np.searchsorted(id_rows, kept)), res, rows, nseg[rows], key, cfg)
            del ids, id_rows
            if spill is None:
                parts.append(part)
            else:
                path = Path(spill) / f"dedup-ledger-{k:05d}.parquet"
                part.write_parquet(path)
                parts.append(pl.scan_parquet(path))
        ledger = pl.concat(parts)
        shown = report_rows(res)
        texts: dict[int, str] = {}
        shown_ids: dict[int, str] = {}
        if shown.size:
            quoted = source.fetch(ray, shown, fn=_scope_text, fn_kwargs={"scope": cfg.scope})
            texts = dict(zip(quoted["_row"].to_list(), quoted["text"].to_list()))
            quoted = source.fetch(ray, shown, columns=["id"])
            shown_ids = dict(zip(quoted["_row"].to_list(), quoted["id"].to_list()))
    report = _report(n, shown_ids, texts, res, cfg, key)
    return RayStepOutput(removed=removed.astype(np.int64), ledger=ledger, report=report)


__all__ += ["dedup_on_ray"]
