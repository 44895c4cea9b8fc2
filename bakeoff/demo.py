"""`bakeoff demo`: the whole iteration loop on embedded defaults."""

from __future__ import annotations

import click


@click.group()
def demo() -> None:
    """Run the demo."""
