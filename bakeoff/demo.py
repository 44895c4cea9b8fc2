"""`bakeoff demo`: the whole iteration loop on embedded defaults."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from bakeoff.context import get_workspace, json_option
from bakeoff.loop import LoopConfig
from bakeoff.workspace import BakeoffError


#: Settings of the full demo (SmolLM2-135M-Instruct, all-MiniLM-L6-v2) and of
#: ``--quick`` (tiny random models, hashing embedder): same loop, smaller numbers.
PRESETS: dict[str, dict[str, Any]] = {
    # Sized for a 2-core CPU, where one SmolLM2-135M training step on 384 tokens
    # takes tens of seconds: each run takes a few steps ("start small"; raise
    # max_steps on a GPU), and every checkpoint is scored on the full test set.
    "full": dict(
        scale=1.0, model="smollm2", embedder="all-MiniLM-L6-v2",
        testset_options={"size": 50},
        sft={"batch_size": 1, "max_length": 384, "max_steps": 8, "save_steps": 4},
        reward={"batch_size": 2, "max_length": 384, "max_steps": 6, "save_steps": 6},
        ppo={"steps": 2, "batch_size": 4, "mini_batch_size": 2, "ppo_epochs": 2,
             "max_new_tokens": 24, "max_prompt_length": 384},
        generation={"max_new_tokens": 32, "batch_size": 10}, loglik=False,
    ),
    "quick": dict(
        scale=0.3, model="tiny", embedder="hashing",
        # The hashing embedder measures word overlap, not meaning, so the quick
        # demo names the adjacent and far domains; the full demo measures them.
        testset_options={"size": 60, "adjacent": ("invoices",), "far": ("contracts",)},
        sft={"batch_size": 8, "max_length": 256, "max_steps": 12, "save_steps": 4},
        reward={"batch_size": 8, "max_length": 256, "max_steps": 6, "save_steps": 6},
        ppo={"steps": 2, "batch_size": 4, "mini_batch_size": 2, "ppo_epochs": 1,
             "max_new_tokens": 8, "save_steps": 1},
        generation={"max_new_tokens": 12, "batch_size": 16}, loglik=True,
    ),
}


def demo_config(quick: bool, seed: int = 0) -> tuple[LoopConfig, dict[str, Any]]:
    """The loop the demo runs; returns (config, preset)."""
    preset = PRESETS["quick" if quick else "full"]
    cfg = LoopConfig(
        experiment="demo-quick" if quick else "demo",
        train_dataset="fin-train", recipe=str(packaged("default_recipe.yaml")),
        testset="fin-test", pools=["pool"],
        testset_options={**preset["testset_options"], "seed": seed},
        model=preset["model"], sft=dict(preset["sft"], seed=seed),
        reward_dataset="prefs", reward=dict(preset["reward"], seed=seed),
        ppo_prompts="prompts", ppo=dict(preset["ppo"], seed=seed),
        generation=dict(preset["generation"]), loglik=preset["loglik"],
        hypothesis="curated finance-table data improves held-out accuracy over the base model",
    )
    return cfg, preset


def packaged(name: str) -> Path:
    """A file shipped in bakeoff.curate (recipes, objectives)."""
    from bakeoff.curate import find_config_file

    return find_config_file(name)


@click.group(invoke_without_command=True)
@click.option("--quick", is_flag=True, help="Tiny random models and a small corpus (under 2 minutes on 2 CPU cores).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--rounds", type=click.IntRange(1, 2), default=2, show_default=True,
              help="2: a second round re-curates with one more rule and trains again; "
                   "the ranking covers both rounds.")
@json_option
@click.pass_context
def demo(ctx: click.Context, quick: bool, seed: int, rounds: int, as_json: bool) -> None:
    """Run the whole iteration loop on a fresh workspace, on embedded defaults.

    Generates the demo corpus, curates it (filters, dedup, coverage report), builds
    a held-out test set with an adjacent-domain slice, runs SFT, trains a reward
    model, runs PPO, evaluates the base model and every checkpoint on the full test
    set, and prints the leaderboard and where the HTML reports and the MLflow
    store are. With --rounds 2 (default) a second round adds one curation rule and
    trains again, and the leaderboard ranks both rounds together.

    \b
    Example:
      bakeoff demo --quick
      bakeoff --workspace /tmp/demo-ws demo --json > summary.json
      bakeoff demo data --seed 0        # only generate and ingest the demo data
    """
    if ctx.invoked_subcommand is not None:
        return
    import os

    from bakeoff.console import emit, err, log
    from bakeoff.demo_data import make_demo_workspace
    from bakeoff.loop import LoopResult, run_loop

    cfg, preset = demo_config(quick, seed)
    # Every stage reads the embedder from the environment; the demo picks it once.
    os.environ.setdefault("BAKEOFF_EMBEDDING_MODEL", preset["embedder"])
    ws = get_workspace()
    if ws.versions():
        raise BakeoffError(f"the demo wants a fresh workspace and {ws.root} already has datasets; "
                           "pass --workspace NEW_DIR (or remove it)")
    result = LoopResult()
    t0 = time.perf_counter()
    err.rule("[bold]demo data")
    made = make_demo_workspace(ws, seed=seed, scale=preset["scale"])
    result.timings["demo data"] = round(time.perf_counter() - t0, 1)
    result.versions.update(made["datasets"])
    second = str(packaged("demo_round2_recipe.yaml")) if rounds == 2 else None
    run_loop(ws, cfg, result, second_round_recipe=second)
    result.timings["total"] = round(time.perf_counter() - t0, 1)
    log(f"demo finished in {result.timings['total']:.0f} s")
    emit(result.to_json(), as_json, lambda r: render_summary(r, cfg.experiment))


def render_summary(r: dict[str, Any], experiment: str) -> None:
    """The leaderboard, then where everything is."""
    from bakeoff.console import out, table

    board = r["leaderboard"]
    rows = []
    for e in board.get("checkpoints", []):
        lo, hi = e.get("interval") or [None, None]
        slices = "  ".join(f"{k}={v:.3f}" for k, v in (e.get("slices") or {}).items() if v is not None)
        rows.append((e.get("rank"), e.get("label"), f"{e.get('score', 0):.3f}",
                     f"[{lo:.3f}, {hi:.3f}]" if lo is not None else "", f"{e.get('p_best', 0):.2f}", slices))
    out.print(table(f"leaderboard on {board.get('testset')} ({board.get('n_items')} items)",
                    ["rank", "checkpoint", "score", "95% CI", "p(best)", "per slice"], rows))
    out.print(table("versions", ["role", "version"], r["versions"].items()))
    out.print(table("step timings", ["step", "seconds"], r["timings"].items()))
    out.print(f"reports: {', '.join(r['reports'].values())}")
    out.print(f"MLflow store: {r['tracking_uri']}  (open the UI with: "
              f"mlflow ui --backend-store-uri {r['tracking_uri']})")
    out.print(f"rank again any time: bakeoff --workspace {r['workspace']} evaluate rank "
              f"--testset {r['versions'].get('testset')} --experiment {experiment}")


@demo.command("data")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed (same seed, same files).")
@click.option("--scale", type=float, default=1.0, show_default=True,
              help="Size multiplier (1.0: ~600 training rows, ~400 pool rows).")
@click.option("--out", "raw_dir", type=click.Path(file_okay=False), default=None,
              help="Where to write the raw files (default: inside the workspace cache).")
@json_option
def data_cmd(seed: int, scale: float, raw_dir: str | None, as_json: bool) -> None:
    """Write the demo corpus (with planted noise and its ground truth) and ingest it.

    Datasets: fin-train (finance-table QA, the training domain, noisy), pool
    (held-out finance, invoices, contracts), prefs (preference pairs), prompts
    (PPO prompts). ground_truth.jsonl lists every planted defect by file and line.

    \b
    Example:
      bakeoff demo data --seed 0
      bakeoff demo data --seed 1 --scale 0.2 --json
    """
    from bakeoff.console import emit, log, out, table
    from bakeoff.demo_data import make_demo_workspace

    ws = get_workspace()
    log(f"generating demo data (seed {seed}, scale {scale:g})")
    result = make_demo_workspace(ws, seed=seed, scale=scale, raw_dir=raw_dir)

    def render(r: dict) -> None:
        rows = [(name, ref, r["ingest"][name]["rows_in"], r["ingest"][name]["accepted"],
                 r["ingest"][name]["quarantined"]) for name, ref in r["datasets"].items()]
        out.print(table("demo datasets", ["dataset", "version", "rows in", "accepted", "quarantined"], rows))
        out.print(f"raw files: {r['raw_dir']}\nground truth: {r['ground_truth']}")

    emit(result, as_json, render)
