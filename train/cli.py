"""`bakeoff train` commands."""

from __future__ import annotations

import click


@click.group()
def train() -> None:
    """train commands."""
