"""The curation steps on Ray Data (``--executor ray``).

The steps do not change: each module here computes, on Ray workers, the same
per-row numbers the local path computes in this process, by calling the same
functions (``bakeoff.curate.filters.detect``, ``bakeoff.curate.minhash``,
``bakeoff.curate.embeddings``), and hands them back to the driver, which makes
the decisions with the local code and alone writes the workspace catalog.
So a version written with ``--executor ray`` has the same content digest and
the same ledger as one written locally.

=============  ================================================================
filters        detection per batch (``map_batches``); actions on the driver
exact          exact dedup: a hash ``groupby`` of 128-bit fingerprints
minhash        signatures per batch, band keys shuffled by a ``groupby``,
               candidate pairs verified per turn on workers, greedy on the driver
semantic       embeddings by an actor pool (one model load per actor, a GPU
               each when the cluster has them), vectors left in the object
               store; the search partitioned by cell and batch on workers,
               the greedy walk over the verified pairs on the driver
=============  ================================================================

Nothing here is imported by the local path: ``import ray`` happens only when
a step runs with ``--executor ray``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import polars as pl
import pyarrow as pa

#: Rows per Ray Data block (and per batch of a map): big enough that a task's
#: fixed cost (~10 ms) is small beside its work, small enough that every core
#: gets several blocks.
ROWS_PER_BLOCK = 50_000
#: Test-only: a folder. A map batch that finds a file ``kill-once`` there
#: deletes it and kills its worker (``os._exit``), as a machine lost mid-step
#: would; Ray retries the batch elsewhere. (A folder the test arms, because the
#: workers' environment is fixed when the Ray instance starts.)
KILL_ENV = "BAKEOFF_TEST_RAY_KILL_DIR"


def maybe_die() -> None:
    """The test hook of :data:`KILL_ENV` (a no-op unless the variable is set)."""
    folder = os.environ.get(KILL_ENV)
    if folder:
        try:
            os.remove(os.path.join(folder, "kill-once"))  # only one worker wins the file
        except FileNotFoundError:
            return
        os._exit(17)


def parallelism(ray: Any) -> int:
    """CPUs of the cluster (at least 1)."""
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def dataset_from_table(ray: Any, table: pa.Table, rows_per_block: int = ROWS_PER_BLOCK) -> Any:
    """A Ray dataset of ``table`` cut into blocks of ``rows_per_block`` rows
    (each block is put in the object store once: workers read it from there,
    or from another node's store, never from this process's memory)."""
    cpus = parallelism(ray)
    # at least two blocks per CPU so every core has work while one block is slow
    per = max(1, min(rows_per_block, -(-table.num_rows // (2 * cpus)) or 1))
    slices = [table.slice(lo, per) for lo in range(0, max(table.num_rows, 1), per)]
    return ray.data.from_arrow(slices)


def map_options() -> dict[str, Any]:
    """Options of every stateless ``map_batches`` here: the block is the batch.
    (A task whose worker dies is retried by Ray; a step that still fails writes
    nothing: only the driver commits, after every batch is back.)"""
    return {"batch_size": None, "batch_format": "pyarrow", "zero_copy_batch": True}


def use_task_shuffle(ray: Any) -> None:
    """Shuffle with tasks (Ray Data's pull-based sort shuffle) rather than its
    default hash shuffle, whose aggregator actors cost ~10 s to start per
    shuffle on a 2-core machine -- more than our shuffles' work up to ~1M
    rows. (The groups are the same either way.) And keep Ray Data's per-
    dataset progress logs off the terminal: the step shows its own."""
    import logging

    from ray.data.context import DataContext, ShuffleStrategy

    ctx = DataContext.get_current()
    ctx.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    ctx.enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)


def collect(ds: Any, sort_by: str | None = None) -> pa.Table:
    """Every block of ``ds`` in one Arrow table on the driver (sorted by
    ``sort_by``: the order blocks come back in is not the input order)."""
    import ray

    refs = ds.to_arrow_refs()
    tables = [t for t in ray.get(refs) if t.num_rows]
    if not tables:
        return ds.schema().base_schema.empty_table() if ds.schema() is not None else pa.table({})
    if sort_by is not None:  # blocks each in order and apart (a map over row ranges): put them in order,
        firsts = [t[sort_by][0].as_py() for t in tables]  # no copy
        tables = [tables[i] for i in np.argsort(firsts, kind="stable")]
    table = pa.concat_tables(tables, promote_options="permissive")
    if sort_by is not None:
        key = table[sort_by].to_numpy()
        if key.size > 1 and not (key[1:] >= key[:-1]).all():
            table = table.take(np.argsort(key, kind="stable"))
    return table


def wait_with_progress(ray: Any, refs: list[Any], label: str) -> list[Any]:
    """``refs``, once all are done, with a bar of the tasks done."""
    from bakeoff.console import progress

    with progress() as bar:
        task = bar.add_task(label, total=len(refs))
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            bar.advance(task, len(done))
    return refs


@dataclass
class RayStepOutput:
    """What a step run on Ray over a dataset of rows hands back to the driver:
    never the kept rows (at ten million rows they do not fit there), only what
    changes. The input dataset's rows carry ``_row`` (int64: their number in the
    step's input, dense from 0); the driver writes the step's output by
    streaming the input's Parquet shards minus ``removed``, with ``rewritten``
    in place of the rows it names.

    ``removed``: the ``_row`` numbers the step removes (int64, ascending).
    ``ledger``: one row per removed row (``LEDGER_SCHEMA``), as the local step
    writes it: in memory, or a LazyFrame over files the step spilled.
    ``rewritten``: ``_row`` plus the core columns (new ``id`` included) of rows
    whose content the step changed (a filter's repair or redaction), or None.
    ``report``: the local step's report. ``transform``: what the driver applies
    to every batch of kept rows (with ``_row``) as it writes them, or None (the
    filter step's flag tags: a change to many rows that needs no text)."""

    removed: np.ndarray
    ledger: pl.DataFrame | pl.LazyFrame
    report: dict[str, Any] = field(default_factory=dict)
    rewritten: pl.DataFrame | None = None
    transform: Callable[[pl.DataFrame], pl.DataFrame] | None = None

    @property
    def ledger_rows(self) -> int:
        """The ledger's row count (of a LazyFrame over spilled files: from their metadata)."""
        if isinstance(self.ledger, pl.DataFrame):
            return self.ledger.height
        return self.ledger.select(pl.len()).collect().item()


__all__ = ["RayStepOutput", "ROWS_PER_BLOCK", "KILL_ENV", "maybe_die", "parallelism", "dataset_from_table",
           "map_options", "use_task_shuffle", "collect", "wait_with_progress"]
