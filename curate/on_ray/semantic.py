"""Semantic dedup on Ray: embeddings by an actor pool, the search on the driver.

Each actor loads the embedding model once (``get_embedder`` caches it per
process) and embeds blocks of distinct segment texts with the local function
(:func:`bakeoff.curate.embeddings.embed_long_texts`: long texts in windows,
never truncated); with GPUs in the cluster, one actor per GPU, else one per
CPU. The vectors come back to the driver, which runs the local greedy search
(:func:`bakeoff.curate.semantic.greedy_semantic`, faiss) unchanged.

Why the search stays on the driver: the greedy is defined in keep order (a row
is removed only by a *kept* row), so a partitioned search must still meet at
one place to decide; its input is 4 bytes x dim per segment (384 dims: 1.5 GB
per million segments), which fits a driver up to a few million rows. Past
that, a partitioned search (vectors bucketed by IVF cell, each cell searched
on a worker, decisions merged in keep order) is the next step; not built yet.

On Ray the workspace's embedding cache is not used: workers must not write
the workspace, and a cache hit made by a truncating call elsewhere could
differ from the windowed vector. With the ``hashing`` embedder the vectors are
bit-identical to the local ones; a neural model on a GPU may differ from the
CPU in the last bits (a pair exactly at the threshold could then flip).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from bakeoff.executor import Executor, ray_session

from . import collect, dataset_from_table, maybe_die, parallelism, use_task_shuffle


class _Embed:
    """An actor of the pool: the model, loaded once."""

    def __init__(self, model: str, batch_size: int | None) -> None:
        from bakeoff.curate.embeddings import get_embedder, model_window

        self.model, self.batch_size = model, batch_size
        get_embedder(model, batch_size)
        model_window(model)

    def __call__(self, block: pa.Table) -> pa.Table:
        from bakeoff.curate.embeddings import embed_long_texts

        maybe_die()
        texts = block.column("text").to_pylist()
        vecs, stats = embed_long_texts(texts, ws=None, model=self.model, batch_size=self.batch_size,
                                       show_progress=False)
        vecs = np.ascontiguousarray(vecs, np.float32)
        flat = pa.array(vecs.reshape(-1))
        return pa.table({"i": block.column("i"), "vec": pa.FixedSizeListArray.from_arrays(flat, vecs.shape[1]),
                         "chunks": pa.array(np.full(len(texts), stats.chunks, np.int64))})


def embed_on_ray(texts: pl.Series, model: str, batch_size: int | None, executor: Executor
                 ) -> tuple[np.ndarray, dict[str, Any]]:
    """Vectors (float32, one row per text, unit length) of ``texts``, each
    distinct text embedded once by the actor pool; and counts for the report."""
    texts = texts.cast(pl.String).fill_null("")
    frame = pl.DataFrame({"text": texts})
    distinct = frame.unique(subset="text", keep="first", maintain_order=True).with_row_index("i")
    with ray_session(executor) as ray:
        use_task_shuffle(ray)
        gpus = int(ray.cluster_resources().get("GPU", 0))
        actors = gpus or parallelism(ray)
        table = distinct.with_columns(pl.col("i").cast(pl.Int64)).to_arrow()
        ds = dataset_from_table(ray, table, rows_per_block=4096).map_batches(
            _Embed, fn_constructor_kwargs={"model": model, "batch_size": batch_size},
            compute=ray.data.ActorPoolStrategy(size=actors), batch_size=None, batch_format="pyarrow",
            num_gpus=1 if gpus else None, num_cpus=None if gpus else 1)
        out = collect(ds, sort_by="i")
    dim = out.column("vec").type.list_size
    vecs = out.column("vec").combine_chunks().values.to_numpy().reshape(-1, dim)
    index = frame.join(distinct, on="text", how="left", maintain_order="left")["i"].to_numpy()
    stats = {"requested": texts.len(), "unique": distinct.height, "computed": distinct.height, "cached": 0,
             "actors": actors, "device": "gpu" if gpus else "cpu"}
    return np.ascontiguousarray(vecs[index], np.float32), stats


__all__ = ["embed_on_ray"]
