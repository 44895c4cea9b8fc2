"""Noise filters on Ray: detection and actions per block of rows, on the workers.

Every filter is a function of each row alone, and so is every action (drop,
flag, repair, redact) but one detail, so the whole local step
(:func:`bakeoff.curate.filters.filter_rows`) runs per block on the workers, on
the block's hit rows (a row no filter hits is neither dropped nor changed).
Each block sends back only what changes: the ``_row`` numbers it drops and
their ledger rows, the rows it rewrote (whole), the new tags of the rows it
flagged, and its report. The driver merges the reports (counts add up, the
examples are the first hits, :func:`bakeoff.curate.filters.suite.merge_filter_reports`)
and holds no more than the changed rows, however large the input.

The one detail that is not per row is the id of a rewritten row: its new
content id must not clash with any id of the input, nor with another rewritten
row's (``reid_rows`` numbers it ``~k`` then). A block can only see its own ids,
so the driver numbers the rewritten rows again (``reid_rows``) among the
input's ids that could clash, which one pass over the id column finds.
"""

from __future__ import annotations

import time
from typing import Any, Iterator

import numpy as np
import polars as pl
import pyarrow as pa

from bakeoff.executor import Executor, ray_session
from bakeoff.workspace import new_ledger

from . import ROWS_PER_BLOCK, RayStepOutput, maybe_die, use_task_shuffle, wait_with_progress
from .rows import RowSource

_CONTENT = ["messages", "chosen", "rejected"]


def _filter_block(block: pa.Table, config: Any) -> dict[str, Any]:
    """The local step on one block's hit rows: what it drops (``removed``:
    ``_row`` numbers; ``ledger``), the kept rows whose content it changed
    (``rewritten``, whole, ids as the block numbered them), the new ``tags``
    of the other kept rows whose tags it changed (``_row``, ``tags``), and the
    block's ``report``."""
    from bakeoff.curate.filters import detect, filter_rows

    maybe_die()
    df = pl.from_arrow(block)
    frame, active = detect(df.drop("_row"), config, show_progress=False)
    hit = (frame.select(pl.any_horizontal([pl.col(f.col("hit")) for f in active])).to_series() if active
           else pl.Series([False] * df.height))
    rows, frame = df.filter(hit), frame.filter(hit)
    out = filter_rows(rows, config, detect_rows=lambda d, c: (frame, active), rows_in=df.height)
    kept = out.rows
    before = rows.join(kept.select("_row"), on="_row", how="semi", maintain_order="left")
    changed = pl.any_horizontal([kept[c].ne_missing(before[c]) for c in _CONTENT])
    retagged = ~changed & kept["tags"].ne_missing(before["tags"])
    removed = rows.join(kept.select("_row"), on="_row", how="anti", maintain_order="left")["_row"]
    return {"removed": removed.to_numpy(), "ledger": out.ledger.to_arrow(), "report": out.report,
            "rewritten": kept.filter(changed).to_arrow(),
            "tags": kept.filter(retagged).select("_row", "tags").to_arrow()}


def _ids_like(block: pa.Table, bases: list[str]) -> pa.Table:
    """Rows whose id is one of ``bases`` or ``base~k``: the ids a rewritten
    row's new id could clash with (see ``reid_rows``)."""
    df = pl.from_arrow(block)
    base = pl.col("id").str.replace(r"~\d+$", "")
    return df.filter(pl.col("id").is_in(bases) | base.is_in(bases)).select("_row", "id").to_arrow()


def block_outputs(ray: Any, refs: list[Any]) -> Iterator[dict[str, Any]]:
    """The blocks' outputs, in row order, each fetched once every block is done
    (so the driver holds them one at a time beside what it keeps)."""
    for ref in wait_with_progress(ray, refs, "filters on Ray"):
        yield ray.get(ref)


def filter_on_ray(source: RowSource, config: Any, executor: Executor,
                  rows_per_block: int | None = None) -> RayStepOutput:
    """The filter step (:func:`bakeoff.curate.filters.filter_rows`) over the
    rows of ``source``, run per block on Ray: the local step's ledger, report,
    rewritten rows and flag tags."""
    from bakeoff.curate.filters.suite import filter_rows, merge_filter_reports

    t0 = time.perf_counter()
    removed, ledgers, rewritten, tags, reports = [], [], [], [], []
    with ray_session(executor) as ray:
        use_task_shuffle(ray)  # (for its quiet Ray Data logs: the id pass below is a dataset)
        refs, _ = source.blocks(ray, _filter_block, {"config": config}, per=rows_per_block or ROWS_PER_BLOCK)
        for out in block_outputs(ray, refs):
            removed.append(out["removed"])
            for parts, key in ((ledgers, "ledger"), (rewritten, "rewritten"), (tags, "tags")):
                if out[key].num_rows:
                    parts.append(pl.from_arrow(out[key], rechunk=False))
            reports.append(out["report"])
        if not reports:  # no rows: the local step's report on none
            empty = pl.from_arrow(source.schema.empty_table()).with_columns(pl.lit(None, pl.Int64).alias("_row"))
            reports.append(filter_rows(empty, config).report)
        columns = source.columns
        rewritten_rows = (pl.concat(rewritten, how="vertical_relaxed") if rewritten
                          else pl.from_arrow(source.schema.empty_table()).with_columns(
                              pl.lit(None, pl.Int64).alias("_row")))
        rewritten_rows = _number_rewritten(ray, source, rewritten_rows.select(*columns, "_row"))
    ledger = pl.concat(ledgers, how="vertical_relaxed") if ledgers else new_ledger()
    report = merge_filter_reports(reports, config.examples, time.perf_counter() - t0)
    flagging = any(c.enabled and c.action == "flag" for c in config.filters.values())
    return RayStepOutput(removed=np.sort(np.concatenate(removed)).astype(np.int64) if removed else
                         np.zeros(0, np.int64), ledger=ledger, report=report, rewritten=rewritten_rows,
                         transform=_set_tags(pl.concat(tags) if tags else None) if flagging else None)


def _number_rewritten(ray: Any, source: RowSource, rewritten: pl.DataFrame) -> pl.DataFrame:
    """The rewritten rows with the ids the local step gives them: ``reid_rows``
    over them and the input's rows whose ids could clash with theirs (found by
    one pass over the id column), in row order."""
    from bakeoff.curate.filters.suite import reid_rows

    from . import collect, map_options

    if not rewritten.height:
        return rewritten
    bases = rewritten["id"].str.replace(r"~\d+$", "").unique().to_list()
    # every candidate id is a base of the block's numbering, or base~k
    near = pl.from_arrow(collect(source.dataset(ray, columns=["id"]).map_batches(
        _ids_like, fn_kwargs={"bases": bases}, **map_options())))
    if near.height:
        near = near.filter(~pl.col("_row").is_in(rewritten["_row"].implode()))
    both = pl.concat([rewritten.with_columns(pl.lit(True).alias("_changed")),
                      near.with_columns(pl.lit(False).alias("_changed"))], how="diagonal_relaxed").sort("_row")
    numbered = reid_rows(both.drop("_changed"), both["_changed"])
    return numbered.filter(both["_changed"]).select(rewritten.columns)


def _set_tags(new_tags: pl.DataFrame | None):
    """The flag action as a batch transform: the rows named in ``new_tags``
    (``_row``, ``tags``) get those tags, and every other row's missing tags
    become ``[]``, as the local step writes them when some filter flags."""
    empty = pl.lit([], dtype=pl.List(pl.String))

    def apply(frame: pl.DataFrame) -> pl.DataFrame:
        if new_tags is None:
            return frame.with_columns(pl.col("tags").fill_null(empty))
        joined = frame.join(new_tags.rename({"tags": "_tags"}), on="_row", how="left", maintain_order="left")
        return joined.with_columns(pl.coalesce("_tags", pl.col("tags").fill_null(empty)).alias("tags")).drop("_tags")
    return apply


__all__ = ["filter_on_ray", "block_outputs"]
