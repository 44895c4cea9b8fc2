"""`bakeoff train sft | reward | note` — a thin click layer over sft.py / reward.py."""

from __future__ import annotations

import contextlib
import sys
from typing import Any

import click

from bakeoff.context import get_workspace, json_option
from bakeoff.train.config import RewardRunConfig, SFTRunConfig
from bakeoff.train.options import config_options


def _run_options(f: Any) -> Any:
    """Options every command-line run has besides its config's fields."""
    f = click.option("--resume-run", "resume_run", default=None,
                     help="With --resume: the run id to continue.")(f)
    return click.option("--devices", default=None,
                        help="GPU indices, e.g. 0,1 (more than one: data-parallel); 'cpu'.")(f)


def _train(kind: str, ws: Any, kw: dict[str, Any]) -> Any:
    from bakeoff.train.options import build_config, trainers

    from bakeoff.workspace import BakeoffError

    t = trainers()[kind]
    cfg = build_config(t.config, kw, **({"device": "cpu"} if kw.get("devices") == "cpu" else {}))
    if not cfg.dataset and not cfg.resume:
        raise BakeoffError("--dataset is required (a version NAME@vN), unless --resume continues a run")
    return t.train(ws, cfg, resume_run_id=kw.get("resume_run"))


def _run(kind: str, kw: dict[str, Any], as_json: bool) -> None:
    from bakeoff.console import emit, out, table
    from bakeoff.train.devices import relaunch_data_parallel, select_devices, under_distributed_launch
    from bakeoff.train.tracking import is_main_process

    ws = get_workspace()
    n_gpus = select_devices(kw["devices"])
    if n_gpus > 1 and not under_distributed_launch():
        # Data-parallel: create the run here, re-run this command under accelerate.
        from bakeoff.train.tracking import create_run

        run_id = create_run(ws, kw.get("experiment_name") or "default", run_name=f"{kind}-ddp")
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
        keys = ("train_loss", "heldout_accuracy", "heldout_margin", "trainpairs_accuracy", "trainpairs_margin",
                "reward_mean", "reward_std")
        rows = [[k, f"{r['metrics'][k]:.4g}"] for k in keys if k in r["metrics"]]
        length = r.get("length") or {}
        if length:
            rows.append(["lost to max_length", f"{length['length_truncated']} truncated, "
                         f"{length['length_dropped']} dropped of {length['length_total']}"])
        if r.get("packing") is not None:
            rows.append(["packing", f"{'on' if r['packing'] else 'off'} ({r.get('packing_reason', '')})"])
        if rows:
            out.print(table("summary", ["metric", "value"], rows))
        for w in r["warnings"]:
            out.print(f"[yellow]warning:[/] {w}")
        for a in r["lr_alerts"]:
            out.print(f"[yellow]LR monitor:[/] {a['message']}")

    emit(result.to_json(), as_json, render)


@click.command("sft")
@config_options(SFTRunConfig)
@_run_options
@json_option
def sft(as_json: bool, **kw: Any) -> None:
    """Supervised fine-tuning (TRL SFTTrainer; LoRA by default), tracked in MLflow.

    Loss on assistant tokens only (the mask comes from the model's own chat
    template, whatever it is), packed samples kept apart, warm-up then a
    linear step-down to a floor, a checkpoint every 10% of the run (all kept),
    a monitor that warns when the loss misbehaves at the peak LR. Rows cut or
    dropped for --max-length are counted in the summary.

    \b
    Example:
      bakeoff train sft --dataset fin-train@v3 --model smollm2 --experiment fin --subset 0.1
      bakeoff train sft --dataset fin-train@v3 --model ./my-model-dir --experiment fin \\
          --hypothesis "curated data beats raw" --json
      bakeoff train sft --dataset fin-train@v3 --experiment fin --resume
    """
    _run("sft", kw, as_json)


@click.command("reward")
@config_options(RewardRunConfig)
@_run_options
@json_option
def reward(as_json: bool, **kw: Any) -> None:
    """Train a reward model on preference pairs (TRL RewardTrainer).

    Reports held-out pairwise accuracy (the split is by prompt) and the reward
    mean/spread on reference samples; each checkpoint gets reward_stats.json
    for RL's normalisation. Pairs over --max-length are counted.

    \b
    Example:
      bakeoff train reward --dataset prefs@v1 --model smollm2 --experiment fin-rm --json
    """
    _run("reward", kw, as_json)


@click.command("note")
@click.argument("run_id")
@click.option("--conclusion", required=True, help="What the run showed (appended to earlier notes).")
@json_option
def note(run_id: str, conclusion: str, as_json: bool) -> None:
    """Record what a run taught you (MLflow tag + run description). RUN_ID may
    be a unique prefix of the id; a second note is appended to the first.

    \b
    Example:
      bakeoff train note 3f2a --conclusion "LoRA r=16 matches full FT on in-domain, -4pt adjacent"
    """
    from bakeoff.console import emit, out
    from bakeoff.train.tracking import note as _note

    result = _note(get_workspace(), run_id, conclusion)
    emit(result, as_json, lambda r: out.print(
        f"noted on run {r['run_id']} ({len(r['conclusions'])} note(s)): {r['conclusion']}"))


commands = [sft, reward, note]
