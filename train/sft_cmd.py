"""`bakeoff train sft | reward | note` — a thin click layer over sft.py / reward.py."""

from __future__ import annotations

import contextlib
import sys
from typing import Any

import click

from bakeoff.context import get_workspace, json_option


def _common_options(f: Any) -> Any:
    """Options every trainer shares (applied bottom-up, so listed in reverse)."""
    opts = [
        click.option("--dataset", required=True, help="Dataset version NAME@vN (NAME = latest)."),
        click.option("--model", default="smollm2", show_default=True,
                     help="'tiny', 'smollm2', a local directory (or checkpoint) or a hub id."),
        click.option("--experiment_name", "--experiment-name", "experiment_name", required=True,
                     help="MLflow experiment (and folder under runs/)."),
        click.option("--devices", default=None, help="GPU indices, e.g. 0,1 (more than one: data-parallel); 'cpu'."),
        click.option("--subset", type=float, default=None, help="Train on this fraction of the rows first."),
        click.option("--lora/--full", default=True, show_default=True, help="LoRA adapter or full fine-tuning."),
        click.option("--hypothesis", default=None, help="What this run tests (MLflow tag)."),
        click.option("--lr", type=float, default=None, help="Peak LR [default: 2e-4 LoRA, 1e-5 full]."),
        click.option("--epochs", type=float, default=1.0, show_default=True, help="Passes over the data."),
        click.option("--max-steps", "max_steps", type=int, default=-1, help="Stop after N optimizer steps."),
        click.option("--save-steps", "save_steps", type=float, default=None,
                     help="Checkpoint every N steps (a fraction < 1: of the run)."),
        click.option("--batch-size", "batch_size", type=int, default=None, help="Per-device batch size."),
        click.option("--max-length", "max_length", type=int, default=None, help="Max tokens per sequence."),
        click.option("--warmup", type=float, default=0.05, show_default=True, help="Warm-up fraction of steps."),
        click.option("--lr-floor", "lr_floor", type=float, default=0.45, show_default=True,
                     help="Final LR as a multiple of the peak."),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--resume", is_flag=True, help="Continue the latest run of this experiment from its last checkpoint."),
        click.option("--resume-run", "resume_run", default=None, help="With --resume: the run id to continue."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _build(cls: Any, kw: dict[str, Any]) -> Any:
    cfg = cls()
    for k in ("dataset", "model", "experiment_name", "subset", "lora", "hypothesis", "lr", "epochs",
              "max_steps", "warmup", "lr_floor", "seed", "resume"):
        setattr(cfg, k, kw[k])
    for k in ("save_steps", "batch_size", "max_length"):
        if kw.get(k) is not None:
            setattr(cfg, k, kw[k])
    return cfg


def _train(kind: str, ws: Any, kw: dict[str, Any]) -> Any:
    if kind == "sft":
        from bakeoff.train.config import SFTRunConfig
        from bakeoff.train.sft import train_sft

        cfg = _build(SFTRunConfig, kw)
        cfg.packing = kw["packing"]
        return train_sft(ws, cfg, resume_run_id=kw["resume_run"])
    from bakeoff.train.config import RewardRunConfig
    from bakeoff.train.reward import train_reward

    return train_reward(ws, _build(RewardRunConfig, kw), resume_run_id=kw["resume_run"])


def _run(kind: str, kw: dict[str, Any], as_json: bool) -> None:
    from bakeoff.console import emit, out, table
    from bakeoff.train.devices import relaunch_data_parallel, select_devices, under_distributed_launch
    from bakeoff.train.tracking import is_main_process

    ws = get_workspace()
    n_gpus = select_devices(kw["devices"])
    if n_gpus > 1 and not under_distributed_launch():
        # Data-parallel: create the run here, re-run this command under accelerate.
        from bakeoff.train.tracking import create_run

        run_id = create_run(ws, kw["experiment_name"], run_name=f"{kind}-ddp")
        raise SystemExit(relaunch_data_parallel(n_gpus, run_id))
    # Libraries print training logs to stdout (the Trainer's progress callback);
    # keep stdout for the result alone (one JSON document with --json).
    with contextlib.redirect_stdout(sys.stderr):
        result = _train(kind, ws, kw)
    if not is_main_process():
        return

    def render(r: dict[str, Any]) -> None:
        out.print(f"[bold]{kind}[/] run [cyan]{r['run_id']}[/] in experiment {r['experiment_name']} "
                  f"({r['tracking_uri']})")
        out.print(table("checkpoints", ["path"], [[c] for c in r["checkpoints"]]))
        keys = ("train_loss", "heldout_accuracy", "heldout_margin", "reward_mean", "reward_std")
        rows = [[k, f"{r['metrics'][k]:.4g}"] for k in keys if k in r["metrics"]]
        if rows:
            out.print(table("metrics", ["metric", "value"], rows))
        for a in r["lr_alerts"]:
            out.print(f"[yellow]LR monitor:[/] {a['message']}")

    emit(result.to_json(), as_json, render)


@click.command("sft")
@_common_options
@click.option("--packing/--no-packing", default=True, show_default=True,
              help="Pack samples (kept apart by position ids).")
@json_option
def sft(as_json: bool, **kw: Any) -> None:
    """Supervised fine-tuning (TRL SFTTrainer; LoRA by default), tracked in MLflow.

    Loss on assistant tokens only, packed samples kept apart, warm-up then a
    linear step-down to a floor, a checkpoint every 10% of the run (all kept),
    a monitor that warns when the loss misbehaves at the peak LR.

    \b
    Example:
      bakeoff train sft --dataset fin-train@v3 --model smollm2 --experiment_name fin --subset 0.1
      bakeoff train sft --dataset fin-train@v3 --model smollm2 --experiment_name fin \\
          --hypothesis "curated data beats raw" --json
      bakeoff train sft --dataset fin-train@v3 --experiment_name fin --resume
    """
    _run("sft", kw, as_json)


@click.command("reward")
@_common_options
@json_option
def reward(as_json: bool, **kw: Any) -> None:
    """Train a reward model on preference pairs (TRL RewardTrainer).

    Reports held-out pairwise accuracy and the reward mean/spread on reference
    samples; each checkpoint gets reward_stats.json for PPO's normalisation.

    \b
    Example:
      bakeoff train reward --dataset prefs@v1 --model smollm2 --experiment_name fin-rm --json
    """
    _run("reward", kw, as_json)


@click.command("note")
@click.argument("run_id")
@click.option("--conclusion", required=True, help="What the run showed.")
@json_option
def note(run_id: str, conclusion: str, as_json: bool) -> None:
    """Record what a run taught you (MLflow tag + run description).

    \b
    Example:
      bakeoff train note 3f2a... --conclusion "LoRA r=16 matches full FT on in-domain, -4pt adjacent"
    """
    from bakeoff.console import emit, out
    from bakeoff.train.tracking import note as _note

    result = _note(get_workspace(), run_id, conclusion)
    emit(result, as_json, lambda r: out.print(f"noted on run {r['run_id']}: {r['conclusion']}"))


commands = [sft, reward, note]
