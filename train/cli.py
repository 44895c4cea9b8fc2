"""`bakeoff train` commands."""

from __future__ import annotations

import click


@click.group()
def train() -> None:
    """Train: SFT, reward model, PPO; every run tracked in MLflow.

    \b
    Example:
      bakeoff train sft --dataset fin-train@v3 --model smollm2 --experiment fin
      bakeoff train rl --algorithm ppo --policy CKPT --reward RM_CKPT --prompts prompts@v1 --experiment fin
    """


# Commands are defined beside their trainers.
from bakeoff.train import ppo_cmd, sft_cmd  # noqa: E402

for _cmd in (*sft_cmd.commands, *ppo_cmd.commands):
    train.add_command(_cmd)
train.add_command(ppo_cmd.rl, name="ppo")  # the earlier name of `train rl`
