"""Helpers for commands: the workspace from the command line, common options."""

from __future__ import annotations

from typing import Any, Callable

import click

from bakeoff.workspace import Workspace


def get_workspace(ctx: click.Context | None = None) -> Workspace:
    """The workspace named by ``--workspace``/``BAKEOFF_WORKSPACE`` (created on first use)."""
    ctx = ctx or click.get_current_context()
    root = ctx.find_root()
    obj = root.obj if isinstance(root.obj, dict) else {}
    if "ws" not in obj:
        obj["ws"] = Workspace(obj.get("workspace"))
        root.obj = obj
    return obj["ws"]


def json_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--json``: print exactly one JSON document on stdout."""
    return click.option("--json", "as_json", is_flag=True,
                        help="Print one JSON document on stdout (progress goes to stderr).")(f)
