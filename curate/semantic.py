"""Semantic deduplication: drop rows whose embedding is within a cosine threshold
of a row that is kept.

Near-dup (MinHash) catches copies that share wording; this step catches
paraphrases -- the same question reworded, the same answer re-templated -- that
would otherwise leak between train and test or over-weight one example.

How it works (``semantic_dedup_rows``):

1. The scope's text of every row (``bakeoff.schema.text_for_scope``) is embedded
   with ``bakeoff.curate.embeddings.embed_texts`` (cached: reruns and later
   steps reuse the vectors). Rows whose scope text is empty take no part (they
   are kept and match nothing: an empty response is not a paraphrase of another).
2. Rows are ranked by the keep policy -- ``first`` (input order), ``longest``
   (longest scope text first) or ``quality`` (highest score in a quality column
   first); ties go to input order.
3. Rows are visited in that order, in batches, *query then insert*: each batch is
   searched against a faiss index of the rows kept so far (exact ``IndexFlatIP``;
   ``IndexIVFFlat`` above ``flat_max`` rows, default 50k -- nearest neighbours
   through an index, never a Python loop over all pairs. IVF rather than HNSW
   because faiss builds HNSW graphs with threads in a nondeterministic order,
   while IVF cells come from seeded k-means); a row with a kept neighbour at cosine >=
   threshold is removed and names its most similar such neighbour. The rest of
   the batch is resolved against itself in rank order, and the survivors are
   added to the index.

Guarantees:

- every removed row has a *kept* partner whose cosine with it is >= threshold
  (the partner is ranked before it by the policy); the index only proposes
  candidates (searched with a small slack), and every candidate's cosine is
  recomputed exactly (float64 dot of the two unit vectors) before it counts;
- the result depends only on the vectors, the threshold and the ranking -- not on
  the batch size or faiss's thread count -- because the greedy is defined in
  rank order and decisions use the recomputed cosines. (With ``index='ivf'`` a
  kept pair could be missed when the two vectors fall in cells that are not
  probed: recall, never precision, depends on ``nprobe``.)

Ledger: stage ``dedup-semantic``, rule ``cosine>=T``, ``kept_row_id``,
``similarity`` = ``score`` = the cosine, ``cluster_id`` = the id of the kept row
(a cluster is one kept row and the rows removed in its favour).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from bakeoff.schema import text_for_scope
from bakeoff.steps import StepOutput
from bakeoff.workspace import BakeoffError, new_ledger

if TYPE_CHECKING:
    from bakeoff.workspace import Workspace

STAGE = "dedup-semantic"
KEEP_POLICIES = ("first", "longest", "quality")
SCOPES = ("prompt", "response", "all")
INDEXES = ("auto", "flat", "ivf")
#: Candidates are searched this far below the threshold, then re-checked exactly:
#: float32 BLAS sums may differ from the exact cosine in the last bits.
_SLACK = 1e-3


@dataclass
class SemanticDedupConfig:
    """Options of the semantic dedup step."""
    threshold: float = 0.95          # cosine similarity at or above which two rows are duplicates
    scope: str = "all"               # prompt | response | all: shorthand for key turns | prompt | response
    key: list[str] | None = None     # what must match, segment by segment (bakeoff.curate.dedup_key)
    keep: str = "first"              # first | longest | quality
    model: str | None = None         # embedding model (default: env BAKEOFF_EMBEDDING_MODEL / all-MiniLM-L6-v2)
    quality_column: str = "quality"  # keep=quality: column (or key of `extra`) holding the score
    index: str = "auto"              # auto | flat | ivf
    flat_max: int = 50000            # auto: exact flat index up to this many rows, IVF above
    nprobe: int = 16                 # ivf: cells probed per query
    batch_size: int = 2048           # rows per query-then-insert batch (result does not depend on it)
    embed_batch_size: int | None = None  # texts per model call

    def validate(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise BakeoffError(f"semantic threshold must be in (0, 1], got {self.threshold}")
        if self.scope not in SCOPES:
            raise BakeoffError(f"unknown scope {self.scope!r}; expected one of {', '.join(SCOPES)}")
        if self.keep not in KEEP_POLICIES:
            raise BakeoffError(f"unknown keep policy {self.keep!r}; expected one of {', '.join(KEEP_POLICIES)}")
        if self.index not in INDEXES:
            raise BakeoffError(f"unknown index {self.index!r}; expected one of {', '.join(INDEXES)}")
        if self.key is not None:
            from bakeoff.curate.dedup_key import check_key

            self.key = check_key(self.key)
        if self.batch_size < 1 or self.nprobe < 1:
            raise BakeoffError("batch_size and nprobe must be positive")

    @classmethod
    def from_dict(cls, params: dict[str, Any] | None) -> "SemanticDedupConfig":
        params = dict(params or {})
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(params) - known)
        if unknown:
            raise BakeoffError(f"unknown semantic dedup option(s): {', '.join(unknown)}; "
                               f"known: {', '.join(sorted(known))}")
        cfg = cls(**params)
        cfg.validate()
        return cfg


# --- ranking -------------------------------------------------------------------

def keep_order(df: pl.DataFrame, texts: pl.Series, keep: str, quality_column: str = "quality") -> np.ndarray:
    """Row indices in keep-priority order (best first; ties by input order)."""
    idx = pl.int_range(pl.len(), dtype=pl.Int64).alias("_i")
    if keep == "first":
        return np.arange(df.height, dtype=np.int64)
    if keep == "longest":
        ranked = pl.DataFrame({"_len": texts.str.len_chars()}).with_columns(idx) \
            .sort(["_len", "_i"], descending=[True, False])
        return ranked["_i"].to_numpy().astype(np.int64)
    if keep == "quality":
        score = quality_scores(df, quality_column)
        ranked = pl.DataFrame({"_q": score}).with_columns(idx) \
            .sort(["_q", "_i"], descending=[True, False], nulls_last=True)
        return ranked["_i"].to_numpy().astype(np.int64)
    raise BakeoffError(f"unknown keep policy {keep!r}")


def quality_scores(df: pl.DataFrame, column: str) -> pl.Series:
    """A numeric quality score per row: the column ``column``, else the key
    ``column`` of the ``extra`` JSON. Missing scores rank last."""
    if column in df.columns:
        try:
            return df[column].cast(pl.Float64, strict=True)
        except pl.exceptions.InvalidOperationError as exc:
            raise BakeoffError(f"keep=quality: column {column!r} is not numeric") from exc
    if "extra" in df.columns:
        s = df.select(pl.col("extra").fill_null("{}").str.json_path_match(f"$.{column}")
                      .cast(pl.Float64, strict=False))["extra"]
        if s.null_count() < s.len():
            return s
    raise BakeoffError(f"keep=quality needs a numeric {column!r} column (or key in `extra`); "
                       "use --keep first|longest, or score the rows first")


# --- the search ------------------------------------------------------------------

def _exact_cos(vectors: np.ndarray, a: np.ndarray, b: np.ndarray, parts: int = 1) -> np.ndarray:
    """Cosine of row pairs (a[k], b[k]) of unit vectors, in float64: the one
    function every decision uses, so a pair's value never depends on the path.

    With ``parts`` > 1 a row is ``parts`` unit vectors (one per segment: a turn)
    side by side, each scaled by 1/sqrt(parts), and the result is the *lowest*
    segment cosine: every segment must match. (The row vectors' own cosine is
    the mean segment cosine, never below the lowest: so searching the index for
    rows with cosine >= threshold misses no pair whose every segment passes.)"""
    if len(a) == 0:
        return np.zeros(0, dtype=np.float64)
    va = vectors[a].astype(np.float64).reshape(len(a), parts, -1)
    vb = vectors[b].astype(np.float64).reshape(len(b), parts, -1)
    return (np.einsum("ijk,ijk->ij", va, vb) * parts).min(axis=1)


def plan_index(n: int, cfg: SemanticDedupConfig) -> tuple[str, int]:
    """The index a search over ``n`` rows uses: ``("flat", 0)`` or ``("ivf", nlist)``."""
    kind = cfg.index if cfg.index != "auto" else ("flat" if n <= cfg.flat_max else "ivf")
    if kind == "flat":
        return "flat", 0
    # ~4*sqrt(n) cells, with >= 39 training points per cell (faiss's own minimum).
    return "ivf", max(1, min(int(4 * np.sqrt(n)), n // 39))


def ivf_sample(n: int, nlist: int) -> np.ndarray | None:
    """Positions (ascending) of the k-means training sample among ``n`` rows;
    None: all of them. A fixed seed: the same sample every run."""
    if n <= nlist * 256:
        return None
    rng = np.random.default_rng(0)
    return np.sort(rng.choice(n, nlist * 256, replace=False))


def train_ivf(sample: np.ndarray, nlist: int, nprobe: int) -> Any:
    """An empty ``IndexIVFFlat`` whose cells are k-means (faiss's fixed seed) of ``sample``."""
    import faiss

    dim = sample.shape[1]
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.train(np.ascontiguousarray(sample))
    index.nprobe = min(nprobe, nlist)
    return index


def index_label(kind: str, nlist: int, nprobe: int) -> str:
    return "flat" if kind == "flat" else f"ivf(nlist={nlist},nprobe={min(nprobe, nlist)})"


def _make_index(vectors: np.ndarray, cfg: SemanticDedupConfig) -> tuple[Any, str]:
    import faiss

    n, dim = vectors.shape
    kind, nlist = plan_index(n, cfg)
    if kind == "flat":
        return faiss.IndexFlatIP(dim), "flat"
    pick = ivf_sample(n, nlist)
    index = train_ivf(vectors if pick is None else vectors[pick], nlist, cfg.nprobe)
    return index, index_label(kind, nlist, cfg.nprobe)


def greedy_semantic(vectors: np.ndarray, order: np.ndarray, cfg: SemanticDedupConfig,
                    show_progress: bool = True, parts: int = 1) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Greedy dedup of unit ``vectors`` visited in ``order`` (``parts``: segments
    per row, see ``_exact_cos``).

    Returns ``partner`` (int64 per row: -1 = kept, else the kept row it duplicates),
    ``similarity`` (its exact cosine; NaN for kept rows) and search stats.
    """
    n = len(vectors)
    partner = np.full(n, -1, dtype=np.int64)
    sim = np.full(n, np.nan, dtype=np.float64)
    if n == 0:
        return partner, sim, {"index": "none", "candidates_checked": 0}
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n, dtype=np.int64)
    index, index_name = _make_index(vectors, cfg)
    kept_map = np.zeros(0, dtype=np.int64)  # index position -> row
    radius = float(cfg.threshold) - _SLACK
    checked = 0

    from contextlib import nullcontext

    from bakeoff.console import progress

    with progress() if show_progress and n > cfg.batch_size else nullcontext() as bar:
        task = bar.add_task("semantic dedup", total=n) if bar is not None else None
        for start in range(0, n, cfg.batch_size):
            rows = order[start:start + cfg.batch_size]
            batch = vectors[rows]
            removed = np.zeros(len(rows), dtype=bool)

            # 1. Against the rows kept so far (all rank before this batch).
            if index.ntotal:
                lims, _, found = index.range_search(batch, radius)
                q = np.repeat(np.arange(len(rows)), np.diff(lims.astype(np.int64)))
                cand = kept_map[found]
                cos = _exact_cos(vectors, rows[q], cand, parts)
                checked += len(cos)
                ok = cos >= cfg.threshold
                if ok.any():
                    best = _best_partner(q[ok], cand[ok], cos[ok], rank)
                    for qi, c, s in best:
                        removed[qi] = True
                        partner[rows[qi]] = c
                        sim[rows[qi]] = s

            # 2. Within the batch, in rank order (batch rows are in rank order).
            live = np.flatnonzero(~removed)
            if len(live) > 1:
                sub = batch[live]
                gram = sub @ sub.T
                ii, jj = np.nonzero(np.triu(gram >= radius, k=1))  # ii < jj: ii ranks first
                cos = _exact_cos(vectors, rows[live[ii]], rows[live[jj]], parts)
                checked += len(cos)
                ok = cos >= cfg.threshold
                js, picks, cs = resolve_in_batch(ii[ok], jj[ok], cos[ok], len(live))
                partner[rows[live[js]]] = rows[live[picks]]
                sim[rows[live[js]]] = cs
                removed[live[js]] = True

            survivors = rows[~removed]
            if len(survivors):
                index.add(vectors[survivors])
                kept_map = np.concatenate([kept_map, survivors])
            if bar is not None:
                bar.advance(task, len(rows))
    return partner, sim, {"index": index_name, "candidates_checked": int(checked)}


def resolve_in_batch(ii: np.ndarray, jj: np.ndarray, cos: np.ndarray, size: int
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The verified pairs (ii < jj: ii ranks first; positions in ``range(size)``)
    of one batch, resolved sequentially in rank order: j is removed if an
    earlier *kept* row matches it, naming the most similar (ties to the
    better-ranked). Only rows with a candidate are visited. Returns the removed
    positions, their partners and cosines."""
    out_j: list[int] = []
    out_i: list[int] = []
    out_c: list[float] = []
    if len(jj):
        by_j = np.argsort(jj, kind="stable")
        ii, jj, cos = ii[by_j], jj[by_j], cos[by_j]
        gone = np.zeros(size, dtype=bool)
        bounds = np.flatnonzero(np.diff(jj)) + 1
        for grp in np.split(np.arange(len(jj)), bounds):
            j = jj[grp[0]]
            alive = ~gone[ii[grp]]
            if not alive.any():
                continue
            g = grp[alive]
            pick = g[np.lexsort((ii[g], -cos[g]))[0]]
            gone[j] = True
            out_j.append(int(j))
            out_i.append(int(ii[pick]))
            out_c.append(float(cos[pick]))
    return np.asarray(out_j, np.int64), np.asarray(out_i, np.int64), np.asarray(out_c, np.float64)


def _best_partner(q: np.ndarray, cand: np.ndarray, cos: np.ndarray, rank: np.ndarray) -> list[tuple]:
    """Per query position, the candidate with the highest cosine (ties: best rank)."""
    frame = pl.DataFrame({"q": q, "c": cand, "cos": cos, "r": rank[cand]}) \
        .sort(["q", "cos", "r"], descending=[False, True, False]) \
        .unique(subset="q", keep="first", maintain_order=True)
    return list(zip(frame["q"].to_list(), frame["c"].to_list(), frame["cos"].to_list()))


# --- the step ----------------------------------------------------------------------

def semantic_dedup_rows(df: pl.DataFrame, config: SemanticDedupConfig | None = None,
                        ws: Workspace | None = None, show_progress: bool = True,
                        executor: Any = None) -> StepOutput:
    """Remove semantic duplicates from ``df`` (a version's rows); see the module doc.
    ``executor`` (:class:`bakeoff.executor.Executor`): with Ray, the step runs on
    the cluster over a dataset of ``df``'s rows (:mod:`bakeoff.curate.on_ray.semantic`)."""
    from bakeoff.curate import embeddings as emb
    from bakeoff.curate.dedup_key import SCOPE_KEYS, segments
    from bakeoff.curate.embeddings import embed_long_texts, resolve_model_name

    cfg = config or SemanticDedupConfig()
    cfg.validate()
    if executor is not None and executor.is_ray:
        return _semantic_dedup_on_ray(df, cfg, ws, executor)
    started = time.perf_counter()
    model = resolve_model_name(cfg.model)
    key = cfg.key or SCOPE_KEYS[cfg.scope]
    seg = segments(df, key)
    texts = df.select(text_for_scope(cfg.scope))["text"].fill_null("")
    counts = np.diff(seg.offsets)
    seg_row = np.repeat(np.arange(df.height), counts)  # the row of each segment
    seg_blank = (seg.texts.str.strip_chars().str.len_chars() == 0).to_numpy()
    filled = np.bincount(seg_row, weights=~seg_blank, minlength=df.height)
    active = np.flatnonzero(filled > 0)
    order_all = keep_order(df, texts, cfg.keep, cfg.quality_column)

    partner = np.full(df.height, -1, dtype=np.int64)
    sim = np.full(df.height, np.nan)
    search: dict[str, Any] = {"index": "none", "candidates_checked": 0}
    embed_stats: dict[str, Any] = {}
    long_rows = 0
    if len(active) > 1:
        t_embed = time.perf_counter()
        seg_vecs, long_stats = embed_long_texts(seg.texts.to_list(), ws=ws, model=model,
                                                batch_size=cfg.embed_batch_size, show_progress=show_progress)
        embed_stats = {**asdict(emb.last_stats), "seconds": round(time.perf_counter() - t_embed, 3),
                       "window_tokens": long_stats.window, "chunks": long_stats.chunks,
                       "segments_longer_than_window": long_stats.longer_than_window}
        if long_stats.longer_than_window:
            window, tok = emb.model_window(model)
            n_tok = np.asarray([len(x) for x in tok(seg.texts.to_list(), add_special_tokens=False)["input_ids"]])
            long_seg = n_tok > window - 2
            long_rows = int((np.bincount(seg_row, weights=long_seg, minlength=df.height) > 0).sum())
        # Rows are compared only with rows of the same shape (the same kinds of
        # segments): one search per shape, over the segments' vectors side by side.
        rank = np.empty(df.height, np.int64)
        rank[order_all] = np.arange(df.height)
        shapes = pl.DataFrame({"row": active, "shape": seg.shape[active], "n": counts[active]})
        for (_shape, k), group in shapes.group_by(["shape", "n"], maintain_order=True):
            rows = group["row"].to_numpy()
            if len(rows) < 2:
                continue
            idx = (seg.offsets[rows][:, None] + np.arange(k)[None, :]).reshape(-1)
            vectors = (seg_vecs[idx].reshape(len(rows), -1) / np.sqrt(k)).astype(np.float32)
            sub_order = np.argsort(rank[rows], kind="stable")
            p_sub, s_sub, st = greedy_semantic(vectors, sub_order, cfg, show_progress, parts=int(k))
            hit = p_sub >= 0
            partner[rows[hit]] = rows[p_sub[hit]]
            sim[rows[hit]] = s_sub[hit]
            search = {"index": st["index"], "candidates_checked": search["candidates_checked"] + st["candidates_checked"]}

    removed = np.flatnonzero(partner >= 0)
    ids = df["id"]
    ledger, report = ledger_and_report(
        cfg, model, key, rows_in=df.height, active=len(active), removed=removed, partner=partner[removed],
        similarity=sim[removed], removed_ids=ids.gather(removed), kept_ids=ids.gather(partner[removed]),
        segments=counts[removed], texts=texts, long_rows=long_rows, search=search, embed_stats=embed_stats,
        started=started)
    keep_mask = np.ones(df.height, dtype=bool)
    keep_mask[removed] = False
    kept = df.filter(pl.Series(keep_mask))
    return StepOutput(rows=kept, ledger=ledger, report=report)


def ledger_and_report(cfg: SemanticDedupConfig, model: str, key: list[str], *, rows_in: int, active: int,
                      removed: np.ndarray, partner: np.ndarray, similarity: np.ndarray, removed_ids: pl.Series,
                      kept_ids: pl.Series, segments: np.ndarray, texts: Any, long_rows: int,
                      search: dict[str, Any], embed_stats: dict[str, Any], started: float
                      ) -> tuple[pl.DataFrame, dict[str, Any]]:
    """The step's ledger and report from its decisions: ``removed`` (row numbers,
    ascending), each one's ``partner`` row, cosine, ids and segment count.
    ``texts``: the scope text by row number (a Series of all rows, or a dict of
    at least the rows the report shows)."""
    from bakeoff.curate.dedup import loud_warning

    rule = f"cosine>={cfg.threshold:g}"
    detail = pl.DataFrame({"n": segments, "c": similarity}).select(pl.struct(
        pl.format(f"every one of the {{}} segment(s) of the key [{' + '.join(key)}] has embedding cosine >= "
                  f"{cfg.threshold:g} with the kept row (lowest {{}})", "n", pl.col("c").round(4)).alias("reason"),
        pl.lit(model).alias("model"), pl.lit(key).alias("key"), pl.lit(cfg.keep).alias("keep"),
    ).struct.json_encode().alias("d"))["d"]
    ledger = new_ledger(
        row_id=removed_ids, stage=[STAGE] * len(removed), rule=[rule] * len(removed),
        score=similarity, kept_row_id=kept_ids, similarity=similarity,
        cluster_id=kept_ids, detail=detail,
    )
    cluster_sizes = pl.DataFrame({"c": kept_ids}).group_by("c").len()["len"] if len(removed) else pl.Series([], dtype=pl.UInt32)
    examples = [
        {"removed_id": r, "kept_id": k, "cosine": round(float(s), 4),
         "removed_text": _snippet(texts[int(i)]), "kept_text": _snippet(texts[int(p)])}
        for r, k, s, i, p in list(zip(removed_ids.to_list(), kept_ids.to_list(), similarity,
                                      removed, partner))[:5]
    ]
    report = {
        "step": STAGE, "config": {**asdict(cfg), "model": model}, "key": key,
        "rows_in": rows_in, "rows_out": rows_in - len(removed), "removed": int(len(removed)),
        "skipped_empty": int(rows_in - active),
        # nothing is truncated: longer texts are embedded in windows (embed_long_texts)
        "rows_longer_than_window": long_rows,
        "share_longer_than_window": round(long_rows / rows_in, 4) if rows_in else 0.0,
        "clusters": int(len(cluster_sizes)),
        "largest_cluster": int(cluster_sizes.max() or 0) + 1 if len(cluster_sizes) else 0,
        "similarity": ({"min": float(np.min(similarity)), "mean": float(np.mean(similarity))}
                       if len(removed) else {}),
        "search": search, "embeddings": embed_stats,
        "seconds": round(time.perf_counter() - started, 3),
        "examples": examples,
    }
    warning = loud_warning("semantic dedup", rows_in, removed, partner, texts)
    if warning:
        report["warning"] = warning
    return ledger, report


def _semantic_dedup_on_ray(df: pl.DataFrame, cfg: SemanticDedupConfig, ws: Workspace | None,
                           executor: Any) -> StepOutput:
    """The Ray step over a dataset of ``df``'s rows (the rows are in the driver
    already: the recipe hands a version's frame to this step)."""
    from bakeoff.curate.on_ray import dataset_from_table
    from bakeoff.curate.on_ray.semantic import semantic_dedup_on_ray
    from bakeoff.executor import ray_session

    table = df.with_columns(pl.int_range(pl.len(), dtype=pl.Int64).alias("_row")).to_arrow()
    with ray_session(executor) as ray:
        out = semantic_dedup_on_ray(dataset_from_table(ray, table), df.height, cfg, executor, ws)
    keep = np.ones(df.height, dtype=bool)
    keep[out.removed] = False
    return StepOutput(rows=df.filter(pl.Series(keep)), ledger=out.ledger, report=out.report)


def _snippet(text: str, width: int = 160) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= width else text[: width - 1] + "…"


__all__ = ["SemanticDedupConfig", "semantic_dedup_rows", "greedy_semantic", "keep_order",
           "quality_scores", "STAGE", "plan_index", "ivf_sample", "train_ivf", "index_label",
           "resolve_in_batch", "ledger_and_report"]
