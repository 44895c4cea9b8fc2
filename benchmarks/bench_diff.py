"""`data diff` of two 1M-row versions (target: <= 10 s).

    .venv/bin/python benchmarks/bench_diff.py [--rows 1000000]

Builds A (rows with content ids and source lines) and B = A minus 5% dropped
(with a ledger over three stage/rule pairs), 1% rewritten (new ids), 1%
relabelled and 2% added, commits both, then times ``diff_versions`` and checks
its counts. Also times a naive Python-set diff of the ids for the ratio.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

TARGET_S = 10.0


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    args = ap.parse_args()
    n = args.rows

    import numpy as np
    import polars as pl

    from bakeoff.data_cli import diff_versions
    from bakeoff.schema import conform, with_ids
    from bakeoff.workspace import Workspace, new_ledger

    tmp = Path(tempfile.mkdtemp(prefix="bench-diff-"))
    try:
        t = time.perf_counter()
        i = pl.int_range(0, n, eager=True)
        base = pl.DataFrame({"i": i}).select(
            pl.lit("sft").alias("kind"),
            pl.concat_list([
                pl.struct(pl.lit("user").alias("role"), ("question " + pl.col("i").cast(pl.String)).alias("content")),
                pl.struct(pl.lit("assistant").alias("role"),
                          ("answer " + (pl.col("i") * 7).cast(pl.String)).alias("content")),
            ]).alias("messages"),
            pl.lit("finance-tables").alias("domain"),
            pl.lit("qa").alias("task"),
            pl.lit("/data/train.jsonl").alias("source_file"),
            (pl.col("i") + 1).cast(pl.Int64).alias("source_line"),
        )
        base = conform(base)
        a = with_ids(base)
        rng = np.random.default_rng(0)
        perm = rng.permutation(n)
        n_drop, n_rewrite, n_relabel, n_add = n // 20, n // 100, n // 100, n // 50
        drop_idx = perm[:n_drop]
        rewrite_idx = perm[n_drop:n_drop + n_rewrite]
        relabel_idx = perm[n_drop + n_rewrite:n_drop + n_rewrite + n_relabel]
        ids = a["id"]
        is_drop = pl.Series(np.isin(np.arange(n), drop_idx))
        is_rewrite = pl.Series(np.isin(np.arange(n), rewrite_idx))
        is_relabel = pl.Series(np.isin(np.arange(n), relabel_idx))
        b = a.filter(~is_drop).with_columns(
            pl.when(is_rewrite.filter(~is_drop))
            .then(pl.col("messages").list.eval(pl.struct(
                pl.element().struct.field("role"), (pl.element().struct.field("content") + " [edited]").alias("content"))))
            .otherwise(pl.col("messages")).alias("messages"),
            pl.when(is_relabel.filter(~is_drop)).then(pl.lit("invoices")).otherwise(pl.col("domain")).alias("domain"),
        )
        added = base.head(n_add).with_columns(
            pl.col("messages").list.eval(pl.struct(
                pl.element().struct.field("role"), (pl.element().struct.field("content") + " new").alias("content"))),
            pl.lit(None, pl.String).alias("source_file"), pl.lit(None, pl.Int64).alias("source_line"))
        b = with_ids(conform(pl.concat([b.drop("id"), added], how="diagonal_relaxed")))
        stages = [("filter", "refusal"), ("filter", "empty-answer"), ("dedup-minhash", "jaccard>=0.8")]
        ledger = new_ledger(row_id=ids.gather(drop_idx),
                            stage=[stages[k % 3][0] for k in range(n_drop)],
                            rule=[stages[k % 3][1] for k in range(n_drop)],
                            score=np.ones(n_drop))
        ws = Workspace(tmp / "ws")
        va = ws.commit_version("big", a, operation="ingest")
        vb = ws.commit_version("big", b, operation="curate", parents=[va.ref], ledger=ledger)
        print(f"built and committed two versions ({va.rows:,} and {vb.rows:,} rows) in "
              f"{time.perf_counter() - t:.1f}s", file=sys.stderr)

        load0 = os.getloadavg()[0]
        w0, c0 = time.perf_counter(), cpu()
        d = diff_versions(ws, va.ref, vb.ref)
        wall, cpu_s = time.perf_counter() - w0, cpu() - c0
        assert d["removed"] == n_drop and d["added"] == n_add, d
        assert d["changed_content"] == n_rewrite and d["changed_labels"] == n_relabel, d
        assert sum(x["rows"] for x in d["removed_by"]) == n_drop

        # Naive baseline: Python sets of ids (added/removed only, no changed rows or reasons).
        t = time.perf_counter()
        sa = set(ws.load(va, columns=["id"])["id"].to_list())
        sb = set(ws.load(vb, columns=["id"])["id"].to_list())
        _ = (len(sb - sa), len(sa - sb))
        naive = time.perf_counter() - t

        print(f"\n== data diff of {va.rows:,} vs {vb.rows:,} rows ==")
        print(f"wall {wall:6.2f} s   target <= {TARGET_S:.0f} s   ratio (target / time) {TARGET_S / wall:5.1f}x")
        print(f"cpu  {cpu_s:6.2f} s   load average {load0:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        print(f"naive Python-set id diff (no changed rows, no reasons): {naive:6.2f} s")
        print(f"added {d['added']:,}  removed {d['removed']:,}  changed content {d['changed_content']:,}  "
              f"changed labels {d['changed_labels']:,}")
        for x in d["removed_by"]:
            print(f"  removed by {x['stage']:14s} {x['rule']:14s} {x['rows']:8,}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
