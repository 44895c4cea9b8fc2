"""`bakeoff curate` commands. Each step keeps its command beside its code."""

from __future__ import annotations

import click


@click.group()
def curate() -> None:
    """Clean, deduplicate and measure a dataset version; each step writes a new version.

    \b
    Example:
      bakeoff curate run fin-train@v1 recipe.yaml
    """


# One command per step, each defined beside its code.
from bakeoff.curate import coverage_cmd, dedup_cmd, filter_cmd, recipe_cmd, semantic_cmd  # noqa: E402

for _module in (filter_cmd, dedup_cmd, semantic_cmd, coverage_cmd, recipe_cmd):
    curate.add_command(_module.command)
