"""`bakeoff data` commands."""

from __future__ import annotations

import click


@click.group()
def data() -> None:
    """Dataset versions: ingest, list, log, show, diff, export, why, quarantine."""
