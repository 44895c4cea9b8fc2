"""The coverage report on Ray: a partial report per block on the workers,
merged on the driver.

The local report is the report of one partial of every row
(:func:`bakeoff.curate.coverage.coverage_partial`, ``report_from_partial``).
Here each block of the step's input is read by a worker and handed to an
actor pool (one model load per actor, one actor per GPU when the cluster has
them, else one per CPU), which embeds the block's rows (for the diversity
measure), assigns them (``assign_rows``; the objectives' prototype vectors
are embedded once per actor) and makes the block's partial. The driver
receives only the partials -- counts, per-cell vector sums, four small
numbers per row (cell, prompt and response length: the exact medians and
quantiles need them) and each block's first off-objective rows per domain
-- and merges them (``merge_partials``): never a text or a vector of all
rows.

So the report is the local one: the counts, gaps, lengths and examples
exactly; the diversity from the same sums added up per block, which may
differ from the local figure in the last bits (it is reported rounded to 4
decimals).

As in semantic dedup on Ray, the workspace's embedding cache is not used
(workers do not write the workspace). With the ``hashing`` embedder the
vectors are bit-identical to the local ones; a neural model batches each
block's texts apart, which may change a vector's last bits (a row exactly at
the embedding floor could then be assigned differently).
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa

from bakeoff.curate.coverage import (COVERAGE_COLUMNS, CoveragePartial, Objectives, coverage_partial,
                                     load_objectives, merge_partials, report_from_partial)
from bakeoff.executor import Executor, ray_session

from . import ROWS_PER_BLOCK, maybe_die, parallelism, use_task_shuffle
from .rows import RowSource


class _PartialReport:
    """An actor of the pool: the embedding model (loaded once) and the
    objectives' prototype vectors (embedded once); a block in, its partial
    report out (pickled, in a one-row table)."""

    def __init__(self, objectives: Objectives, model: str, diversity: bool, examples: int) -> None:
        from bakeoff.curate.embeddings import get_embedder

        self.objectives, self.model, self.diversity, self.examples = objectives, model, diversity, examples
        self.prototypes: dict[str, Any] = {}
        if diversity:  # every row is embedded: load the model now, not in the first block's time
            get_embedder(model)

    def __call__(self, block: pa.Table) -> pa.Table:
        maybe_die()
        if not block.num_rows:
            return pa.table({"rows": pa.array([], pa.int64()), "partial": pa.array([], pa.large_binary())})
        part = coverage_partial(pl.from_arrow(block), self.objectives, None, model=self.model,
                                diversity=self.diversity, examples=self.examples, prototypes=self.prototypes,
                                show_progress=False)
        return pa.table({"rows": pa.array([part.rows], pa.int64()),
                         "partial": pa.array([pickle.dumps(part, protocol=5)], pa.large_binary())})


def _partials(ray: Any, ds: Any, n: int) -> tuple[list[CoveragePartial], int]:
    """The partials of ``ds``'s blocks as they come, with a bar of the rows
    done; and the bytes the driver received."""
    from bakeoff.console import progress

    parts: list[CoveragePartial] = []
    received = 0
    with progress() as bar:
        task = bar.add_task("coverage on Ray", total=n)
        for bundle in ds.iter_internal_ref_bundles():
            for table in ray.get(list(bundle.block_refs)):
                if not table.num_rows:  # (an empty block may come without columns)
                    continue
                for rows, blob in zip(table.column("rows").to_pylist(), table.column("partial").to_pylist()):
                    received += len(blob)
                    parts.append(pickle.loads(blob))
                    bar.advance(task, rows)
    return parts, received


def coverage_on_ray(source: RowSource, objectives: Objectives | dict | str | Path, executor: Executor, *,
                    model: str | None = None, diversity: bool = True, examples: int = 5,
                    dataset: str | None = None, rows_per_block: int = ROWS_PER_BLOCK) -> dict[str, Any]:
    """The coverage report of the rows of ``source`` (see
    :func:`bakeoff.curate.coverage.coverage_report`, whose arguments these
    are), computed per block on Ray. The report is the local one, plus
    ``ray``: blocks, actors and the bytes the driver received."""
    from bakeoff.curate.embeddings import resolve_model_name

    obj = load_objectives(objectives)
    # resolved here: a worker's environment is not the driver's
    model_name = resolve_model_name(model or obj.model)
    columns = [c for c in COVERAGE_COLUMNS if c in source.columns]
    with ray_session(executor) as ray:
        use_task_shuffle(ray)  # (for its quiet progress logs: there is no shuffle here)
        gpus = int(ray.cluster_resources().get("GPU", 0))
        blocks = sum(-(-g.rows // rows_per_block) for g in source.groups)
        actors = max(1, min(gpus or parallelism(ray), blocks))  # no actor (and model load) without a block
        ds = source.dataset(ray, columns=columns, per=rows_per_block).map_batches(
            _PartialReport, fn_constructor_args=(obj, model_name, diversity, examples),
            compute=ray.data.ActorPoolStrategy(size=actors), batch_size=None, batch_format="pyarrow",
            # half a CPU per actor leaves room for the tasks that read the blocks (as semantic dedup)
            num_gpus=1 if gpus else None, num_cpus=None if gpus else 0.5)
        parts, received = _partials(ray, ds, source.n)
    if not parts:  # no rows: the partial of none, made here (nothing to embed)
        empty = pl.from_arrow(source.schema.empty_table().select(columns))
        parts = [coverage_partial(empty, obj, None, model=model_name, diversity=diversity, examples=examples)]
    report = report_from_partial(merge_partials(parts), obj, model=model_name, dataset=dataset)
    # how it ran (not in the local report)
    report["ray"] = {"blocks": len(parts), "actors": actors, "driver_bytes_received": received}
    return report


__all__ = ["coverage_on_ray"]
