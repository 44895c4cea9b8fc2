"""Noise filters on Ray: detection as a batch map over the rows' blocks.

Detection (:func:`bakeoff.curate.filters.detect`) is a function of each row
alone, so it runs per block on the workers, which send back only the filter
columns (hit, score, detail per filter); the driver rebuilds the frame the
local ``detect`` returns and applies the actions with the local code
(:func:`bakeoff.curate.filters.filter_rows`). Rewrites (repair, redact) and
their re-checks touch only the hit rows, so they stay on the driver.
"""

from __future__ import annotations

from typing import Any

import polars as pl
import pyarrow as pa

from bakeoff.executor import Executor, ray_session

from . import collect, dataset_from_table, map_options, maybe_die, use_task_shuffle

_INPUT = ["kind", "messages", "chosen", "rejected"]


def _detect_block(block: pa.Table, config: Any) -> pa.Table:
    from bakeoff.curate.filters import detect

    maybe_die()
    df = pl.from_arrow(block)
    frame, active = detect(df.drop("_row"), config, show_progress=False)
    cols = [f.col(x) for f in active for x in ("hit", "score", "detail")]
    return frame.select(cols).with_columns(df["_row"]).to_arrow()


def detect_on_ray(df: pl.DataFrame, config: Any, executor: Executor) -> tuple[pl.DataFrame, list[Any]]:
    """What :func:`bakeoff.curate.filters.detect` returns, computed on Ray."""
    from bakeoff.curate.filters import FILTERS
    from bakeoff.schema import prompt_text, response_text

    active = [FILTERS[n](c) for n, c in config.filters.items() if c.enabled]
    frame = df.select(_INPUT).with_columns(prompt_text().alias("_p"), response_text().alias("_r"))
    if not active or df.height == 0:
        from bakeoff.curate.filters import detect

        return detect(df, config, show_progress=False)
    with ray_session(executor) as ray:
        use_task_shuffle(ray)
        table = df.select(_INPUT).with_row_index("_row").with_columns(pl.col("_row").cast(pl.Int64)).to_arrow()
        ds = dataset_from_table(ray, table).map_batches(_detect_block, fn_kwargs={"config": config},
                                                        **map_options())
        result = pl.from_arrow(collect(ds, sort_by="_row")).drop("_row")
    # the dtypes the local detect gives (a block where no row hit has null details)
    result = result.with_columns(
        [pl.col(f.col("hit")).cast(pl.Boolean) for f in active]
        + [pl.col(f.col("detail")).cast(pl.String) for f in active])
    return frame.hstack(result), active


def filter_rows_on_ray(df: pl.DataFrame, config: Any, executor: Executor):
    """The filter step (:func:`bakeoff.curate.filters.filter_rows`) with detection on Ray."""
    from bakeoff.curate.filters import filter_rows

    return filter_rows(df, config, detect_rows=lambda d, c: detect_on_ray(d, c, executor))


__all__ = ["detect_on_ray", "filter_rows_on_ray"]
