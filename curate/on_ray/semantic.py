"""Semantic dedup on Ray: embeddings by an actor pool, a partitioned search,
the local step's result.

The driver never holds the texts or the vectors of all rows, only a few
numbers per row (keep-order number, shape, segment count, group, position:
~200 bytes) and the candidate pairs. In stages:

1. **embed** (an actor pool over the dataset's blocks; one model load per
   actor, one actor per GPU when the cluster has them, else one per CPU):
   each block's segments, scope texts and keep-order numbers, computed with
   the local functions (:func:`bakeoff.curate.dedup_key.segments`,
   :func:`bakeoff.curate.embeddings.embed_long_texts`), and each active row's
   vector -- its segments' vectors side by side, as the local step builds it.
   The vectors stay in the object store; the driver receives the small columns.
2. **plan** (driver): the local step's groups (rows of one shape), each
   group's keep order, batches, and index (flat, or IVF with the local
   ``nlist``) -- :func:`bakeoff.curate.semantic.plan_index`.
3. **train** (workers): each IVF group's cells, k-means on the local step's
   sample (:func:`bakeoff.curate.semantic.ivf_sample`, ``train_ivf``): the
   same centroids.
4. **route** (a task per block): every row goes, with its vector, to the
   partitions holding the keys it takes part in: its cell (as a member), the
   cells it probes (flat: the group's one cell), and its batch.
5. **search** (a task per partition): the candidate pairs the local greedy
   would meet, each re-checked with the exact float64 cosine
   (``semantic._exact_cos``, the local function) -- across batches, through a
   faiss index like the local one (flat, or IVF with the same cells), filled
   batch by batch with the partition's members and queried with each batch's
   probers (faiss keeps inner products *above* the radius); inside a batch,
   every pair at or above it (the local gram).
6. **walk** (driver): the local greedy, batch by batch in keep order, over
   those pairs: a row goes if a *kept* earlier-batch candidate verifies
   (``semantic._best_partner``), then the batch is resolved against itself
   (``semantic.resolve_in_batch``). So the same rows go, with the same
   partners, cosines, and candidate counts.
7. **fetch**: the ``id`` of each removed row and its partner, and the scope
   text of the few rows the report shows.

Cost: a search finds pairs among *removed* rows too (the local index holds only
kept rows), so a cluster of m paraphrases costs m^2/2 pairs where the local
search meets m: run exact and MinHash dedup first (the default recipe does).

On Ray the workspace's embedding cache is not used: workers must not write
the workspace, and a cache hit made by a truncating call elsewhere could
differ from the windowed vector. With the ``hashing`` embedder the vectors are
bit-identical to the local ones; a neural model on a GPU may differ from the
CPU in the last bits (a pair exactly at the threshold could then flip).
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from bakeoff.curate.semantic import SemanticDedupConfig, _best_partner, _exact_cos, resolve_in_batch
from bakeoff.executor import Executor, ray_session

from . import RayStepOutput, collect, map_options, maybe_die, parallelism, use_task_shuffle, wait_with_progress

#: The columns of the embed stage the driver receives (everything but ``vec``).
_SMALL = ["_row", "active", "shape", "k", "keep", "bad", "long_seg", "row_long", "chunks", "src", "window"]


# --- 1. embed ---------------------------------------------------------------------------------

def _keep_numbers(df: pl.DataFrame, cfg: SemanticDedupConfig) -> tuple[pl.Series, np.ndarray, int]:
    """A number per row that ranks it for the keep policy (higher first), as
    ``semantic.keep_order`` ranks it; the rows whose quality value is not
    numeric; and where the score came from (0 column, 1 ``extra``, 2 nowhere).
    Judged on the driver over all rows: a block of only missing scores is fine."""
    from bakeoff.schema import text_for_scope

    none = np.zeros(df.height, bool)
    if cfg.keep == "longest":
        texts = df.select(text_for_scope(cfg.scope))["text"].fill_null("")
        return texts.str.len_chars().cast(pl.Float64), none, 0
    if cfg.keep == "quality":
        col = cfg.quality_column
        if col in df.columns:
            score = df[col].cast(pl.Float64, strict=False)
            return score, (df[col].is_not_null() & score.is_null()).to_numpy(), 0
        if "extra" in df.columns:
            return df.select(pl.col("extra").fill_null("{}").str.json_path_match(f"$.{col}")
                             .cast(pl.Float64, strict=False))["extra"], none, 1
        return pl.Series([None] * df.height, dtype=pl.Float64), none, 2
    return pl.Series(np.zeros(df.height)), none, 0


class _EmbedRows:
    """An actor of the pool: the embedding model, loaded once."""

    def __init__(self, model: str, cfg: dict[str, Any]) -> None:
        from bakeoff.curate.embeddings import get_embedder, model_window

        self.model, self.cfg = model, SemanticDedupConfig(**cfg)
        get_embedder(model, self.cfg.embed_batch_size)
        self.window, self.tok = model_window(model)

    def __call__(self, block: pa.Table) -> pa.Table:
        from bakeoff.curate.dedup_key import SCOPE_KEYS, segments
        from bakeoff.curate.embeddings import embed_long_texts

        maybe_die()
        cfg = self.cfg
        df = pl.from_arrow(block)
        seg = segments(df, cfg.key or SCOPE_KEYS[cfg.scope])
        counts = np.diff(seg.offsets)
        seg_row = np.repeat(np.arange(df.height), counts)
        blank = (seg.texts.str.strip_chars().str.len_chars() == 0).to_numpy()
        active = np.bincount(seg_row, weights=~blank, minlength=df.height) > 0
        keep, bad, src = _keep_numbers(df, cfg)

        # the local step's window counts: segments (and rows) the model cannot read whole
        long_seg = np.zeros(df.height, np.int64)
        row_long = np.zeros(df.height, bool)
        chunks = np.zeros(df.height, np.int64)
        if self.window is not None and seg.texts.len():
            n_tok = np.asarray([len(x) for x in self.tok(seg.texts.to_list(), add_special_tokens=False)["input_ids"]])
            body = max(8, self.window - 2)
            over = n_tok > body
            long_seg = np.bincount(seg_row, weights=over, minlength=df.height).astype(np.int64)
            row_long = np.bincount(seg_row, weights=n_tok > self.window - 2, minlength=df.height) > 0
            chunks = np.bincount(seg_row, weights=np.where(over, -(-n_tok // body), 0),
                                 minlength=df.height).astype(np.int64)

        # the active rows' vectors: segments side by side, / sqrt(k) (as the local step)
        take = np.flatnonzero(active[seg_row])  # the active rows' segments (segments are in row order)
        vecs, _ = embed_long_texts(seg.texts.gather(take).to_list(), ws=None, model=self.model,
                                   batch_size=cfg.embed_batch_size, show_progress=False)
        dim = vecs.shape[1] if vecs.ndim == 2 else 0
        # a row's segments are consecutive, so the rows' vectors are the segments'
        # vectors in order, each divided by sqrt(k) in float64 then rounded, as locally
        scale = np.sqrt(counts[seg_row[take]])
        flat = (vecs / scale[:, None]).astype(np.float32).reshape(-1)
        offsets = np.zeros(df.height + 1, np.int64)
        np.cumsum(np.where(active, counts * dim, 0), out=offsets[1:])
        vec = pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(flat))
        return pa.table({
            "_row": block.column("_row"), "active": active, "shape": seg.shape, "k": counts,
            "keep": keep.to_arrow(), "bad": bad, "long_seg": long_seg, "row_long": row_long, "chunks": chunks,
            "src": np.full(df.height, src, np.int8), "window": np.full(df.height, self.window or 0, np.int32),
            "vec": vec,
        })


def _small_columns(block: pa.Table) -> pa.Table:
    # an empty block may come without columns
    return block.select(_SMALL) if block.num_rows else pa.table({})


# --- 2. plan ----------------------------------------------------------------------------------

def _plan(head: pl.DataFrame, cfg: SemanticDedupConfig) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Per active row in a group of >= 2: ``gid``, ``pos`` (its place in the
    group's keep order) and ``gi`` (its place in the group's row order); and per
    such group (``gid`` in the local step's order): size, parts, index kind."""
    from bakeoff.curate.semantic import plan_index

    active = head.filter(pl.col("active")).select("_row", "shape", "k", "keep")
    ranked = (active.sort("_row") if cfg.keep == "first" else
              active.sort(["keep", "_row"], descending=[True, False], nulls_last=True)).with_columns(pl.int_range(pl.len(), dtype=pl.Int64).alias("rank"))
    # groups in the order of their first row, as the local step's group_by(maintain_order=True)
    rows = ranked.sort("_row").with_columns(
        pl.col("_row").min().over("shape", "k").alias("first"),
        pl.len().over("shape", "k").alias("size"))
    rows = rows.with_columns(pl.col("first").rank("dense").cast(pl.Int64).sub(1).alias("gid"))
    groups = rows.group_by("gid").agg(pl.col("size").first(), pl.col("k").first()).sort("gid")
    plans = [plan_index(int(n), cfg) for n in groups["size"].to_list()]
    groups = groups.with_columns(pl.Series("kind", [p[0] for p in plans]),
                                 pl.Series("nlist", [p[1] for p in plans], dtype=pl.Int64))
    rows = rows.filter(pl.col("size") >= 2).with_columns(
        (pl.col("rank").rank("ordinal").over("gid") - 1).cast(pl.Int64).alias("pos"),
        (pl.col("_row").rank("ordinal").over("gid") - 1).cast(pl.Int64).alias("gi"))
    return rows.select("_row", "gid", "pos", "gi"), groups


# --- 3. train ---------------------------------------------------------------------------------

def _vectors_of(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """The flat float32 values of ``vec`` and each row's offset into them."""
    vec = table.column("vec").combine_chunks()
    offs = vec.offsets.to_numpy().astype(np.int64)
    return vec.values.to_numpy(zero_copy_only=False), offs


def _matrix(values: np.ndarray, offs: np.ndarray, at: np.ndarray, width: int) -> np.ndarray:
    """The vectors of rows ``at`` (all ``width`` wide) as a matrix, gathered in
    slices (a whole-matrix index would be 8 bytes per value)."""
    out = np.empty((len(at), width), np.float32)
    span = np.arange(width)
    for s in range(0, len(at), 4096):
        out[s:s + 4096] = values[offs[at[s:s + 4096]][:, None] + span[None, :]]
    return out


def _samples(block: pa.Table, plan: dict[str, np.ndarray]) -> pa.Table:
    """The block's rows in an IVF group's training sample, with their vectors."""
    rows = block.column("_row").to_numpy()
    mine = np.flatnonzero(plan["sample"][rows])
    return block.select(["_row", "vec"]).take(mine).append_column("gid", pa.array(plan["gid"][rows[mine]]))


def _train(groups: list[dict[str, Any]], nprobe: int, parts: int, *samples: pa.Table) -> dict[int, Any]:
    """Per IVF group: its centroids (the local step's cells) and, per cell, the
    partition that searches it (cells near each other share one, so a row's
    probes reach few partitions)."""
    import faiss

    from bakeoff.curate.semantic import train_ivf

    table = pa.concat_tables(samples)
    gids = table.column("gid").to_numpy()
    out = {}
    for g in groups:
        mine = table.take(np.flatnonzero(gids == g["gid"]))
        mine = mine.take(np.argsort(mine.column("_row").to_numpy(), kind="stable"))  # the local row order
        values, offs = _vectors_of(mine)
        sample = values.reshape(mine.num_rows, -1)
        index = train_ivf(sample, g["nlist"], nprobe)
        centroids = index.quantizer.reconstruct_n(0, g["nlist"])
        if g["nlist"] > parts:
            km = faiss.Kmeans(centroids.shape[1], parts, niter=10, seed=1234, spherical=True,
                              min_points_per_centroid=1, verbose=False)
            km.train(centroids)
            cell_part = km.index.search(centroids, 1)[1][:, 0].astype(np.int64)
        else:
            cell_part = np.arange(g["nlist"], dtype=np.int64)
        out[g["gid"]] = (centroids, cell_part, min(nprobe, g["nlist"]))
    return out


# --- 4. route ---------------------------------------------------------------------------------

def _mix(a: np.ndarray, b: np.ndarray, parts: int) -> np.ndarray:
    """A partition for the key (a, b): a multiplicative hash, stable across processes."""
    h = (a.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) ^ (b.astype(np.uint64) * np.uint64(0xC2B2AE3D27D4EB4F))
    h ^= h >> np.uint64(29)
    return (h % np.uint64(parts)).astype(np.int64)


_BATCH_KEY = 1 << 40  # batch keys and cell keys never share a (gid, key)


def _route(block: pa.Table, plan: dict[str, np.ndarray], parts: int, batch_size: int,
           *trained: dict[int, Any]) -> list[tuple[pa.Table, pl.DataFrame]]:
    """Per partition: the block's rows that take part in a key searched there
    (with their vectors) and their roles: member of a cell (0), prober of a cell (1),
    row of a batch (2)."""
    import faiss

    maybe_die()
    cells = {gid: t for tr in trained for gid, t in tr.items()}
    rows = block.column("_row").to_numpy()
    gid = plan["gid"][rows]
    at = np.flatnonzero(gid >= 0)
    values, offs = _vectors_of(block)
    role_frames = []
    pos = plan["pos"][rows[at]]
    batch = pos // batch_size
    g_at = gid[at]
    role_frames.append(pl.DataFrame({"i": at, "role": 2, "key": batch + _BATCH_KEY,
                                     "part": _mix(g_at, batch + _BATCH_KEY, parts)}))
    flat = ~np.isin(g_at, list(cells))
    role_frames.append(pl.DataFrame({"i": at[flat], "role": 0, "key": 0, "part": _mix(g_at[flat], 0 * g_at[flat], parts)}))
    role_frames.append(pl.DataFrame({"i": at[flat], "role": 1, "key": 0, "part": _mix(g_at[flat], 0 * g_at[flat], parts)}))
    for g in np.unique(g_at[~flat]):
        centroids, cell_part, nprobe = cells[int(g)]
        mine = at[g_at == g]
        quantizer = faiss.IndexFlatIP(centroids.shape[1])
        quantizer.add(centroids)
        probes = quantizer.search(np.ascontiguousarray(_matrix(values, offs, mine, centroids.shape[1])), nprobe)[1]
        part = (cell_part[probes] + g) % parts
        role_frames.append(pl.DataFrame({"i": mine, "role": 0, "key": probes[:, 0], "part": part[:, 0]}))
        role_frames.append(pl.DataFrame({"i": np.repeat(mine, nprobe), "role": 1, "key": probes.reshape(-1),
                                         "part": part.reshape(-1)}))
    schema = {"i": pl.Int64, "role": pl.Int8, "key": pl.Int64, "part": pl.Int64}
    roles = pl.concat([f.cast(schema) for f in role_frames])
    i = roles["i"].to_numpy()
    roles = roles.with_columns(pl.Series("_row", rows[i]), pl.Series("gid", gid[i]),
                               pl.Series("pos", plan["pos"][rows[i]]))
    out = []
    for p in range(parts):
        mine = roles.filter(pl.col("part") == p)
        take = np.unique(mine["i"].to_numpy())
        vecs = block.select(["_row", "vec"]).take(take)
        out.append((vecs, mine.select("_row", "gid", "pos", "role", "key")))
    return out


# --- 5. search --------------------------------------------------------------------------------

def _index_for(trained: tuple | None, width: int) -> Any:
    """An empty index like the local step's for one group: exact flat, or IVF
    over the group's trained cells."""
    import faiss

    if trained is None:
        return faiss.IndexFlatIP(width)
    centroids, _, nprobe = trained
    quantizer = faiss.IndexFlatIP(width)
    quantizer.add(centroids)
    index = faiss.IndexIVFFlat(quantizer, width, len(centroids), faiss.METRIC_INNER_PRODUCT)
    index.nprobe = nprobe
    return index


def _add(index: Any, X: np.ndarray, rows: np.ndarray, cells: np.ndarray) -> None:
    """Add rows ``rows`` of ``X`` (IVF: to the cells the router assigned, with
    the rows as ids; flat: in order, so a hit's id is its place in the index)."""
    import faiss

    x = np.ascontiguousarray(X[rows])
    if isinstance(index, faiss.IndexIVFFlat):
        ids, assign = np.ascontiguousarray(rows, np.int64), np.ascontiguousarray(cells, np.int64)
        index.add_core(len(rows), faiss.swig_ptr(x), faiss.swig_ptr(ids), faiss.swig_ptr(assign))
    else:
        index.add(x)


def _search(threshold: float, batch_size: int, segments_of: dict[int, int], n_trained: int,
            *args: Any) -> pl.DataFrame:
    """The candidate pairs of the keys of one partition, each with its exact
    cosine: ``a`` ranks first; ``within``: both in one batch. (``args``: the
    ``n_trained`` results of ``_train``, then the routed pieces.)"""
    from bakeoff.curate.semantic import _SLACK

    maybe_die()
    cells = {gid: t for tr in args[:n_trained] for gid, t in tr.items()}
    pieces: tuple[tuple[pa.Table, pl.DataFrame], ...] = args[n_trained:]
    radius = np.float32(threshold - _SLACK)
    tables = [t for t, _ in pieces if t.num_rows]
    schema = {"gid": pl.Int64, "a": pl.Int64, "b": pl.Int64, "cos": pl.Float64, "within": pl.Boolean}
    if not tables:
        return pl.DataFrame(schema=schema)
    table = pa.concat_tables(tables)
    values, offs = _vectors_of(table)
    where = pl.DataFrame({"_row": table.column("_row").to_numpy(), "at": np.arange(table.num_rows)})
    roles = pl.concat([r for _, r in pieces]).join(where, on="_row", how="left") \
        .sort(["gid", "role", "key", "pos"])
    found = []
    for (g,), grp in roles.group_by(["gid"], maintain_order=True):
        k = segments_of[int(g)]
        members = grp.filter(pl.col("role") < 2).unique("_row").sort("pos")
        batch_rows = grp.filter(pl.col("role") == 2).sort("pos")
        local = pl.concat([members.select("_row", "pos", "at"), batch_rows.select("_row", "pos", "at")]) \
            .unique("_row").sort("pos")
        width = int(offs[local["at"][0] + 1] - offs[local["at"][0]])
        X = _matrix(values, offs, local["at"].to_numpy(), width)
        pos = local["pos"].to_numpy()
        li = lambda p: np.searchsorted(pos, p)  # noqa: E731 - position -> row of X
        pairs: list[tuple[np.ndarray, np.ndarray, bool]] = []
        for (key,), part in grp.filter(pl.col("role") == 2).group_by(["key"], maintain_order=True):
            # a batch: every pair at or above the radius (the local step's gram)
            b = li(part["pos"].to_numpy())
            ii, jj = np.nonzero(np.triu(X[b] @ X[b].T >= radius, k=1))
            pairs.append((b[ii], b[jj], True))
        # Across batches: each batch's probers against the members of earlier
        # batches, through a faiss index filled batch by batch as the local step
        # fills its own (flat, or IVF with the same cells), so the same float32
        # inner products decide what is a candidate.
        mem = grp.filter(pl.col("role") == 0).sort("pos")
        prb = grp.filter(pl.col("role") == 1).unique("_row").sort("pos")
        if mem.height and prb.height:
            m, cell = li(mem["pos"].to_numpy()), mem["key"].to_numpy()
            q = li(prb["pos"].to_numpy())
            bm, bq = pos[m] // batch_size, pos[q] // batch_size
            index = _index_for(cells.get(int(g)), width)
            flat = int(g) not in cells
            added = 0
            for b in np.unique(bq):
                upto = int(np.searchsorted(bm, b))  # the members of the batches before b
                if upto > added:
                    _add(index, X, m[added:upto], cell[added:upto])
                    added = upto
                if not added:
                    continue
                qs = q[bq == b]
                lims, _, hit = index.range_search(np.ascontiguousarray(X[qs]), float(threshold - _SLACK))
                pairs.append((m[hit] if flat else hit, np.repeat(qs, np.diff(lims.astype(np.int64))), False))
        for a, b, within in pairs:
            if len(a):
                cos = _exact_cos(X, a, b, k)
                found.append(pl.DataFrame({"gid": np.full(len(a), g), "a": pos[a], "b": pos[b], "cos": cos,
                                           "within": np.full(len(a), within)}, schema=schema))
    return pl.concat(found) if found else pl.DataFrame(schema=schema)


# --- 6. walk ----------------------------------------------------------------------------------

def walk_pairs(size: int, batch_size: int, pairs: pl.DataFrame, threshold: float
               ) -> tuple[np.ndarray, np.ndarray, int]:
    """The local greedy (``semantic.greedy_semantic``) over one group's
    candidate pairs: ``partner`` (by keep-order position; -1 kept), ``similarity``
    and the candidates it checked."""
    partner = np.full(size, -1, np.int64)
    sim = np.full(size, np.nan)
    kept = np.ones(size, bool)
    rank = np.arange(size, dtype=np.int64)
    checked = 0
    pairs = pairs.with_columns((pl.col("b") // batch_size).alias("batch")).sort("batch")
    for (bno,), grp in pairs.group_by(["batch"], maintain_order=True):
        lo = int(bno) * batch_size
        hi = min(size, lo + batch_size)
        removed = np.zeros(hi - lo, bool)
        cross = grp.filter(~pl.col("within"))
        a, b, cos = cross["a"].to_numpy(), cross["b"].to_numpy(), cross["cos"].to_numpy()
        live = kept[a]  # the local index holds the kept rows only
        a, b, cos = a[live], b[live], cos[live]
        checked += len(a)
        ok = cos >= threshold
        if ok.any():
            for q, c, s in _best_partner(b[ok], a[ok], cos[ok], rank):
                removed[q - lo] = True
                partner[q] = c
                sim[q] = s
        inside = grp.filter(pl.col("within"))
        a, b, cos = inside["a"].to_numpy() - lo, inside["b"].to_numpy() - lo, inside["cos"].to_numpy()
        live = ~removed[a] & ~removed[b]
        a, b, cos = a[live], b[live], cos[live]
        checked += len(a)
        ok = cos >= threshold
        js, picks, cs = resolve_in_batch(a[ok], b[ok], cos[ok], hi - lo)
        partner[js + lo] = picks + lo
        sim[js + lo] = cs
        removed[js] = True
        kept[lo:hi] = ~removed
    return partner, sim, checked


# --- 7. fetch ---------------------------------------------------------------------------------

def _pick_rows(block: pa.Table, ids: np.ndarray, texts: np.ndarray, scope: str) -> pa.Table:
    """The ``id`` of the rows in ``ids`` and the scope text of those in ``texts``."""
    from bakeoff.schema import text_for_scope

    df = pl.from_arrow(block).filter(pl.col("_row").is_in(pl.Series(ids)))
    shown = pl.col("_row").is_in(pl.Series(texts))
    return df.select(pl.col("_row").cast(pl.Int64), pl.col("id").cast(pl.String),
                     pl.when(shown).then(text_for_scope(scope).fill_null("")).alias("text")).to_arrow()


# --- progress ---------------------------------------------------------------------------------

def _blocks_with_progress(ds: Any, n: int) -> list[Any]:
    """The refs of ``ds``'s blocks, computed (they stay in the object store), with
    a bar of the rows done."""
    from bakeoff.console import progress

    refs: list[Any] = []
    with progress() as bar:
        task = bar.add_task("semantic dedup on Ray: embedding", total=n)
        for bundle in ds.iter_internal_ref_bundles():
            refs.extend(bundle.block_refs)
            bar.advance(task, sum(m.num_rows or 0 for m in bundle.metadata))
    return refs


# --- the step ---------------------------------------------------------------------------------

def semantic_dedup_on_ray(ds: Any, n: int, cfg: SemanticDedupConfig, executor: Executor,
                          ws: Any = None) -> RayStepOutput:
    """Semantic dedup of the rows of ``ds`` (a Ray dataset of ``n`` rows with
    ``_row`` dense from 0 and the core columns): the local step's removed rows,
    ledger and report (see the module doc)."""
    from bakeoff.curate.dedup import LOUD_SHARE
    from bakeoff.curate.dedup_key import SCOPE_KEYS
    from bakeoff.curate.embeddings import resolve_model_name
    from bakeoff.curate.semantic import index_label, ivf_sample, ledger_and_report
    from bakeoff.workspace import BakeoffError

    cfg.validate()
    started = time.perf_counter()
    model = resolve_model_name(cfg.model)
    key = cfg.key or SCOPE_KEYS[cfg.scope]
    received = 0  # bytes the driver receives from the cluster (the test holds it to a few per row)

    def get(refs: Any) -> Any:
        nonlocal received
        out = ray.get(refs)
        for part in (out if isinstance(out, list) else [out]):
            received += part.nbytes if isinstance(part, pa.Table) else part.estimated_size() \
                if isinstance(part, pl.DataFrame) else 0
        return out

    with ray_session(executor) as ray:
        use_task_shuffle(ray)
        cpus = parallelism(ray)
        gpus = int(ray.cluster_resources().get("GPU", 0))
        actors = gpus or cpus
        t_embed = time.perf_counter()
        embedded = ds.map_batches(
            _EmbedRows, fn_constructor_kwargs={"model": model, "cfg": asdict(cfg)},
            compute=ray.data.ActorPoolStrategy(size=actors), batch_size=None, batch_format="pyarrow",
            # half a CPU per actor: the pool must leave room for the tasks that read
            # the dataset (a read_parquet lists its files in a task), or they never start
            num_gpus=1 if gpus else None, num_cpus=None if gpus else 0.5)
        blocks = _blocks_with_progress(embedded, n)  # the vectors stay in the object store
        small = ray.remote(_small_columns)
        smalls = get([small.remote(b) for b in blocks])
        blocks = [b for b, t in zip(blocks, smalls) if t.num_rows]
        head = pl.concat([pl.from_arrow(t) for t in smalls if t.num_rows]
                         or [pl.DataFrame(schema=dict.fromkeys(_SMALL, pl.Int64))], how="vertical_relaxed").sort("_row")
        embed_seconds = time.perf_counter() - t_embed

        if cfg.keep == "quality":
            if head["bad"].any():
                raise BakeoffError(f"keep=quality: column {cfg.quality_column!r} is not numeric")
            if head.height and (head["src"][0] == 2 or (head["src"][0] == 1 and head["keep"].null_count() == n)):
                raise BakeoffError(f"keep=quality needs a numeric {cfg.quality_column!r} column (or key in "
                                   "`extra`); use --keep first|longest, or score the rows first")
        active_n = int(head["active"].sum())
        partner = np.full(n, -1, np.int64)
        sim = np.full(n, np.nan)
        search: dict[str, Any] = {"index": "none", "candidates_checked": 0}
        parts = min(256, max(2, 2 * cpus))  # partitions: every core busy; objects per block bounded
        pairs_found = 0
        if active_n > 1:
            rows, groups = _plan(head, cfg)
            used = groups.filter(pl.col("size") >= 2)
            if used.height:
                last = used.row(-1, named=True)
                search["index"] = index_label(last["kind"], last["nlist"], cfg.nprobe)
            plan = {"gid": np.full(n, -1, np.int64), "pos": np.zeros(n, np.int64), "sample": np.zeros(n, bool)}
            r = rows["_row"].to_numpy()
            plan["gid"][r] = rows["gid"].to_numpy()
            plan["pos"][r] = rows["pos"].to_numpy()
            ivf = used.filter(pl.col("kind") == "ivf").to_dicts()
            gi = rows.filter(pl.col("gid").is_in([g["gid"] for g in ivf]))
            for g in ivf:
                pick = ivf_sample(g["size"], g["nlist"])
                mine = gi.filter(pl.col("gid") == g["gid"])
                chosen = mine["_row"] if pick is None else mine.filter(pl.col("gi").is_in(pl.Series(pick)))["_row"]
                plan["sample"][chosen.to_numpy()] = True
            plan_ref = ray.put(plan)
            trained = []
            if ivf:
                samples = [ray.remote(_samples).remote(b, plan_ref) for b in blocks]
                per = -(-len(ivf) // cpus)
                trained = [ray.remote(_train).remote(ivf[s:s + per], cfg.nprobe, parts, *samples)
                           for s in range(0, len(ivf), per)]
            route = ray.remote(_route).options(num_returns=parts)
            routed = [route.remote(b, plan_ref, parts, cfg.batch_size, *trained) for b in blocks]
            routed = [r if isinstance(r, list) else [r] for r in routed]
            segments_of = dict(zip(used["gid"].to_list(), used["k"].to_list()))
            search_task = ray.remote(_search)
            found = [search_task.remote(cfg.threshold, cfg.batch_size, segments_of, len(trained), *trained,
                                        *[r[p] for r in routed])
                     for p in range(parts)]
            pairs = pl.concat(get(wait_with_progress(ray, found, "semantic dedup on Ray: search")))
            pairs_found = pairs.height
            del routed, found, blocks

            # 6. the walk, group by group, on the driver
            checked = 0
            by_gid = rows.sort(["gid", "pos"])
            start = np.searchsorted(by_gid["gid"].to_numpy(), used["gid"].to_numpy())
            row_of = by_gid["_row"].to_numpy()
            sizes = dict(zip(used["gid"].to_list(), used["size"].to_list()))
            starts = dict(zip(used["gid"].to_list(), start.tolist()))
            for (g,), grp in pairs.sort("gid").group_by(["gid"], maintain_order=True):
                p_sub, s_sub, c = walk_pairs(sizes[g], cfg.batch_size, grp, cfg.threshold)
                checked += c
                hit = np.flatnonzero(p_sub >= 0)
                partner[row_of[starts[g] + hit]] = row_of[starts[g] + p_sub[hit]]
                sim[row_of[starts[g] + hit]] = s_sub[hit]
            search["candidates_checked"] = checked

        # 7. ids of the removed rows and their partners; texts of the rows the report shows
        removed = np.flatnonzero(partner >= 0)
        shown = list(range(min(5, len(removed))))
        if n and removed.size > LOUD_SHARE * n:
            shown += np.linspace(0, removed.size - 1, min(3, removed.size)).astype(np.int64).tolist()
        text_rows = np.unique(np.concatenate([removed[shown], partner[removed[shown]]])) if shown else \
            np.zeros(0, np.int64)
        id_rows = np.unique(np.concatenate([removed, partner[removed]]))
        picked = pl.DataFrame(schema={"_row": pl.Int64, "id": pl.String, "text": pl.String})
        if len(id_rows):
            got = collect(ds.map_batches(_pick_rows, fn_kwargs={"ids": id_rows, "texts": text_rows,
                                                                 "scope": cfg.scope}, **map_options()))
            received += got.nbytes
            picked = pl.from_arrow(got).cast({"_row": pl.Int64})
    ids = dict(zip(picked["_row"].to_list(), picked["id"].to_list()))
    texts = dict(zip(picked["_row"].to_list(), picked["text"].to_list()))

    counts = np.zeros(n, np.int64)
    counts[head["_row"].to_numpy()] = head["k"].to_numpy()
    long_segs = int(head["long_seg"].sum()) if active_n > 1 else 0
    embed_stats = {} if active_n <= 1 else {
        # texts the model was given, as the local step counts them: every segment, a long one as its windows
        "requested": int(head["k"].sum()) + int(head["chunks"].sum()) - long_segs, "cached": 0, "actors": actors,
        "device": "gpu" if gpus else "cpu", "seconds": round(embed_seconds, 3),
        "window_tokens": int(head["window"][0]) or None,
        "chunks": int(head["chunks"].sum()), "segments_longer_than_window": long_segs}
    ledger, report = ledger_and_report(
        cfg, model, key, rows_in=n, active=active_n, removed=removed, partner=partner[removed],
        similarity=sim[removed], removed_ids=pl.Series([ids[int(r)] for r in removed], dtype=pl.String),
        kept_ids=pl.Series([ids[int(p)] for p in partner[removed]], dtype=pl.String),
        segments=counts[removed], texts=texts, long_rows=int(head["row_long"].sum()) if long_segs else 0,
        search=search, embed_stats=embed_stats, started=started)
    # how the search ran (not in the local report): the candidate pairs the
    # partitions found (removed rows' included), and what the driver received
    report["ray"] = {"partitions": parts, "pairs": pairs_found, "driver_bytes_received": received}
    return RayStepOutput(removed=removed, ledger=ledger, report=report)


__all__ = ["semantic_dedup_on_ray", "walk_pairs"]
