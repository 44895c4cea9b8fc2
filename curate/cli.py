"""`bakeoff curate` commands."""

from __future__ import annotations

import click


@click.group()
def curate() -> None:
    """curate commands."""
