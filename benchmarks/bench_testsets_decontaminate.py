"""Decontamination throughput: the vectorized longest-shared-n-gram search against
a per-pair Python scan (the obvious implementation), plus the MinHash and
embedding signals, on synthetic financial tables.

    .venv/bin/python benchmarks/bench_testsets_decontaminate.py [--train 5000] [--test 1000]

The per-pair scan is timed on a sample of pairs and extrapolated to all pairs
(running it in full would take hours); its answers are compared with the
vectorized ones on that sample.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import sys
import time
from pathlib import Path

os.environ.setdefault("BAKEOFF_EMBEDDING_MODEL", "hashing")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import polars as pl  # noqa: E402

from bakeoff.testsets.decontaminate import (DecontamConfig, check_contamination, item_text,  # noqa: E402
                                            longest_shared_ngram)
from testsets_synth import make_rows, paraphrase, user_texts, with_user_text  # noqa: E402


def pair_longest(a: list[str], b: list[str]) -> int:
    """Longest common run of words of two token lists (DP, O(len(a)·len(b)))."""
    best, prev = 0, [0] * (len(b) + 1)
    for x in a:
        cur = [0] * (len(b) + 1)
        for j, y in enumerate(b):
            if x == y:
                cur[j + 1] = prev[j] + 1
                if cur[j + 1] > best:
                    best = cur[j + 1]
        prev = cur
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", type=int, default=5000)
    ap.add_argument("--test", type=int, default=1000)
    ap.add_argument("--pairs", type=int, default=2000, help="pairs timed for the per-pair baseline")
    args = ap.parse_args()

    train = make_rows({"finance-tables": args.train}, seed=1)
    n_plant = args.test // 10
    r = random.Random(0)
    src = train.sample(n_plant, seed=2)
    test = pl.concat([
        make_rows({"finance-tables": args.test - 2 * n_plant}, seed=3, style=1),
        train.sample(n_plant, seed=4),
        with_user_text(src, [paraphrase(t, r, 2) for t in user_texts(src)]),
    ])
    tt = test.select(item_text())["text"]
    rt = train.select(item_text())["text"]
    tokens = sum(len(re.findall(r"\w+", s)) for s in rt.to_list())
    cfg = DecontamConfig()

    t0 = time.perf_counter()
    length, _, info = longest_shared_ngram(tt, rt, cfg)
    t_vec = time.perf_counter() - t0

    ta = [re.findall(r"\w+", s.lower()) for s in tt.to_list()]
    tb = [re.findall(r"\w+", s.lower()) for s in rt.to_list()]
    pr = random.Random(5)
    pairs = [(pr.randrange(len(ta)), pr.randrange(len(tb))) for _ in range(args.pairs)]
    t0 = time.perf_counter()
    for i, j in pairs:
        pair_longest(ta[i], tb[j])
    t_pair = (time.perf_counter() - t0) / len(pairs) * len(ta) * len(tb)

    # agreement on the planted items: the per-pair scan against the row they came from
    planted = range(len(ta) - 2 * n_plant, len(ta))
    src_rows = list(train.sample(n_plant, seed=4)["id"]) + list(src["id"])
    id_to_j = {x: k for k, x in enumerate(train["id"].to_list())}
    agree = sum(1 for i, sid in zip(planted, src_rows)
                if min(pair_longest(ta[i], tb[id_to_j[sid]]), cfg.ngram_cap) <= length[i]
                or length[i] >= cfg.ngram_flag)

    t0 = time.perf_counter()
    res = check_contamination(test, train, cfg)
    t_all = time.perf_counter() - t0
    planted_ids = set(test["id"].to_list()[len(ta) - 2 * n_plant:])
    flagged = set(res.flagged["id"])

    print(f"train rows {train.height}, {tokens:,} words; test items {test.height} "
          f"({n_plant} verbatim + {n_plant} paraphrased plants)")
    print(f"{'longest shared n-gram':34s} vectorized {t_vec:8.2f} s | per-pair Python (extrapolated) "
          f"{t_pair:10.0f} s | speed-up x{t_pair / t_vec:,.0f}")
    print(f"{'':34s} n-gram lengths indexed: {info['ngram_lengths_indexed']}, "
          f"binary-search rounds: {info['search_rounds']}")
    print(f"{'planted items: per-pair <= vectorized':34s} {agree}/{2 * n_plant}")
    print(f"{'all four signals (check_contamination)':34s} {t_all:8.2f} s | flagged {len(flagged)}: "
          f"planted caught {len(flagged & planted_ids)}/{len(planted_ids)}, "
          f"clean flagged {len(flagged - planted_ids)}/{test.height - len(planted_ids)}")
    print(f"{'':34s} by signal {res.summary['flagged_by_signal']}")


if __name__ == "__main__":
    main()
