"""Semantic dedup on Ray (a partitioned search) vs in one process, side by side.

    .venv/bin/python benchmarks/bench_semantic_ray.py --rows 200000

Rows: Alpaca instructions and answers from ../shared/data (synthetic words
when absent), each row a copy of a random source with some of its words
replaced by random letter-only words (no digits, so the copies keep their
source's shape): mostly heavy rewrites (distinct rows), some light edits
(near-duplicates). Written once as Parquet with a ``_row`` column.

Each executor runs in its own subprocess: ``local`` reads the rows and calls
``semantic_dedup_rows``; ``ray`` gives the step a ``ray.data.read_parquet``
dataset of the file, so its driver never loads the rows (as a recipe on Ray
does). The ledgers must be equal. Embedder: ``hashing`` (the offline MiniLM
embeds ~100 texts/s here, the same work on either executor).

Per executor: wall time, CPU seconds (the driver's; for Ray also the Ray
processes', sampled with psutil as ``bench_ray.py`` does), the driver's peak
RSS (ru_maxrss of the subprocess), and for Ray the peak summed RSS of its
processes and the largest worker. The machine is shared: the load average is
printed, and the ratios are what to compare.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import string
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
CONFIG = {"threshold": 0.9, "model": "hashing"}


def build_rows(n: int, path: Path, seed: int = 0) -> int:
    """Write ``n`` perturbed Alpaca rows (the row schema, plus ``_row``) to ``path``."""
    import polars as pl

    from bakeoff.curate.ingest import ingest
    from bakeoff.workspace import Workspace

    rng = random.Random(seed)
    if (SHARED / "alpaca_en_demo.json").exists():
        src = [(f"{a['instruction']}\n\n{a['input']}".strip(), a["output"])
               for a in json.loads((SHARED / "alpaca_en_demo.json").read_text())]
    else:
        vocab = ["".join(rng.choices(string.ascii_lowercase, k=6)) for _ in range(5000)]
        src = [(" ".join(rng.choices(vocab, k=12)), " ".join(rng.choices(vocab, k=60))) for _ in range(1000)]
    lines = []
    for _ in range(n):
        prompt, answer = rng.choice(src)
        words = answer.split()
        # Mostly heavy rewrites (distinct rows), one in ten a light edit (a near-duplicate).
        for _ in range(rng.choice([0, 2]) if rng.random() < 0.1 else rng.choice([40, 80, 120])):
            if len(words) > 3:
                words[rng.randrange(len(words))] = "".join(rng.choices(string.ascii_lowercase, k=7))
        lines.append(json.dumps({"instruction": prompt, "output": " ".join(words)}))
    raw = path.parent / "rows.jsonl"
    raw.write_text("\n".join(lines) + "\n")
    ws = Workspace(path.parent / "ws")
    df = ws.load(ingest(ws, [raw], "bench").version.ref)
    rows = df.with_columns(pl.int_range(pl.len(), dtype=pl.Int64).alias("_row"))
    path.mkdir()
    per = -(-rows.height // (4 * (os.cpu_count() or 1)))  # shards, as a version is stored: blocks for every core
    for i, lo in enumerate(range(0, rows.height, per)):
        rows.slice(lo, per).write_parquet(path / f"part-{i:04d}.parquet")
    return df.height


def run_one(path: str, executor: str, out: str) -> None:
    """One executor, in this (sub)process."""
    import polars as pl
    import pyarrow.parquet as pq

    from bakeoff.curate.semantic import SemanticDedupConfig, semantic_dedup_rows
    from bakeoff.executor import Executor, ray_session

    cfg = SemanticDedupConfig(**CONFIG)
    peak: dict[str, float] = {}
    t0, c0 = time.perf_counter(), time.process_time()
    if executor == "local":
        df = pl.read_parquet(f"{path}/*.parquet").sort("_row").drop("_row")
        res = semantic_dedup_rows(df, cfg, show_progress=False)
        ledger, report = res.ledger, res.report
    else:
        from bench_ray import _ray_memory

        from bakeoff.curate.on_ray.semantic import semantic_dedup_on_ray

        stop = threading.Event()
        threading.Thread(target=_ray_memory, args=(stop, peak), daemon=True).start()
        ex = Executor("ray", num_cpus=os.cpu_count())
        with ray_session(ex) as ray:
            ds = ray.data.read_parquet(path, override_num_blocks=len(list(Path(path).glob("*.parquet"))))
            n = sum(pq.ParquetFile(p).metadata.num_rows for p in Path(path).glob("*.parquet"))
            res = semantic_dedup_on_ray(ds, n, cfg, ex)
        stop.set()
        ledger, report = res.ledger, res.report
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    ledger.write_parquet(out + ".ledger.parquet")
    Path(out).write_text(json.dumps({
        "executor": executor, "wall_s": round(wall, 1), "driver_cpu_s": round(cpu, 1),
        "driver_peak_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "removed": report["removed"], "index": report["search"]["index"],
        "candidates_checked": report["search"]["candidates_checked"], "on_ray": report.get("ray"),
        **{k: round(v, 2) for k, v in peak.items()}}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--executors", default="local,ray")
    ap.add_argument("--worker", nargs=3, metavar=("PATH", "EXECUTOR", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        run_one(*args.worker)
        return
    import polars as pl

    root = Path(tempfile.mkdtemp(prefix="bench-semray-"))
    path = root / "rows"
    t0 = time.perf_counter()
    n = build_rows(args.rows, path)
    print(f"{n:,} rows in {path} ({time.perf_counter() - t0:.0f} s); {CONFIG}; {os.cpu_count()} cores")
    results = {}
    for ex in args.executors.split(","):
        load = os.getloadavg()[0]
        out = str(root / f"result-{ex}.json")
        subprocess.run([sys.executable, __file__, "--worker", str(path), ex, out], check=True)
        results[ex] = {**json.loads(Path(out).read_text()), "load_before": round(load, 1),
                       "load_after": round(os.getloadavg()[0], 1)}
        print(json.dumps(results[ex]), flush=True)
    if "local" in results and "ray" in results:
        lo, ra = results["local"], results["ray"]
        same = pl.read_parquet(str(root / "result-ray.json") + ".ledger.parquet").equals(
            pl.read_parquet(str(root / "result-local.json") + ".ledger.parquet"))
        ray_cpu = ra["driver_cpu_s"] + ra.get("ray_cpu_s", 0)
        print(f"\nsame ledger: {same} ({lo['removed']:,} removed; {lo['index']}; "
              f"{lo['candidates_checked']:,} candidates checked, ray {ra['candidates_checked']:,})")
        print(f"ray / local wall: {ra['wall_s'] / lo['wall_s']:.2f}x ({ra['wall_s']} s vs {lo['wall_s']} s)")
        print(f"ray / local CPU: {ray_cpu / lo['driver_cpu_s']:.2f}x ({ray_cpu:.0f} s driver + Ray processes "
              f"vs {lo['driver_cpu_s']:.0f} s)")
        print(f"driver peak RSS: local {lo['driver_peak_gb']} GB, ray {ra['driver_peak_gb']} GB "
              f"({ra['driver_peak_gb'] / lo['driver_peak_gb']:.2f}x); Ray processes peak "
              f"{ra.get('ray_total_gb')} GB summed, largest worker {ra.get('worker_max_gb')} GB")


if __name__ == "__main__":
    main()
