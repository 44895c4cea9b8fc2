"""`bakeoff evaluate` commands."""

from __future__ import annotations

import click


@click.group()
def evaluate() -> None:
    """evaluate commands."""
