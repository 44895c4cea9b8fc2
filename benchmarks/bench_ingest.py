"""Ingest throughput: JSONL in OpenAI messages format, end to end (read, validate,
convert, content ids, atomic commit), against the target of 100k rows/s.

    .venv/bin/python benchmarks/bench_ingest.py [--rows 1000000] [--bad 0.001] [--gzip] [--no-phases]
    .venv/bin/python benchmarks/bench_ingest.py --repeat 5 --against ../old/.venv/bin/python --no-phases
    .venv/bin/python benchmarks/bench_ingest.py --gz-mb 300

Prints wall time, process CPU time and the machine's load (the shared 2-core
machine is often busy: rows per CPU-second is the figure that does not depend on
neighbours), a per-phase breakdown, and a per-row Python baseline (json.loads +
the same checks in a loop) for the ratio.

The ingest and the polars baseline each run in a fresh child process, one after
the other in the same run, so each prints its own peak RSS (ingest streams the
file in batches: its peak is bounded by the batch, polars holds the whole file).
``--gzip`` ingests a ``.jsonl.gz`` of the same rows. ``--gz-mb 300`` builds a
300 MB ``.jsonl.gz`` (these rows compress ~11x: ~8M rows, ~3.2 GB of JSON) and
prints the ingest's peak RSS alone (the bounded-memory check; no baseline).

``--repeat N`` runs N rounds, each one ingest and one polars read in turn, and
prints medians and every round's ratio: on a shared machine a neighbour slows
one run, and the ratio within a round is what survives. ``--against PYTHON``
adds, to every round, the ingest of the same file by another install of bakeoff
(an older checkout's virtual environment, say): two versions compared side by
side in one run, rather than against a figure taken on another day.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET = 100_000  # rows/s


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def generate(path: Path, n: int, bad_fraction: float, seed: int = 0, clean: Path | None = None,
             gz_mb: float | None = None) -> tuple[int, int]:
    """Realistic short chat rows (system/user/assistant, ~400 bytes) with a share
    of bad lines mixed in; returns (rows written, bad lines among them). Built with polars
    (vectorized) so a million rows take seconds, not minutes. ``clean``: also
    write the good lines alone there (polars' reader stops at the first bad line).
    ``gz_mb``: write a gzip (level 6) of ``n`` rows or, if it comes first, of
    ``gz_mb`` MB, whichever comes first."""
    import numpy as np
    import polars as pl

    rng = np.random.default_rng(seed)
    words = np.array("revenue margin total year quarter cash debt asset table row column growth net".split())
    # pools of random sentences, drawn per row (distinct rows come from the row number)
    pools = {(lo, hi): np.array([" ".join(rng.choice(words, rng.integers(lo, hi))) for _ in range(5000)])
             for lo, hi in ((8, 31), (3, 26))}
    bad_text = np.array(['{"messages": [', '{"messages": "x"}',
                         json.dumps({"messages": [{"role": "user", "content": "q"}]})])
    n_bad = written = 0
    chunk = 500_000  # rows per write: a 6M-row file does not need 6M rows in memory
    opener = (lambda: gzip.open(path, "wt", compresslevel=6)) if gz_mb else (lambda: open(path, "w"))
    with opener() as out, open(clean, "w") if clean is not None else open(os.devnull, "w") as out_clean:
        for start in range(0, n, chunk):
            if gz_mb and out.buffer.fileobj.tell() >= gz_mb * 1e6:  # compressed bytes so far
                break
            m = min(chunk, n - start)

            def sentences(lo: int, hi: int) -> pl.Series:
                return pl.Series(pools[(lo, hi)][rng.integers(0, 5000, m)])

            i = pl.int_range(start, start + m, eager=True).cast(pl.String)
            df = pl.DataFrame({"q": "Q" + i + ": " + sentences(8, 31) + "?", "a": sentences(3, 26)})
            df = df.select(
                pl.concat_list([
                    pl.struct(role=pl.lit("system"), content=pl.lit("Answer from the table.")),
                    pl.struct(role=pl.lit("user"), content=pl.col("q")),
                    pl.struct(role=pl.lit("assistant"), content=pl.col("a")),
                ]).alias("messages"),
                pl.struct(domain=pl.lit("finance-tables"), task=pl.lit("qa")).alias("meta"),
            )
            lines = df.select(pl.struct(pl.all()).struct.json_encode().alias("l"))["l"]
            bad = rng.random(m) < bad_fraction
            n_bad += int(bad.sum())
            if clean is not None:
                out_clean.write("\n".join(lines.filter(~pl.Series(bad)).to_list()) + "\n")
            lines = pl.select(pl.when(pl.Series(bad)).then(pl.Series(bad_text[rng.integers(0, 3, m)]))
                              .otherwise(lines).alias("l"))["l"]
            out.write("\n".join(lines.to_list()) + "\n")
            written += m
    return written, n_bad


INGEST_CHILD = """
import json, resource, sys, time
from bakeoff.curate.ingest import ingest
from bakeoff.workspace import Workspace
ws = Workspace(sys.argv[1])
r0 = resource.getrusage(resource.RUSAGE_SELF)
t = time.perf_counter()
res = ingest(ws, [sys.argv[2]], "bench")
r1 = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"wall": time.perf_counter() - t, "cpu": r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime,
                  "rows_in": res.rows_in, "accepted": res.accepted, "quarantined": res.quarantined,
                  "peak_rss_mb": peak_rss_mb()}))
"""

POLARS_CHILD = """
import json, resource, sys, time
import polars as pl
r0 = resource.getrusage(resource.RUSAGE_SELF)
t = time.perf_counter()
df = pl.read_ndjson(sys.argv[1])
r1 = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"wall": time.perf_counter() - t, "cpu": r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime,
                  "rows": df.height, "peak_rss_mb": peak_rss_mb()}))
"""

# The child's own peak: VmHWM starts afresh at exec, while ru_maxrss carries over
# the RSS of the parent at fork (here: the generator's gigabytes).
PEAK = """
def peak_rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
"""


def child(code: str, *args: str, python: str = sys.executable) -> dict:
    out = subprocess.run([python, "-c", PEAK + code, *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


OURS, POLARS_LABEL = "bakeoff data ingest", "polars.read_ndjson (good lines)"


def print_side_by_side(runs: dict[str, list[dict]]) -> None:
    """Medians of every contender's rounds, then each ingest's speed (rows/s)
    against polars and this ingest's against the other version, within each
    round (a neighbour's load slows both sides of a round alike), and their
    median."""
    def rate(r: dict, k: str = "wall") -> float:
        return r.get("rows_in", r.get("rows", 0)) / r[k]

    n = len(runs[OURS])
    print(f"\n{'median of ' + str(n) + ' round(s)':40s} {'wall s':>8s} {'cpu s':>8s} {'rows/s (wall)':>14s} "
          f"{'rows/CPU-s':>12s} {'peak RSS MB':>12s}")
    for label, rs in runs.items():
        if rs:
            print(f"{label:40s} {statistics.median(r['wall'] for r in rs):8.2f} "
                  f"{statistics.median(r['cpu'] for r in rs):8.2f} {statistics.median(rate(r) for r in rs):14,.0f} "
                  f"{statistics.median(rate(r, 'cpu') for r in rs):12,.0f} "
                  f"{statistics.median(r['peak_rss_mb'] for r in rs):12,.0f}")

    def ratio_line(a: str, b: str) -> None:
        wall = [rate(x) / rate(y) for x, y in zip(runs[a], runs[b])]  # >1: a is faster
        cpu_ratio = [rate(x, "cpu") / rate(y, "cpu") for x, y in zip(runs[a], runs[b])]
        peak = statistics.median(r["peak_rss_mb"] for r in runs[a]) / statistics.median(r["peak_rss_mb"] for r in runs[b])
        print(f"ratio {a} / {b}: rows/s {statistics.median(wall):.2f}x "
              f"(rounds: {', '.join(f'{r:.2f}' for r in wall)}), rows/CPU-s {statistics.median(cpu_ratio):.2f}x, "
              f"peak RSS {peak:.2f}x")

    ingesters = [label for label in runs if label != POLARS_LABEL]
    for label in ingesters:
        if runs[POLARS_LABEL]:
            ratio_line(label, POLARS_LABEL)
    for label in ingesters[1:]:
        ratio_line(OURS, label)
    print()


def python_baseline(path: Path, limit: int) -> tuple[float, float]:
    """(rows/s, rows per CPU-second) of a per-row Python loop doing the same parse
    + checks (no ids, no write)."""
    t, c = time.perf_counter(), cpu()
    n = 0
    with open(path, encoding="utf-8", errors="surrogateescape") as fh:
        for line in fh:
            if n >= limit:
                break
            n += 1
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            m = rec.get("messages") if isinstance(rec, dict) else None
            if not isinstance(m, list) or not m:
                continue
            ok = all(isinstance(t, dict) and isinstance(t.get("role"), str) and isinstance(t.get("content"), str)
                     and t["content"].strip() for t in m)
            roles = [t["role"] for t in m] if ok else []
            ok = ok and roles[-1] == "assistant" and all(a != b for a, b in zip(roles, roles[1:]))
            _ = [{"role": t["role"], "content": t["content"]} for t in m] if ok else None
    return n / (time.perf_counter() - t), n / (cpu() - c)


def gz_run(gz_mb: float, bad: float) -> None:
    """Bounded memory on a big gzip: generate it (streamed, never whole in memory),
    ingest it in a fresh child, print rows, time and the child's peak RSS."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-ingest-gz-"))
    try:
        src = tmp / "messages.jsonl.gz"
        t = time.perf_counter()
        rows, n_bad = generate(src, 10**10, bad, gz_mb=gz_mb)
        print(f"generated {rows:,} rows ({n_bad:,} bad) as {src.stat().st_size / 1e6:.0f} MB of gzip "
              f"in {time.perf_counter() - t:.0f} s", file=sys.stderr)
        ing = child(INGEST_CHILD, str(tmp / "ws"), str(src))
        assert ing["rows_in"] == rows == ing["accepted"] + ing["quarantined"]
        assert ing["quarantined"] == n_bad, (ing["quarantined"], n_bad)
        print(f"ingest of {src.stat().st_size / 1e6:,.0f} MB .jsonl.gz ({rows:,} rows): {ing['wall']:.0f} s wall, "
              f"{ing['cpu']:.0f} s CPU, {rows / ing['wall']:,.0f} rows/s, peak RSS {ing['peak_rss_mb']:,.0f} MB")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--bad", type=float, default=0.001, help="fraction of bad lines")
    ap.add_argument("--gzip", action="store_true", help="ingest a .jsonl.gz of the rows")
    ap.add_argument("--no-phases", action="store_true", help="skip the per-phase breakdown")
    ap.add_argument("--no-baseline", action="store_true", help="skip the polars baseline (ingest only)")
    ap.add_argument("--repeat", type=int, default=1, help="rounds of (ingest, polars), alternating; medians")
    ap.add_argument("--against", metavar="PYTHON", default=None,
                    help="also ingest with this interpreter's bakeoff (another version), in every round")
    ap.add_argument("--gz-mb", type=float, default=None,
                    help="ingest only a .jsonl.gz of this many MB (rows until it is that big; "
                         "300 MB is ~8M rows, ~3.2 GB decompressed) and print its peak RSS")
    args = ap.parse_args()
    if args.gz_mb:
        return gz_run(args.gz_mb, args.bad)

    from bakeoff.curate import formats, readers
    from bakeoff.schema import conform, with_ids, version_digest
    from bakeoff.workspace import _write_rows_parquet

    tmp = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    try:
        src = tmp / "messages.jsonl"
        t = time.perf_counter()
        clean = tmp / "clean.jsonl"
        _, n_bad = generate(src, args.rows, args.bad, clean=None if args.no_baseline else clean)
        print(f"generated {args.rows:,} rows ({n_bad:,} bad), {src.stat().st_size / 1e6:.0f} MB "
              f"in {time.perf_counter() - t:.1f}s", file=sys.stderr)

        if args.gzip:
            with open(src, "rb") as fi, gzip.open(tmp / "messages.jsonl.gz", "wb", compresslevel=6) as fo:
                shutil.copyfileobj(fi, fo, 16 << 20)
            src.unlink()
            src = tmp / "messages.jsonl.gz"
            print(f"gzipped: {src.stat().st_size / 1e6:.0f} MB", file=sys.stderr)

        load0 = os.getloadavg()[0]
        ingesters = {OURS: sys.executable}
        if args.against:
            ingesters[f"ingest by {args.against}"] = args.against
        runs: dict[str, list[dict]] = {label: [] for label in [*ingesters, POLARS_LABEL]}
        for _ in range(args.repeat):
            for label, python in ingesters.items():
                shutil.rmtree(tmp / "ws", ignore_errors=True)
                ing = child(INGEST_CHILD, str(tmp / "ws"), str(src), python=python)
                assert ing["rows_in"] == args.rows == ing["accepted"] + ing["quarantined"], (label, ing)
                runs[label].append(ing)
            if not args.no_baseline:
                runs[POLARS_LABEL].append(child(POLARS_CHILD, str(clean)))
        load1 = os.getloadavg()[0]
        ing = runs[OURS][0]
        assert ing["quarantined"] == n_bad, (ing["quarantined"], n_bad)
        wall, cpu_s = (statistics.median(r[k] for r in runs[OURS]) for k in ("wall", "cpu"))
        if args.no_baseline and not args.against:
            print(f"ingest of {args.rows:,} rows ({src.name}, {src.stat().st_size / 1e6:.0f} MB): "
                  f"{wall:.1f} s wall, {cpu_s:.1f} s CPU, {args.rows / wall:,.0f} rows/s, "
                  f"peak RSS {ing['peak_rss_mb']:,.0f} MB")
            return
        rate = args.rows / wall
        print(f"\n== ingest of {args.rows:,} JSONL rows{' (gzip)' if args.gzip else ''} "
              f"(messages format, {n_bad:,} quarantined) ==")
        print(f"wall {wall:8.2f} s   -> {rate:12,.0f} rows/s   target {TARGET:,} rows/s   ratio {rate / TARGET:5.2f}x")
        print(f"cpu  {cpu_s:8.2f} s   -> {args.rows / cpu_s:12,.0f} rows per CPU-second "
              f"(2 cores: {2 * args.rows / cpu_s:,.0f} rows/s if uncontended)")
        print(f"load average during the run: {load0:.1f} -> {load1:.1f} on {os.cpu_count()} cores")
        print_side_by_side(runs)
        if args.no_phases:
            return

        # Per-phase breakdown (same code the ingest runs, timed piece by piece).
        phases: dict[str, tuple[float, float]] = {}
        clock = [time.perf_counter(), cpu()]

        def lap(name: str) -> None:
            w, c = time.perf_counter(), cpu()
            phases[name] = (w - clock[0], c - clock[1])
            clock[:] = [w, c]

        recs = readers.read_records(src)
        lap("read + split + JSON validity")
        con = readers.connect()  # as ingest has it
        con.register("recs", recs.table)
        n, stats = formats.key_stats(con)
        plan = formats.plan_for(con, formats.detect(str(src), {}, n, stats), {}, n, stats)
        lap("detect (key statistics)")
        good, _ = formats.convert(con, plan, recs.table)
        lap("validate + convert (DuckDB)")
        con.close()
        rows = with_ids(conform(good))
        lap("content ids (schema.with_ids)")
        version_digest(rows)
        lap("version digest (schema.version_digest)")
        _write_rows_parquet(rows, tmp / "x.parquet")
        lap("write Parquet (workspace)")

        base, base_cpu = python_baseline(src, min(args.rows, 200_000)) if not args.gzip else (float("nan"),) * 2
        parse_cpu = sum(c for k, (_, c) in phases.items() if k.startswith(("read", "detect", "validate")))
        print(f"per-row Python baseline, parse + checks only: {base:10,.0f} rows/s, {base_cpu:10,.0f} rows/CPU-s")
        print(f"bakeoff read + detect + validate + convert:    {args.rows / parse_cpu:10,.0f} rows/CPU-s "
              f"= {args.rows / parse_cpu / base_cpu:4.1f}x the baseline per CPU-second")
        print("\nphase breakdown (run separately):           wall s     cpu s   cpu share")
        total = sum(c for _, c in phases.values())
        for k, (w, c) in phases.items():
            print(f"  {k:42s} {w:7.2f}   {c:7.2f}   {100 * c / total:5.1f}%")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
