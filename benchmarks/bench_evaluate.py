"""Evaluation benchmarks, printed side by side.

1. Generation: batched (left padding, KV cache) vs one prompt at a time, same
   model, same prompts, greedy: answers/s and the speed-up.
2. Incremental re-ranking: evaluating N checkpoints from scratch vs adding one
   checkpoint to an evaluated set (re-run over all N+1 through the cache, then
   rank). The increment should cost about one checkpoint's evaluation.
3. Ray (``--ray``): the same checkpoints evaluated from scratch with the local
   executor and on a local Ray instance (2 actors of 1 CPU, and 1 actor of 2),
   in one run: seconds, the overhead ratio Ray / local, and whether the cached
   outputs are identical.
4. Ranking claims (``--ranking``): with equally good checkpoints on 150 binary
   items, how often each procedure calls one "significantly worse" — the first
   version (Holm over tests against the observed leader) beside the current one
   (max-statistic over all pairs) — and what ranking costs in seconds.

Usage:
    .venv/bin/python benchmarks/bench_evaluate.py                 # random small Llama (CPU-friendly)
    .venv/bin/python benchmarks/bench_evaluate.py --model smollm2 # SmolLM2-135M-Instruct
    .venv/bin/python benchmarks/bench_evaluate.py --items 64 --checkpoints 4 --batch-size 16
    .venv/bin/python benchmarks/bench_evaluate.py --ray --items 64 --checkpoints 2  # local vs Ray
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _prompts(n: int) -> list[list[dict]]:
    """Finance-table style questions of varied length."""
    out = []
    for i in range(n):
        rows = "\n".join(f"| {2015 + k} | {1000 + 37 * k * (i + 1):,} | {12 + k}% |" for k in range(1 + i % 6))
        out.append([{"role": "system", "content": "Answer with a number."},
                    {"role": "user", "content": f"Table (in thousands):\n| year | revenue | margin |\n{rows}\n"
                                                f"Item {i}: what was revenue in {2015 + i % 6}?"}])
    return out


def bench_generation(model_path: str, n_items: int, batch_size: int, max_new_tokens: int) -> None:
    import torch

    from bakeoff.evaluate.generate import GenerationSettings, HFGenerator

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    prompts = _prompts(n_items)
    gen = HFGenerator.from_path(model_path, GenerationSettings(batch_size=batch_size,
                                                               max_new_tokens=max_new_tokens))
    gen.generate(prompts[:2])  # warm-up
    rows = []
    outs = {}
    for bs in (1, batch_size):
        gen.settings = GenerationSettings(batch_size=bs, max_new_tokens=max_new_tokens)
        t = time.perf_counter()
        outs[bs] = gen.generate(prompts)
        rows.append((bs, time.perf_counter() - t))
    t1, tb = rows[0][1], rows[1][1]
    same = sum(a == b for a, b in zip(outs[1], outs[batch_size]))
    print(f"\n== generation: {n_items} prompts, {max_new_tokens} new tokens max, greedy, device {gen.device} ==")
    print(f"{'mode':<22}{'seconds':>10}{'answers/s':>12}")
    print(f"{'one at a time':<22}{t1:>10.2f}{n_items / t1:>12.2f}")
    print(f"{f'batched (bs={batch_size})':<22}{tb:>10.2f}{n_items / tb:>12.2f}")
    print(f"speed-up batched / one-at-a-time: {t1 / tb:.2f}x   identical answers: {same}/{n_items}")


def bench_incremental(n_ckpt: int, n_items: int, batch_size: int, max_new_tokens: int, hidden: int) -> None:
    from bakeoff.console import err
    from bakeoff.evaluate.fakes import commit_testset, save_tiny_causal_lm
    from bakeoff.evaluate.generate import GenerationSettings
    from bakeoff.evaluate.items import load_items
    from bakeoff.evaluate.rank import build_leaderboard
    from bakeoff.evaluate.runner import ModelSpec, evaluate_models
    from bakeoff.workspace import Workspace

    err.quiet = True  # no progress bars in the benchmark output
    tmp = Path(tempfile.mkdtemp(prefix="bench-eval-"))
    try:
        ws = Workspace(tmp / "ws")
        items = [dict(question=p[-1]["content"], reference=str(1000 + i), slice=("in-domain", "adjacent", "far")[i % 3],
                      scoring={"method": "numeric", "scale": 1000}) for i, p in enumerate(_prompts(n_items))]
        commit_testset(ws, "bench", items)
        version, frame = load_items(ws, "bench@v1")
        specs = [ModelSpec(f"ckpt-{k}", str(save_tiny_causal_lm(tmp / f"m{k}", seed=k, hidden=hidden, layers=4)))
                 for k in range(n_ckpt + 1)]
        settings = GenerationSettings(batch_size=batch_size, max_new_tokens=max_new_tokens)

        t = time.perf_counter()
        evaluate_models(ws, version, frame, specs[:n_ckpt], settings, devices=["cpu"])
        t_full = time.perf_counter() - t
        t = time.perf_counter()
        build_leaderboard(ws, version.ref)
        t_rank = time.perf_counter() - t

        t = time.perf_counter()
        res = evaluate_models(ws, version, frame, specs, settings, devices=["cpu"])  # N cached + 1 new
        t_inc = time.perf_counter() - t
        t = time.perf_counter()
        board = build_leaderboard(ws, version.ref)
        t_rank2 = time.perf_counter() - t
        generated = [r.generated for r in res]
    finally:
        err.quiet = False
        shutil.rmtree(tmp, ignore_errors=True)
    per = t_full / n_ckpt
    print(f"\n== re-ranking after one new checkpoint: {n_ckpt} checkpoints x {n_items} items "
          f"(random Llama, hidden {hidden}) ==")
    print(f"{'step':<40}{'seconds':>10}")
    print(f"{f'full evaluation of {n_ckpt} checkpoints':<40}{t_full:>10.2f}")
    print(f"{'  per checkpoint':<40}{per:>10.2f}")
    print(f"{'  rank':<40}{t_rank:>10.2f}")
    print(f"{f'evaluate all {n_ckpt + 1} again (1 new, cached rest)':<40}{t_inc:>10.2f}")
    print(f"{'  rank':<40}{t_rank2:>10.2f}")
    print(f"generated per model on the incremental run: {generated}")
    print(f"incremental / one checkpoint's evaluation: {t_inc / per:.2f}x   "
          f"incremental / full: {t_inc / t_full:.2f}x   ({len(board.entries)} models ranked)")


def bench_ray(n_ckpt: int, n_items: int, batch_size: int, max_new_tokens: int, hidden: int) -> None:
    import ray

    from bakeoff.console import err
    from bakeoff.evaluate import cache
    from bakeoff.evaluate.fakes import commit_testset, save_tiny_causal_lm
    from bakeoff.evaluate.generate import GenerationSettings
    from bakeoff.evaluate.items import load_items
    from bakeoff.evaluate.on_ray import evaluate_on_ray
    from bakeoff.evaluate.runner import ModelSpec, evaluate_models
    from bakeoff.executor import Executor
    from bakeoff.workspace import Workspace

    err.quiet = True
    tmp = Path(tempfile.mkdtemp(prefix="bench-eval-ray-"))
    items = [dict(question=p[-1]["content"], reference=str(1000 + i), scoring={"method": "numeric", "scale": 1000})
             for i, p in enumerate(_prompts(n_items))]
    specs = [ModelSpec(f"ckpt-{k}", str(save_tiny_causal_lm(tmp / f"m{k}", seed=k, hidden=hidden, layers=4)))
             for k in range(n_ckpt)]
    settings = GenerationSettings(batch_size=batch_size, max_new_tokens=max_new_tokens)
    cpus = os.cpu_count() or 1

    def fresh(name: str):
        ws = Workspace(tmp / name)
        commit_testset(ws, "bench", items)
        return (ws, *load_items(ws, "bench@v1"))

    def outputs(ws: Workspace) -> list[tuple]:
        with cache.connect(ws) as con:
            return con.execute("SELECT weights_digest, prompt_digest, output, env FROM eval_outputs "
                               "ORDER BY ALL").fetchall()

    rows, stored = [], {}
    try:
        import torch

        default_threads = torch.get_num_threads()
        for threads in sorted({default_threads, 1}, reverse=True):
            torch.set_num_threads(threads)
            ws, version, frame = fresh(f"local{threads}")
            t = time.perf_counter()
            evaluate_models(ws, version, frame, specs, settings)
            rows.append((f"local ({threads} torch thread(s))", time.perf_counter() - t))
            stored[rows[-1][0]] = outputs(ws)
        torch.set_num_threads(default_threads)

        t = time.perf_counter()
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
        t_start = time.perf_counter() - t
        for actors in (cpus, 1):
            ws, version, frame = fresh(f"ray{actors}")
            t = time.perf_counter()
            evaluate_on_ray(ws, version, frame, specs, settings, Executor("ray"), actors=actors)
            rows.append((f"ray, {actors} actor(s) x {cpus // actors} thread(s)", time.perf_counter() - t))
            stored[rows[-1][0]] = outputs(ws)
    finally:
        if ray.is_initialized():
            ray.shutdown()
        err.quiet = False
        shutil.rmtree(tmp, ignore_errors=True)
    work = n_ckpt * n_items * 2  # an answer and a reference log-likelihood per item
    print(f"\n== local vs Ray: {n_ckpt} checkpoints x {n_items} items from scratch, batch {batch_size}, "
          f"{max_new_tokens} new tokens (random Llama, hidden {hidden}), {cpus} CPUs ==")
    print(f"{'executor':<34}{'seconds':>10}{'items/s':>10}{'vs local':>10}{'same outputs':>14}")
    for name, sec in rows:
        same = stored[name] == stored[rows[0][0]]
        print(f"{name:<34}{sec:>10.2f}{work / sec:>10.1f}{sec / rows[0][1]:>9.2f}x{str(same):>14}")
    print(f"Ray instance start (once per command, not counted above): {t_start:.2f} s")


def bench_ranking(experiments: int = 300) -> None:
    import numpy as np

    from bakeoff.evaluate.stats import holm, mcnemar_exact, rank_models

    def first_version(S: np.ndarray) -> bool:
        """Any "significantly worse than #1": McNemar vs the observed leader, Holm over m-1 tests."""
        leader = int(np.argmax(S.mean(axis=0)))
        others = [j for j in range(S.shape[1]) if j != leader]
        return min(holm([mcnemar_exact(S[:, j], S[:, leader]) for j in others])) < 0.05

    print(f"\n== false 'significantly worse' claims: equally good checkpoints (p=0.7), 150 binary items, "
          f"{experiments} experiments ==")
    print(f"{'checkpoints':<14}{'first version':>15}{'current':>10}{'ratio':>8}")
    for m in (6, 8, 10):
        rng = np.random.default_rng(m)
        old = new = 0
        for _ in range(experiments):
            S = (rng.random((150, m)) < 0.7).astype(float)
            old += first_version(S)
            new += bool(rank_models(S, n_boot=500, seed=int(rng.integers(1 << 30))).significantly_worse.any())
        print(f"{m:<14}{old / experiments:>15.3f}{new / experiments:>10.3f}{(old / max(new, 1)):>8.1f}")
    print(f"\n== rank_models cost (2000 bootstrap replicates) ==")
    print(f"{'checkpoints':<14}{'items':>8}{'binary s':>10}{'continuous s':>14}")
    rng = np.random.default_rng(0)
    for m, n in ((3, 300), (8, 300), (8, 3000), (20, 3000)):
        times = []
        for S in ((rng.random((n, m)) < 0.7).astype(float), rng.random((n, m))):
            t = time.perf_counter()
            rank_models(S)
            times.append(time.perf_counter() - t)
        print(f"{m:<14}{n:>8}{times[0]:>10.2f}{times[1]:>14.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="small", help="'small' (random Llama), 'tiny', 'smollm2' or a path")
    ap.add_argument("--items", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=12)
    ap.add_argument("--checkpoints", type=int, default=3)
    ap.add_argument("--skip-generation", action="store_true")
    ap.add_argument("--skip-incremental", action="store_true")
    ap.add_argument("--ranking", action="store_true", help="Only the ranking-claims benchmark.")
    ap.add_argument("--ray", action="store_true", help="Only local vs Ray (needs the 'ray' extra).")
    args = ap.parse_args()
    if args.ranking:
        bench_ranking()
        return
    if args.ray:
        bench_ray(args.checkpoints, args.items, args.batch_size, args.max_new_tokens, hidden=64)
        return

    if not args.skip_generation:
        if args.model == "small":
            from bakeoff.evaluate.fakes import save_tiny_causal_lm

            path = str(save_tiny_causal_lm(Path(tempfile.mkdtemp(prefix="bench-model-")) / "m", seed=0,
                                           hidden=256, layers=4))
        else:
            from bakeoff.train.models import resolve_model

            path = resolve_model(args.model)
        bench_generation(path, args.items, args.batch_size, args.max_new_tokens)
    if not args.skip_incremental:
        bench_incremental(args.checkpoints, args.items, args.batch_size, args.max_new_tokens, hidden=64)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
