"""Semantic dedup and the embedding cache, figures side by side.

    .venv/bin/python benchmarks/bench_semantic.py [--rows 20000] [--minilm]

1. Demo ground truth: precision / recall of semantic dedup against the planted
   exact and near-duplicates of the demo's fin-train, per threshold, for the
   hashing embedder (and all-MiniLM-L6-v2 with --minilm).
2. Embedding cache: cold vs warm ``embed_texts`` on the same texts (ratio).
3. Index: exact flat vs IVF on --rows perturbed real texts (TAT-QA + Alpaca from
   ../shared/data when present, else synthetic): time, removed rows, IVF recall
   relative to the exact flat result (IVF never removes a row without a verified
   partner; it can only miss some).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from bakeoff.curate import embeddings as E  # noqa: E402
from bakeoff.curate.semantic import SemanticDedupConfig, greedy_semantic, semantic_dedup_rows  # noqa: E402
from bakeoff.workspace import Workspace  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def demo_ground_truth(models: list[str], thresholds: list[float]) -> None:
    from bakeoff.demo_data import load_ground_truth, make_demo_workspace

    ws = Workspace(tempfile.mkdtemp(prefix="bench-semantic-"))
    demo = make_demo_workspace(ws, scale=1.0)
    planted = {t["line"] for t in load_ground_truth(demo["ground_truth"])
               if t["dataset"] == "fin-train" and t["kind"] in ("exact-duplicate", "near-duplicate")}
    df = ws.load("fin-train")
    print(f"\n1. demo fin-train: {df.height} rows, {len(planted)} planted duplicates")
    print(f"{'model':<20}{'threshold':>10}{'removed':>9}{'precision':>11}{'recall':>8}{'seconds':>9}")
    for model in models:
        for t in thresholds:
            t0 = time.perf_counter()
            out = semantic_dedup_rows(df, SemanticDedupConfig(threshold=t, model=model), ws=ws, show_progress=False)
            dt = time.perf_counter() - t0
            removed = set(df.filter(pl.col("id").is_in(out.ledger["row_id"].implode()))["source_line"])
            tp = len(removed & planted)
            print(f"{model:<20}{t:>10.2f}{len(removed):>9}{tp / max(1, len(removed)):>11.3f}"
                  f"{tp / len(planted):>8.3f}{dt:>9.2f}")


def corpus(n: int, seed: int = 0) -> list[str]:
    src: list[str] = []
    if (SHARED / "tatqa_dev.jsonl").exists():
        with open(SHARED / "tatqa_dev.jsonl") as fh:
            src += [json.loads(line)["messages"][0]["content"][-600:] for line in fh]
    if (SHARED / "alpaca_en_demo.json").exists():
        with open(SHARED / "alpaca_en_demo.json") as fh:
            src += [f"{a['instruction']} {a.get('input', '')} {a['output']}" for a in json.load(fh)]
    rng = random.Random(seed)
    if not src:
        vocab = [f"w{i}" for i in range(5000)]
        src = [" ".join(rng.choice(vocab) for _ in range(60)) for _ in range(3000)]
    out = []
    while len(out) < n:
        words = rng.choice(src).split()
        # Mostly heavy rewrites (distinct rows), some light edits (near-duplicates).
        edits = rng.choice([1, 2, 40, 80, 120, 200])
        for _ in range(edits):
            if len(words) > 3:
                words[rng.randrange(len(words))] = f"x{rng.randrange(10**6)}"
        out.append(" ".join(words))
    return out


def cache_and_index(rows: int) -> None:
    texts = corpus(rows)
    ws = Workspace(tempfile.mkdtemp(prefix="bench-semantic-"))
    t0 = time.perf_counter()
    vecs = E.embed_texts(texts, ws, model="hashing", show_progress=False)
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    E.embed_texts(texts, ws, model="hashing", show_progress=False)
    warm = time.perf_counter() - t0
    print(f"\n2. embedding cache, {rows} texts (hashing embedder)")
    print(f"{'cold s':>10}{'warm s':>10}{'cold/warm':>11}{'warm computed':>15}")
    print(f"{cold:>10.2f}{warm:>10.2f}{cold / warm:>11.1f}x{E.last_stats.computed:>14}")

    print(f"\n3. index, {rows} rows, threshold 0.95")
    print(f"{'index':<28}{'seconds':>9}{'removed':>9}{'recall vs flat':>16}{'maxrss MB':>11}")
    order = np.arange(len(vecs))
    results = {}
    for name, cfg in (("flat", SemanticDedupConfig(threshold=0.95, index="flat")),
                      ("ivf nprobe=16", SemanticDedupConfig(threshold=0.95, index="ivf", nprobe=16)),
                      ("ivf nprobe=4", SemanticDedupConfig(threshold=0.95, index="ivf", nprobe=4))):
        t0 = time.perf_counter()
        partner, _, stats = greedy_semantic(vecs, order, cfg, show_progress=False)
        dt = time.perf_counter() - t0
        results[name] = partner >= 0
        base = results["flat"]
        recall = (results[name] & base).sum() / max(1, base.sum())
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
        print(f"{stats['index']:<28}{dt:>9.2f}{int(results[name].sum()):>9}{recall:>16.3f}{rss:>11}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--minilm", action="store_true", help="Also measure all-MiniLM-L6-v2 on the demo.")
    args = ap.parse_args(argv)
    models = ["hashing"] + (["all-MiniLM-L6-v2"] if args.minilm else [])
    demo_ground_truth(models, [0.9, 0.95, 0.97, 0.99])
    cache_and_index(args.rows)


if __name__ == "__main__":
    sys.exit(main())
