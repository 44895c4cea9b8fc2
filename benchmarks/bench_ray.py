"""The default recipe on Ray vs in one process, side by side, on one machine.

    .venv/bin/python benchmarks/bench_ray.py --rows 1000000            # local vs ray, one run
    .venv/bin/python benchmarks/bench_ray.py --rows 10000000 --executors ray --steps filter,dedup

Rows: the demo corpus (finance chat rows and pool items, with planted noise
and near-duplicates) tiled as ``bench_filters.py`` tiles it (copy k has k's
digits appended to the first number of every turn: copies share words but not
numbers, and the shape check keeps them apart, as it keeps apart "revenue in
2018" and "revenue in 2019"), for half of ``--rows``, then all of it once
more: half the rows are exact copies. The version is written once; each
executor then runs the recipe (``curate/default_recipe.yaml``, ``--steps``
keeps some of its steps) in its own subprocess, which also writes the result
as a version -- the digests must be equal.

Embedder: ``hashing`` for the semantic and coverage steps (set here): the
offline all-MiniLM-L6-v2 embeds ~100 texts/s on this CPU, i.e. hours for a
million rows, on either executor.

Per executor: wall time, CPU seconds (the driver's; for Ray also the Ray
processes', sampled), the driver's peak RSS (ru_maxrss of the
subprocess), and for Ray the peak summed RSS of the Ray processes (raylet,
GCS, workers; psutil, sampled every 0.5 s; shared object-store pages count in
each process that maps them, so the sum over-counts) and the largest single
worker. The machine is shared: the load average is printed before and after,
and the ratio (ray / local) is what to compare.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("BAKEOFF_EMBEDDING_MODEL", "hashing")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def write_rows(ws, n: int, chunk: int = 100_000):
    """Write the benchmark version: the filter benchmark's rows (the demo
    corpus tiled, numbers bumped per copy, ``bench_filters.build_rows``) for
    half of ``n``, then each of them once more (half the rows are exact copies
    of another). Written a chunk of tiles at a time (``VersionWriter``), so
    building 10M rows needs the memory of a chunk, not of the rows; ids are
    the row numbers."""
    import polars as pl

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_filters import demo_base

    base = demo_base()
    half = -(-n // 2)
    tiles = max(1, chunk // base.height)
    with ws.version_writer("bench") as writer:
        row = 0
        for start in (0, half):  # the first half, then its copies
            end = min(start + half, n)
            for t0 in range(0, -(-(end - start) // base.height), tiles):
                lo = t0 * base.height
                rows = min(tiles * base.height, end - start - lo)
                part = pl.concat([_tile(base, k) for k in range(t0, t0 + -(-rows // base.height))]).head(rows)
                writer.write_rows(part.with_columns(pl.int_range(row, row + part.height).cast(pl.String).alias("id")))
                row += part.height
        return writer.commit(operation="bench", params={"rows": n})


def _tile(base, k: int):
    """Copy ``k`` of the corpus, perturbed as ``bench_filters.build_rows`` does."""
    import polars as pl

    if not k:
        return base

    def bump(col: str):
        return pl.col(col).list.eval(pl.struct(
            pl.element().struct.field("role"),
            pl.element().struct.field("content").str.replace(r"(\d+)", "${1}" + str(k)).alias("content")))
    return base.with_columns(*(bump(c) for c in ("messages", "chosen", "rejected")))


def _ray_memory(stop: threading.Event, peak: dict[str, float]) -> None:
    """Peak summed RSS of the Ray processes, of the largest worker, and the
    CPU seconds the Ray processes used (per process, its last sample)."""
    import psutil

    me = psutil.Process()
    cpu: dict[int, float] = {}
    while not stop.wait(0.5):
        total = largest = 0
        for p in me.children(recursive=True):  # the Ray instance this run started, not others'
            try:
                cmd = " ".join(p.cmdline())
                rss = p.memory_info().rss
                times = p.cpu_times()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            cpu[p.pid] = times.user + times.system
            total += rss
            if "default_worker" in cmd or p.name().startswith("ray::"):
                largest = max(largest, rss)
        peak["ray_total_gb"] = max(peak.get("ray_total_gb", 0), total / 2**30)
        peak["worker_max_gb"] = max(peak.get("worker_max_gb", 0), largest / 2**30)
        peak["ray_cpu_s"] = sum(cpu.values())


def run_one(workspace: str, ref: str, executor: str, steps: list[str], out: str) -> None:
    """One executor, in this (sub)process: run the recipe, write the version."""
    import yaml

    from bakeoff.curate.recipe import default_recipe_path, parse_recipe, run_recipe
    from bakeoff.executor import resolve_executor
    from bakeoff.workspace import Workspace

    path = default_recipe_path()
    spec = yaml.safe_load(path.read_text())
    spec["steps"] = [s for s in spec["steps"] if (next(iter(s)) if isinstance(s, dict) else s) in steps]
    recipe = parse_recipe(spec, base_dir=path.parent, source=str(path))
    ws = Workspace(workspace)
    peak: dict[str, float] = {}
    stop = threading.Event()
    watcher = threading.Thread(target=_ray_memory, args=(stop, peak), daemon=True)
    if executor == "ray":
        watcher.start()
    t0, c0 = time.perf_counter(), time.process_time()
    res = run_recipe(ws, ref, recipe, name=f"bench-{executor}", executor=resolve_executor(executor))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    stop.set()
    Path(out).write_text(json.dumps({
        "executor": executor, "wall_s": round(wall, 1), "driver_cpu_s": round(cpu, 1),
        "driver_peak_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "digest": res.version.digest, "rows_out": res.version.rows,
        "steps": {s["step"]: s["seconds"] for s in res.steps}, **{k: round(v, 2) for k, v in peak.items()}}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--executors", default="local,ray")
    ap.add_argument("--steps", default="filter,dedup,semantic,coverage",
                    help="which steps of the default recipe to run")
    ap.add_argument("--workspace", default=None, help="keep the workspace here (default: a temporary folder)")
    ap.add_argument("--worker", nargs=4, metavar=("WS", "REF", "EXECUTOR", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    steps = args.steps.split(",")
    if args.worker:
        run_one(*args.worker[:3], steps, args.worker[3])
        return

    import polars as pl

    from bakeoff.workspace import Workspace

    root = Path(args.workspace or tempfile.mkdtemp(prefix="bench-ray-ws-"))
    t0 = time.perf_counter()
    ws = Workspace(root)
    version = write_rows(ws, args.rows)
    ref = version.ref
    chars = ws.scan(ref).head(100_000).select(pl.col("messages").list.eval(
        pl.element().struct.field("content").str.len_chars()).list.sum().mean()).collect().item()
    print(f"{args.rows:,} rows ({chars:,.0f} chars/row) in {ref} ({time.perf_counter() - t0:.0f} s); "
          f"steps {steps}; embedder {os.environ['BAKEOFF_EMBEDDING_MODEL']}; {os.cpu_count()} cores", flush=True)
    results = {}
    for ex in args.executors.split(","):
        load = os.getloadavg()[0]
        out = root / f"result-{ex}.json"
        subprocess.run([sys.executable, __file__, "--steps", args.steps, "--worker", str(root), ref, ex, str(out)],
                       check=True)
        results[ex] = {**json.loads(out.read_text()), "load_before": round(load, 1),
                       "load_after": round(os.getloadavg()[0], 1)}
        print(json.dumps(results[ex]), flush=True)
    if "local" in results and "ray" in results:
        lo, ra = results["local"], results["ray"]
        ray_cpu = ra["driver_cpu_s"] + ra.get("ray_cpu_s", 0)
        print(f"\nray / local CPU seconds: {ray_cpu / lo['driver_cpu_s']:.2f}x ({ray_cpu:.0f} s driver + Ray "
              f"processes vs {lo['driver_cpu_s']:.0f} s); what the shared machine's load does not distort")
        print(f"ray / local wall time: {ra['wall_s'] / lo['wall_s']:.2f}x (goal <= 1.5x); "
              f"same digest: {ra['digest'] == lo['digest']}; driver peak {lo['driver_peak_gb']} GB local, "
              f"{ra['driver_peak_gb']} GB ray; Ray processes peak {ra.get('ray_total_gb')} GB summed, "
              f"largest worker {ra.get('worker_max_gb')} GB")
        for step in lo["steps"]:
            print(f"  {step:<10} local {lo['steps'][step]:8.1f} s   ray {ra['steps'].get(step, 0):8.1f} s")


if __name__ == "__main__":
    main()
