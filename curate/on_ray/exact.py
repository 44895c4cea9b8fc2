"""Exact dedup on Ray: a hash groupby of the rows' 128-bit fingerprints.

Rows are grouped on their fingerprint of the normalised text (the one the
local exact stage compares, :func:`bakeoff.curate.dedup._row_fingerprints`);
Ray Data shuffles rows by ``fingerprint mod partitions``, so every copy of a
text lands in one group, and each group is resolved vectorised on its worker:
the member of best keep rank is the representative, the others are removed in
its favour -- the rule of the local stage, so the result is the same.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import collect


def _resolve_partition(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One shuffle partition: per fingerprint, every member but the best-ranked
    one, with the row it duplicates (the local stage's own function)."""
    from bakeoff.curate.dedup import exact_representatives

    row = batch["row"].astype(np.int64)
    fp = np.stack([batch["fp0"], batch["fp1"]], axis=1).astype(np.uint64)
    dup, rep = exact_representatives(fp, batch["rank"].astype(np.int64))
    return {"row": row[dup], "rep": row[rep]}


def exact_duplicates(ray: Any, fingerprints: Any, partitions: int) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, reps)``: each exact duplicate and the kept row it copies, from a
    dataset of active rows with columns ``row``, ``rank``, ``fp0``, ``fp1``."""
    grouped = (fingerprints
               .map_batches(_partition_key, fn_kwargs={"partitions": partitions}, batch_format="numpy",
                            batch_size=None)
               .groupby("part", num_partitions=partitions)
               .map_groups(_resolve_partition, batch_format="numpy"))
    table = collect(grouped)
    if not table.num_rows:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return table["row"].to_numpy(), table["rep"].to_numpy()


def _partition_key(batch: dict[str, np.ndarray], partitions: int) -> dict[str, np.ndarray]:
    """The shuffle key: equal fingerprints, equal partitions (a coarse key, so a
    group call resolves many fingerprints at once, vectorised)."""
    return {**batch, "part": (batch["fp0"] % np.uint64(partitions)).astype(np.int64)}


__all__ = ["exact_duplicates"]
