"""`bakeoff train ppo`: reinforcement learning from a reward model (PPO, GRPO, RLOO)."""

from __future__ import annotations

import click

from bakeoff.context import get_workspace, json_option


@click.command("ppo")
@click.option("--policy", required=True,
              help="SFT checkpoint directory (bakeoff_checkpoint.json of kind 'sft' in or above it).")
@click.option("--reward", "reward", required=True, help="Reward model checkpoint directory.")
@click.option("--prompts", required=True, help="Dataset version whose prompt turns are sampled (NAME@vN).")
@click.option("--experiment_name", "--experiment-name", "experiment_name", required=True,
              help="MLflow experiment to record the run in.")
@click.option("--algorithm", type=click.Choice(["ppo", "grpo", "rloo"]), default="ppo", show_default=True,
              help="PPO (implemented here, value head from the reward model) or GRPO/RLOO through TRL.")
@click.option("--force", is_flag=True, help="Run even when the policy has no SFT run behind it.")
@click.option("--steps", type=int, default=None,
              help="PPO iterations (one rollout batch each); optimizer steps for GRPO/RLOO.  [default: 100]")
@click.option("--batch-size", "batch_size", type=int, default=None,
              help="Rollouts per iteration (PPO) / completions per step (GRPO, RLOO).  [default: 16]")
@click.option("--lr", "learning_rate", type=float, default=None, help="Peak learning rate.  [default: 5e-05]")
@click.option("--kl-coef", "kl_coef", type=float, default=None,
              help="KL penalty coefficient (PPO kl_coef, GRPO/RLOO beta).  [default: 0.05]")
@click.option("--kl-estimator", type=click.Choice(["k1", "k3"]), default=None,
              help="Per-token KL estimator (PPO).  [default: k1]")
@click.option("--temperature", type=float, default=None, help="Sampling temperature.  [default: 0.7]")
@click.option("--max-new-tokens", type=int, default=None, help="Longest response.  [default: 64]")
@click.option("--missing-eos-penalty", type=float, default=None,
              help="Subtracted from the score of a response that never emits EOS.  [default: 1.0]")
@click.option("--num-generations", type=int, default=None,
              help="GRPO/RLOO: completions per prompt.  [default: 4]")
@click.option("--save-steps", type=int, default=None, help="Checkpoint every N steps (0: at the end).")
@click.option("--seed", type=int, default=None)
@click.option("--devices", default=None, help="GPU indices, e.g. 0 (RL runs on one device), or 'cpu'.")
@click.option("--hypothesis", default=None, help="What this run tests (an MLflow tag).")
@json_option
def ppo(policy: str, reward: str, prompts: str, experiment_name: str, algorithm: str, force: bool,
        steps: int | None, batch_size: int | None, learning_rate: float | None, kl_coef: float | None,
        kl_estimator: str | None, temperature: float | None, max_new_tokens: int | None,
        missing_eos_penalty: float | None, num_generations: int | None, save_steps: int | None,
        seed: int | None, devices: str | None, hypothesis: str | None, as_json: bool) -> None:
    """Optimise an SFT policy against a reward model: PPO (default), GRPO or RLOO.

    The policy trains a LoRA adapter; the reference policy is the same model with
    the adapter disabled. Rewards are normalised with the reward checkpoint's
    reward_stats.json; metrics go to MLflow every step; checkpoints are ranked by
    `bakeoff evaluate` like any other.

    \b
    Example:
      bakeoff train ppo --policy bakeoff-workspace/runs/fin/RUN/checkpoint-200 \\
          --reward bakeoff-workspace/runs/fin-rm/RUN2/checkpoint-50 \\
          --prompts prompts@v1 --experiment_name fin-ppo --steps 50
      bakeoff train ppo ... --algorithm grpo --num-generations 4
    """
    from bakeoff.console import err, out, table, warn
    from bakeoff.console import emit
    from bakeoff.train.devices import parse_devices, select_devices

    ws = get_workspace()
    n_gpus = select_devices(devices)
    if n_gpus > 1:
        warn(f"{n_gpus} GPUs visible: {algorithm.upper()} here runs on one (cuda:0); "
             "pass --devices N to pick it")
    device = "cpu" if parse_devices(devices) == [] else None

    given = {"steps": steps, "batch_size": batch_size, "learning_rate": learning_rate,
             "temperature": temperature, "max_new_tokens": max_new_tokens,
             "missing_eos_penalty": missing_eos_penalty, "save_steps": save_steps, "seed": seed,
             "device": device}
    given = {k: v for k, v in given.items() if v is not None}
    if algorithm == "ppo":
        from bakeoff.train.ppo import PPOConfig, train_ppo

        if num_generations is not None:
            warn("--num-generations applies to GRPO/RLOO only; ignored")
        if kl_coef is not None:
            given["kl_coef"] = kl_coef
        if kl_estimator is not None:
            given["kl_estimator"] = kl_estimator
        cfg = PPOConfig(**given)
        if batch_size is not None and batch_size % cfg.mini_batch_size:
            cfg.mini_batch_size = batch_size  # a small batch is one minibatch
        result = train_ppo(ws, policy, reward, prompts, experiment_name, cfg, force=force,
                           hypothesis=hypothesis)
    else:
        from bakeoff.train.rl import GroupRLConfig, train_group_rl

        if kl_estimator is not None:
            warn("--kl-estimator applies to PPO only; ignored")
        if kl_coef is not None:
            given["beta"] = kl_coef
        if num_generations is not None:
            given["num_generations"] = num_generations
        cfg = GroupRLConfig(algorithm=algorithm, **given)
        result = train_group_rl(ws, policy, reward, prompts, experiment_name, cfg, force=force,
                                hypothesis=hypothesis)
        result.pop("history", None)

    def render(r: dict) -> None:
        metrics = r.get("metrics", {})
        keys = [k for k in ("reward", "reward_raw", "kl", "entropy", "clipfrac", "value_loss",
                            "response_length", "eos_rate") if k in metrics] or sorted(metrics)[:10]
        out.print(f"{r['algorithm'].upper()} run {r['run_id']}", highlight=False)
        out.print(table("last step", ["metric", "value"], [(k, f"{metrics[k]:.4g}") for k in keys]))
        for c in r["checkpoints"]:
            out.print(c, highlight=False)
        err.print(f"MLflow: {r['tracking_uri']} experiment {r['experiment_name']}", highlight=False)

    emit(result, as_json, render)


commands = [ppo]
