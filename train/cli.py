"""`bakeoff train` commands."""

from __future__ import annotations

import importlib

import click


@click.group()
def train() -> None:
    """Train: SFT, reward model, PPO; every run tracked in MLflow.

    \b
    Example:
      bakeoff train sft --dataset fin-train@v3 --model smollm2 --experiment_name fin
    """


# Command modules (each defines `commands`, a list of click commands).
_COMMAND_MODULES = ("sft_cmd", "ppo_cmd")

for _name in _COMMAND_MODULES:
    try:
        _module = importlib.import_module(f"bakeoff.train.{_name}")
    except ModuleNotFoundError as _exc:  # TODO(lead): make explicit once all commands exist
        if _exc.name != f"bakeoff.train.{_name}":
            raise
        continue
    for _cmd in _module.commands:
        train.add_command(_cmd)
