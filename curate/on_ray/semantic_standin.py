"""A stand-in for ``semantic_dedup_on_ray`` (:mod:`.semantic`) until the
streamed semantic step is merged: the same signature and result, but it
collects the rows to the driver and runs the local step
(:func:`bakeoff.curate.semantic.semantic_dedup_rows`, embeddings still by the
Ray actor pool). So a recipe with a semantic step holds that step's rows on
the driver; the filter and dedup steps do not.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from bakeoff.executor import Executor

from . import RayStepOutput, collect


def semantic_dedup_on_ray(ds: Any, n: int, cfg: Any, executor: Executor, ws: Any = None) -> RayStepOutput:
    """Semantic dedup of the rows of ``ds`` (``_row`` and the rows' columns)."""
    from bakeoff.curate.semantic import semantic_dedup_rows

    df = pl.from_arrow(collect(ds, sort_by="_row"))
    if df.height != n:
        raise AssertionError(f"semantic step: {df.height} rows read, {n} expected")
    out = semantic_dedup_rows(df.drop("_row"), cfg, ws, executor=executor)
    removed = df["_row"].filter(df["id"].is_in(out.ledger["row_id"].implode())).to_numpy()
    return RayStepOutput(removed=np.asarray(removed, np.int64), ledger=out.ledger, report=out.report)


__all__ = ["semantic_dedup_on_ray"]
