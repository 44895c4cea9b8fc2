"""Filter-suite throughput: rows/s of ``bakeoff.curate.filters.filter_rows``.

Rows: the demo corpus (finance-table QA with its planted noise, held-out finance,
invoices, contracts) ingested into a workspace, then tiled to --rows rows with a
per-copy marker so texts are not byte-identical. Prints the whole suite's rows/s
(detect only, and detect + actions + ledger + report) against the 200k rows/s
target, then each filter alone.

    .venv/bin/python benchmarks/bench_filters.py --rows 200000
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import polars as pl

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def build_rows(n: int) -> pl.DataFrame:
    from bakeoff.demo_data import make_demo_workspace
    from bakeoff.workspace import Workspace

    ws = Workspace(tempfile.mkdtemp(prefix="bench-filters-"))
    res = make_demo_workspace(ws, seed=0, scale=1.0)
    base = pl.concat([ws.load(res["datasets"]["fin-train"]), ws.load(res["datasets"]["pool"])],
                     how="diagonal_relaxed")
    reps = -(-n // base.height)
    tiled = pl.concat([base] * reps).head(n)
    return tiled.with_columns(pl.int_range(pl.len()).cast(pl.String).alias("id"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=2, help="best of N runs")
    args = ap.parse_args()

    from bakeoff.curate import filters as F

    t = time.perf_counter()
    df = build_rows(args.rows)
    chars = df.select(F.prompt_text().str.len_chars().sum() + F.response_text().str.len_chars().sum()).item()
    print(f"rows: {df.height:,} ({chars / df.height:,.0f} chars/row), built in {time.perf_counter() - t:.1f}s; "
          f"{os.cpu_count()} CPUs, polars {pl.__version__}, {pl.thread_pool_size()} threads")
    F.langid_identifier()  # one-off model load, not per run

    def best(fn) -> float:
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)

    target = 200_000
    d = best(lambda: F.detect(df))
    full = best(lambda: F.filter_rows(df))
    out = F.filter_rows(df)
    rep = out.report["filter"]
    print(f"\n{'':28}{'seconds':>9}{'rows/s':>12}{'vs 200k/s':>11}")
    print(f"{'suite: detect':28}{d:9.2f}{df.height / d:12,.0f}{df.height / d / target:10.2f}x")
    print(f"{'suite: detect+act+report':28}{full:9.2f}{df.height / full:12,.0f}{df.height / full / target:10.2f}x")
    print(f"  kept {rep['rows_out']:,}, dropped {rep['dropped']:,}, rewritten {rep['rewritten']:,}")

    print(f"\n{'filter (alone)':28}{'seconds':>9}{'rows/s':>12}{'hits':>10}")
    for name in F.FILTERS:
        cfg = F.FilterSuiteConfig.from_dict({"only": [name]})
        s = best(lambda: F.detect(df, cfg))
        hits = rep["filters"][name]["hits"]
        print(f"{name:28}{s:9.2f}{df.height / s:12,.0f}{hits:10,}")


if __name__ == "__main__":
    main()
