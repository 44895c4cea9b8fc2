"""`bakeoff pipeline run pipeline.yaml`: the demo loop on a user's own files."""

from __future__ import annotations

import click


@click.group()
def pipeline() -> None:
    """Run a pipeline file."""
