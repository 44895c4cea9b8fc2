"""`bakeoff curate` commands. Each step keeps its command beside its code."""

from __future__ import annotations

import importlib

import click


@click.group()
def curate() -> None:
    """Clean, deduplicate and measure a dataset version; each step writes a new version.

    \b
    Example:
      bakeoff curate run fin-train@v1 recipe.yaml
    """


# Command modules, one per step (each defines `command`). Registered in this order.
_COMMAND_MODULES = ("filter_cmd", "dedup_cmd", "semantic_cmd", "coverage_cmd", "recipe_cmd")

for _name in _COMMAND_MODULES:
    try:
        _module = importlib.import_module(f"bakeoff.curate.{_name}")
    except ModuleNotFoundError as _exc:  # TODO(lead): make explicit once all steps exist
        if _exc.name != f"bakeoff.curate.{_name}":
            raise
        continue
    curate.add_command(_module.command)
