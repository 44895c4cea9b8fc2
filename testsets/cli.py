"""`bakeoff testsets` commands."""

from __future__ import annotations

import click


@click.group()
def testsets() -> None:
    """testsets commands."""
