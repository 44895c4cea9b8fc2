"""Noise filters on Ray: detection as a batch map over the streamed rows.

Detection (:func:`bakeoff.curate.filters.detect`) is a function of each row
alone, so it runs per block on the workers, which send back only the rows
some filter hit: their ``_row``, id and filter columns (hit, score, detail),
and their whole row only where the driver needs it -- rows a rewrite filter
(repair, redact) hit, and the first few hits of each filter per block (the
report's examples). The driver then runs the local actions
(:func:`bakeoff.curate.filters.filter_rows`) on those rows alone: a row no
filter hits is neither dropped nor rewritten, so the ledger, the rewritten
rows and the report's counts are the local ones. Flag tags, which may touch
many rows, are applied as the driver writes the output (no text needed).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from bakeoff.executor import Executor, ray_session

from . import RayStepOutput, collect, map_options, maybe_die, use_task_shuffle
from .rows import RowSource

_CONTENT = ["kind", "messages", "chosen", "rejected"]


def _rewrites(config: Any) -> list[str]:
    return [n for n, c in config.filters.items() if c.enabled and c.action not in ("drop", "flag")]


def _detect_block(block: pa.Table, config: Any, examples: int) -> pa.Table:
    """The block's hit rows: ``_row``, ``_content`` (whether the whole row
    came too), the row's columns (nulls unless ``_content``), filter columns."""
    from bakeoff.curate.filters import detect

    maybe_die()
    df = pl.from_arrow(block)
    frame, active = detect(df.drop("_row"), config, show_progress=False)
    cols = [f.col(x) for f in active for x in ("hit", "score", "detail")]
    hits = frame.select(cols)
    rewrite = set(_rewrites(config))
    any_hit = pl.any_horizontal([pl.col(f.col("hit")) for f in active])
    rewrite_hit = pl.any_horizontal([pl.col(f.col("hit")) for f in active if f.name in rewrite] or [pl.lit(False)])
    # a filter's first hits among rows no rewrite touches: with the rewrite
    # hits (all here), they hold every example the local report shows
    plain = [(pl.col(f.col("hit")) & ~rewrite_hit) for f in active]
    example = pl.any_horizontal([p & (p.cum_sum() <= examples) for p in plain] or [pl.lit(False)])
    flags = hits.select(any_hit.alias("_hit"), (rewrite_hit | example).alias("_content"))
    out = pl.concat([df, hits, flags], how="horizontal").filter(pl.col("_hit")).drop("_hit")
    keep = [c for c in df.columns if c not in ("id", "_row")]
    out = out.with_columns([pl.when(pl.col("_content")).then(pl.col(c)).otherwise(None).alias(c) for c in keep])
    return out.to_arrow()


def _ids_like(block: pa.Table, bases: list[str]) -> pa.Table:
    """Rows whose id is one of ``bases`` or ``base~k``: the ids a rewritten
    row's new id could clash with (see ``reid_rows``)."""
    df = pl.from_arrow(block)
    base = pl.col("id").str.replace(r"~\d+$", "")
    return df.filter(pl.col("id").is_in(bases) | base.is_in(bases)).select("_row", "id").to_arrow()


def filter_on_ray(source: RowSource, config: Any, executor: Executor) -> RayStepOutput:
    """The filter step (:func:`bakeoff.curate.filters.filter_rows`) over the
    rows of ``source``, detection on Ray; the local step's ledger, report and
    rewritten rows."""
    from bakeoff.curate.filters import FILTERS, filter_rows
    from bakeoff.schema import prompt_text, response_text

    active = [FILTERS[n](c) for n, c in config.filters.items() if c.enabled]
    cols = [f.col(x) for f in active for x in ("hit", "score", "detail")]
    with ray_session(executor) as ray:
        use_task_shuffle(ray)
        if active and source.n:
            ds = source.dataset(ray).map_batches(_detect_block, fn_kwargs={"config": config,
                                                                           "examples": config.examples},
                                                 **map_options())
            hits = pl.from_arrow(collect(ds, sort_by="_row"), rechunk=False)
        else:
            hits = pl.DataFrame()
        columns = source.columns
        if not hits.height:  # nothing hit (or no filters): an empty frame of the right shape
            hits = pl.from_arrow(source.schema.empty_table()).with_columns(
                pl.lit(None, pl.Int64).alias("_row"), pl.lit(None, pl.Boolean).alias("_content"),
                *[pl.lit(None, pl.Boolean if c.endswith(".hit") else pl.Float64 if c.endswith(".score")
                         else pl.String).alias(c) for c in cols]).head(0)
        hits = hits.with_columns([pl.col(f.col("hit")).cast(pl.Boolean) for f in active]
                                 + [pl.col(f.col("detail")).cast(pl.String) for f in active])
        rows = hits.select(*columns, "_row")
        output = _filter_subset(rows, hits, active, cols, config, source.n, filter_rows, prompt_text, response_text)
        # A rewritten row's new id must not clash with any id of the input
        # (``reid_rows`` numbers it ``~k`` then): rows outside the hit rows
        # whose id could clash join the subset, and the actions run again.
        rewritten_ids = output.rows.join(rows.select("_row", pl.col("id").alias("_old")), on="_row", how="left")
        fresh = rewritten_ids.filter(pl.col("id") != pl.col("_old"))["id"].str.replace(r"~\d+$", "")
        if fresh.len():
            bases = fresh.unique().to_list()
            near = pl.from_arrow(collect(source.dataset(ray, columns=["id"]).map_batches(
                _ids_like, fn_kwargs={"bases": bases}, **map_options())))
            near = near.filter(~pl.col("_row").is_in(rows["_row"].implode())) if near.height else near
            if near.height:
                extra = near.select("_row", "id").with_columns(pl.lit(False).alias("_content"))
                hits = pl.concat([hits, extra], how="diagonal_relaxed").sort("_row").with_columns(
                    [pl.col(f.col("hit")).fill_null(False) for f in active])
                rows = hits.select(*columns, "_row")
                output = _filter_subset(rows, hits, active, cols, config, source.n, filter_rows, prompt_text,
                                        response_text)
    dropped = rows["id"].is_in(output.ledger["row_id"].implode())
    removed = rows["_row"].filter(dropped).to_numpy().astype(np.int64)
    content = hits.select("_row", "_content").filter(pl.col("_content"))
    rewritten = output.rows.join(content, on="_row", how="semi", maintain_order="left")
    flags = [f for f in active if f.config.action == "flag"]
    transform = _flag_tags(hits.filter(~pl.col("_content").fill_null(False)), flags) if flags else None
    return RayStepOutput(removed=removed, ledger=output.ledger, report=output.report,
                         rewritten=rewritten.select(*columns, "_row"), transform=transform)


def _filter_subset(rows, hits, active, cols, config, n, filter_rows, prompt_text, response_text):
    """The local actions on the hit rows (``rows``: their columns and ``_row``)."""
    frame = rows.select(_CONTENT).with_columns(prompt_text().alias("_p"), response_text().alias("_r")) \
        .hstack(hits.select(cols))
    return filter_rows(rows, config, detect_rows=lambda d, c: (frame, active), rows_in=n)


def _flag_tags(hits: pl.DataFrame, flags: list[Any]):
    """The local flag action as a batch transform: every row's tags become
    ``unique(tags or [] + flag:NAME for each flag filter that hit it)``."""
    tagged = hits.select("_row", pl.concat_list([
        pl.when(pl.col(f.col("hit"))).then(pl.lit(f"flag:{f.name}")).otherwise(None) for f in flags]
    ).list.drop_nulls().alias("_flags")).filter(pl.col("_flags").list.len() > 0)

    def apply(frame: pl.DataFrame) -> pl.DataFrame:
        joined = frame.join(tagged, on="_row", how="left", maintain_order="left")
        tags = pl.concat_list([pl.col("tags").fill_null(pl.lit([], dtype=pl.List(pl.String))),
                               pl.col("_flags").fill_null(pl.lit([], dtype=pl.List(pl.String)))])
        return joined.with_columns(tags.list.unique(maintain_order=True).alias("tags")).drop("_flags")
    return apply


__all__ = ["filter_on_ray"]
