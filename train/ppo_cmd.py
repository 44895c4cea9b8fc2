"""`bakeoff train rl --algorithm ppo|grpo|rloo` (and `train ppo`, its alias):
reinforcement learning from a reward model, a thin click layer over ppo.py / rl.py."""

from __future__ import annotations

from typing import Any

import click

from bakeoff.context import get_workspace, json_option
from bakeoff.train.options import RL_ALGORITHMS, config_options
from bakeoff.train.ppo import PPOConfig
from bakeoff.train.rl import GroupRLConfig

#: RL names its inputs after what they are: the policy (model) and the prompts (dataset).
RL_FLAGS = {"dataset": ("--prompts", "--dataset"), "model": ("--policy", "--model")}


@click.command("rl")
@click.option("--algorithm", type=click.Choice(list(RL_ALGORITHMS)), default="ppo", show_default=True,
              help="PPO (implemented here, value head from the reward model) or GRPO/RLOO through TRL.")
@config_options(PPOConfig, GroupRLConfig, flags=RL_FLAGS)
@click.option("--resume-run", "resume_run", default=None, help="With --resume: the PPO run id to continue.")
@click.option("--devices", default=None, help="GPU indices, e.g. 0 (RL runs on one device), or 'cpu'.")
@json_option
def rl(algorithm: str, resume_run: str | None, devices: str | None, as_json: bool, **kw: Any) -> None:
    """Optimise an SFT policy against a reward model: PPO (default), GRPO or RLOO.

    The policy trains a LoRA adapter; the reference policy is the same model with
    the adapter disabled. The reward model reads exactly the sequence it was
    trained on; rewards are normalised with the reward checkpoint's
    reward_stats.json; metrics go to MLflow every step; checkpoints carry their
    whole lineage and are ranked by `bakeoff evaluate` like any other. PPO runs
    continue with --resume.

    \b
    Example:
      bakeoff train rl --policy bakeoff-workspace/runs/fin/RUN/checkpoint-200 \\
          --reward bakeoff-workspace/runs/fin-rm/RUN2/checkpoint-50 \\
          --prompts prompts@v1 --experiment fin-ppo --steps 50
      bakeoff train rl --algorithm grpo --num-generations 4 ...
      bakeoff train ppo --experiment fin-ppo --resume
    """
    from bakeoff.console import emit, err, out, table, warn
    from bakeoff.train.devices import parse_devices, select_devices
    from bakeoff.train.options import build_config, ignored_options, trainers

    ws = get_workspace()
    n_gpus = select_devices(devices)
    if n_gpus > 1:
        warn(f"{n_gpus} GPUs visible: {algorithm.upper()} here runs on one (cuda:0); "
             "pass --devices N to pick it")
    trainer = trainers()[algorithm]
    for name in ignored_options(trainer.config, kw, (PPOConfig, GroupRLConfig)):
        warn(f"--{name.replace('_', '-')} does not apply to {algorithm.upper()}; ignored")
    fixed = {} if algorithm == "ppo" else {"algorithm": algorithm}
    if parse_devices(devices) == []:
        fixed["device"] = "cpu"
    cfg = build_config(trainer.config, kw, **fixed)
    if algorithm == "ppo" and kw.get("batch_size") is not None and cfg.batch_size % cfg.mini_batch_size:
        cfg.mini_batch_size = cfg.batch_size  # a small batch is one minibatch
    result = (trainer.train(ws, cfg, resume_run_id=resume_run) if algorithm == "ppo"
              else trainer.train(ws, cfg)).to_json()
    result.pop("history", None)

    def render(r: dict) -> None:
        metrics = r.get("metrics", {})
        keys = [k for k in ("reward", "reward_raw", "kl", "entropy", "clipfrac", "value_loss",
                            "response_length", "eos_rate") if k in metrics] or sorted(metrics)[:10]
        out.print(f"{r['algorithm'].upper()} run {r['run_id']}", highlight=False)
        rows = [(k, f"{metrics[k]:.4g}") for k in keys]
        length = r.get("length") or {}
        if length:
            rows.append(("prompts lost to max_prompt_length",
                         f"{length['length_truncated'] + length['length_dropped']} of {length['length_total']}"))
        out.print(table("last step", ["metric", "value"], rows))
        for c in r["checkpoints"]:
            out.print(c, highlight=False)
        for w in r.get("warnings", []):
            out.print(f"[yellow]warning:[/] {w}")
        err.print(f"MLflow: {r['tracking_uri']} experiment {r['experiment_name']}", highlight=False)

    emit(result, as_json, render)


commands = [rl]
