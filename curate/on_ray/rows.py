"""A step's input rows on Ray, read by the workers from Parquet, and the
step's output written by the driver, both row group by row group.

A step on Ray never has its input in the driver's memory: its input is one or
more Parquet files on a filesystem every node can read (a version's
``rows.parquet``, or the previous step's scratch output in the workspace's
temp area of the output dataset). :class:`RowSource` knows only their row
groups (path, group, first row); the workers read the rows, each with
``_row`` (int64: its number in the step's input, dense from 0), which is how
a step names rows to the driver (removed, rewritten, fetched).

``ray.data.read_parquet`` does not number rows (its blocks come back in any
order, and a row group may be split or merged), so the dataset here is a
dataset of row-group descriptors mapped to the row group's rows on the
worker. The driver then writes the step's output by streaming the same row
groups minus the removed rows, with the rewritten rows in place
(:func:`write_output`): its memory is a batch, whatever the rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from . import ROWS_PER_BLOCK, RayStepOutput, maybe_die

#: Rows per batch when the driver streams a step's output: a row group of the
#: files it writes, one block of the next step's input.
WRITE_BATCH = ROWS_PER_BLOCK


@dataclass(frozen=True)
class RowGroup:
    path: str
    group: int
    first: int   # the _row of its first row
    rows: int


def _read(path: str, group: int, first: int, columns: list[str] | None, per: int) -> Iterator[pa.Table]:
    """The rows of one row group, ``per`` at a time, each with ``_row``."""
    row = first
    for batch in pq.ParquetFile(path).iter_batches(batch_size=per, row_groups=[group], columns=columns,
                                                   use_threads=False):
        table = pa.Table.from_batches([batch])
        yield table.append_column("_row", pa.array(np.arange(row, row + table.num_rows, dtype=np.int64)))
        row += table.num_rows


def _read_chunk(path: str, group: int, first: int, skip: int, columns: list[str] | None, per: int) -> pa.Table:
    """Rows ``skip * per`` to ``(skip + 1) * per`` of a row group (whose first
    row is ``first``), with ``_row``; the rows before them are decoded and dropped."""
    lo, hi = skip * per, (skip + 1) * per
    parts, offset = [], 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=per, row_groups=[group], columns=columns,
                                                   use_threads=False):
        end = offset + batch.num_rows
        if end > lo:
            start = max(lo, offset)
            parts.append(batch.slice(start - offset, min(hi, end) - start))
        offset = end
        if offset >= hi:
            break
    table = pa.Table.from_batches(parts)
    return table.append_column("_row", pa.array(np.arange(first + lo, first + lo + table.num_rows, dtype=np.int64)))


def _read_chunks(items: pa.Table, columns: list[str] | None, per: int) -> Iterator[pa.Table]:
    for path, group, first, skip in zip(*(items.column(c).to_pylist() for c in ("path", "group", "first", "skip"))):
        yield _read_chunk(path, group, first, skip, columns, per)


class RowSource:
    """The rows of Parquet ``paths`` (in order), numbered ``_row`` from 0."""

    def __init__(self, paths: list[str | Path]) -> None:
        self.paths = [str(p) for p in paths]
        groups: list[RowGroup] = []
        first = 0
        for path in self.paths:
            meta = pq.read_metadata(path)
            for g in range(meta.num_row_groups):
                k = meta.row_group(g).num_rows
                if k:
                    groups.append(RowGroup(path, g, first, k))
                first += k
        self.groups = groups
        self.n = first
        self.schema = pq.read_schema(self.paths[0])

    @property
    def columns(self) -> list[str]:
        return list(self.schema.names)

    def dataset(self, ray: Any, columns: list[str] | None = None, per: int = ROWS_PER_BLOCK) -> Any:
        """A Ray dataset of the rows (``columns``, default all, plus ``_row``),
        read on the workers, ``per`` rows a block."""
        # One descriptor per block of ``per`` rows, so that the read fuses with
        # the step's map and every block is a task of its own, however large
        # the row groups. Reading block k of a group decodes the k blocks
        # before it: versions and the files this module writes have groups of
        # at most one block (``workspace.ROW_GROUP_ROWS``; an ingest's groups
        # are its batches, ~90k chat rows: two blocks).
        items = [{"path": g.path, "group": g.group, "first": g.first, "skip": k}
                 for g in self.groups for k in range(-(-g.rows // per))]
        if not items:  # no rows: one empty block with the schema
            empty = self.schema.empty_table() if columns is None else self.schema.empty_table().select(columns)
            return ray.data.from_arrow(empty.append_column("_row", pa.array([], pa.int64())))
        return ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
            _read_chunks, fn_kwargs={"columns": columns, "per": per}, batch_size=None, batch_format="pyarrow")

    def blocks(self, ray: Any, fn: Callable[..., pa.Table], fn_kwargs: dict[str, Any] | None = None,
               columns: list[str] | None = None, per: int = ROWS_PER_BLOCK) -> tuple[list[Any], np.ndarray]:
        """``fn(rows, **fn_kwargs)`` of every block of ``per`` rows (with
        ``_row``), kept in the object store: (the blocks' refs, in row order;
        the first ``_row`` of each block and ``n`` after the last). For a
        stage that must find a row's block again (MinHash's verification)."""
        task = ray.remote(_block)
        refs: list[Any] = []
        starts: list[int] = []
        for g in self.groups:
            for k in range(-(-g.rows // per)):
                refs.append(task.remote(g.path, g.group, g.first, k, columns, per, fn, fn_kwargs or {}))
                starts.append(g.first + k * per)
        return refs, np.asarray(starts + [self.n], np.int64)

    def fetch(self, ray: Any, rows: np.ndarray, columns: list[str] | None = None,
              fn: Callable[..., pa.Table] | None = None, fn_kwargs: dict[str, Any] | None = None) -> pl.DataFrame:
        """The rows numbered ``rows`` (``columns`` and ``_row``, or what ``fn``
        makes of them on the worker), sorted by ``_row``: one task per row
        group that holds some of them."""
        rows = np.unique(np.asarray(rows, np.int64))
        task = ray.remote(_take_from_group)
        refs = []
        for g in self.groups:
            lo, hi = np.searchsorted(rows, [g.first, g.first + g.rows])
            if hi > lo:
                refs.append(task.remote(g.path, g.group, g.first, rows[lo:hi], columns, fn, fn_kwargs or {}))
        tables = [t for t in ray.get(refs) if t.num_rows]
        if not tables:
            empty = self.schema.empty_table() if columns is None else self.schema.empty_table().select(columns)
            return pl.from_arrow(empty).with_columns(pl.lit(None, pl.Int64).alias("_row")).head(0) \
                if fn is None else pl.DataFrame({"_row": pl.Series([], dtype=pl.Int64)})
        return pl.from_arrow(pa.concat_tables(tables, promote_options="permissive")).sort("_row")

    def iter_frames(self, batch_rows: int | None = None) -> Iterator[pl.DataFrame]:
        """Every row, in order, ``batch_rows`` at a time, with ``_row`` (on the driver)."""
        for g in self.groups:
            for table in _read(g.path, g.group, g.first, None, batch_rows or WRITE_BATCH):
                yield pl.from_arrow(table)


def _block(path: str, group: int, first: int, skip: int, columns: list[str] | None, per: int,
           fn: Callable[..., pa.Table], fn_kwargs: dict[str, Any]) -> pa.Table:
    maybe_die()
    return fn(_read_chunk(path, group, first, skip, columns, per), **fn_kwargs)


def _take_from_group(path: str, group: int, first: int, rows: np.ndarray, columns: list[str] | None,
                     fn: Callable[..., pa.Table] | None, fn_kwargs: dict[str, Any]) -> pa.Table:
    maybe_die()
    table = pq.ParquetFile(path).read_row_group(group, columns=columns, use_threads=False)
    table = table.take(pa.array(rows - first)).append_column("_row", pa.array(rows))
    return fn(table, **fn_kwargs) if fn is not None else table


def kept_frames(source: RowSource, out: RayStepOutput, batch_rows: int | None = None) -> Iterator[pl.DataFrame]:
    """The step's output, batch by batch, in the input's order: the input's
    rows minus ``out.removed``, ``out.rewritten`` in place of the rows it
    names, then ``out.transform`` (without ``_row``)."""
    removed = np.zeros(source.n, bool)
    removed[out.removed] = True
    rewritten = out.rewritten
    if rewritten is not None and rewritten.height:
        rewritten = rewritten.sort("_row")
        rw_rows = rewritten["_row"].to_numpy()
    else:
        rewritten, rw_rows = None, np.zeros(0, np.int64)
    for frame in source.iter_frames(batch_rows or WRITE_BATCH):
        rows = frame["_row"].to_numpy()
        keep = ~removed[rows]
        if not keep.all():
            frame = frame.filter(pl.Series(keep))
        if rewritten is not None and frame.height:
            lo, hi = np.searchsorted(rw_rows, [rows[0], rows[-1] + 1])
            if hi > lo:
                here = rewritten.slice(int(lo), int(hi - lo))
                here = here.select([pl.col(c).cast(t) for c, t in frame.schema.items()])
                frame = pl.concat([frame.filter(~pl.col("_row").is_in(here["_row"].implode())), here]).sort("_row")
        if out.transform is not None:
            frame = out.transform(frame)
        yield frame.drop("_row")


def write_scratch(frames: Iterator[pl.DataFrame], path: Path, schema: pa.Schema) -> int:
    """Write ``frames`` to one Parquet file (LZ4, a row group per frame); rows
    written. ``schema``: the file's, when there is no frame at all."""
    writer = None
    n = 0
    try:
        for frame in frames:
            table = frame.to_arrow()
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema, compression="lz4", write_statistics=False)
            elif table.schema != writer.schema:
                table = table.cast(writer.schema)
            writer.write_table(table)
            n += frame.height
    finally:
        if writer is not None:
            writer.close()
    if writer is None:
        pq.write_table(schema.empty_table(), path, compression="lz4")
    return n


def commit_frames(ws: Any, name: str, frames: Iterator[pl.DataFrame], ledger: pl.DataFrame | pl.LazyFrame,
                  **commit: Any) -> Any:
    """A version from batches of rows (streamed through ``VersionWriter``,
    which computes the digest out of core), with the ledger and counts
    ``Workspace.commit_version`` gives. ``ledger``: in memory, or a LazyFrame
    over Parquet files (the recipe's spilled ledgers), then copied streaming.
    ``commit``: ``VersionWriter.commit``'s keywords (operation, params, parents, report)."""
    from bakeoff.workspace import LEDGER_SCHEMA

    with ws.version_writer(name) as writer:
        for frame in frames:
            writer.write_rows(frame)
        path = writer.tmp / "ledger.parquet"
        ledger.lazy().select([pl.col(c).cast(t) for c, t in LEDGER_SCHEMA.items()]).sink_parquet(path)
        counts = {"kind": dict(writer.kinds), "ledger": pq.read_metadata(path).num_rows, "quarantined": 0}
        return writer.commit(counts=counts, **commit)


def commit_ray_step(ws: Any, parent: Any, operation: str, params: dict[str, Any], source: RowSource,
                    output: RayStepOutput, name: str | None = None) -> Any:
    """``bakeoff.steps.commit_step`` for a step run on Ray over ``source`` (the
    parent's rows): the next version of the parent's dataset (or of ``name``)."""
    n_ledger = output.ledger_rows
    if parent.rows != source.n or n_ledger != output.removed.size:
        raise AssertionError(f"row balance broken: {parent.rows} in, {output.removed.size} removed, "
                             f"{n_ledger} in the ledger")
    return commit_frames(ws, name or parent.name, kept_frames(source, output), output.ledger,
                         operation=operation, params=params, parents=[parent.ref], report=output.report)


__all__ = ["RowGroup", "RowSource", "kept_frames", "write_scratch", "commit_frames", "commit_ray_step",
           "WRITE_BATCH"]
