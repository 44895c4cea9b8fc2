"""Where a step's batches run: in this process (``local``, the default) or on Ray.

The steps themselves do not change with the executor (NeMo Curator's split of
stages from executors): a step asks the executor for a Ray session only when it
was told to run on Ray, and the driver alone writes the workspace catalog
(DuckDB is single-writer), whichever executor computed the rows.

Which executor runs, first match wins:
1. ``--executor local|ray`` on the command line;
2. ``executor:`` in a pipeline file;
3. the ``BAKEOFF_EXECUTOR`` environment variable;
4. ``local``.

``--ray-address`` (or ``BAKEOFF_RAY_ADDRESS``, or Ray's own ``RAY_ADDRESS``)
joins an existing cluster; without one, a local Ray instance is started with
this machine's cores and no dashboard.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import click

from bakeoff.workspace import BakeoffError

EXECUTORS = ("local", "ray")


@dataclass(frozen=True)
class Executor:
    """Which executor runs a step, and the Ray cluster to join (None: start one here)."""

    kind: str = "local"
    ray_address: str | None = None
    num_cpus: int | None = None  # for a Ray instance started here; None: all cores

    @property
    def is_ray(self) -> bool:
        return self.kind == "ray"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "ray_address": self.ray_address}


LOCAL = Executor()


def resolve_executor(cli: str | None = None, pipeline: str | None = None,
                     ray_address: str | None = None) -> Executor:
    """The executor from the command line, a pipeline file, the environment, or ``local``."""
    kind = cli or pipeline or os.environ.get("BAKEOFF_EXECUTOR") or "local"
    kind = kind.strip().lower()
    if kind not in EXECUTORS:
        raise BakeoffError(f"unknown executor {kind!r}: use one of {', '.join(EXECUTORS)}")
    address = ray_address or os.environ.get("BAKEOFF_RAY_ADDRESS") or os.environ.get("RAY_ADDRESS") or None
    return Executor(kind=kind, ray_address=address)


def executor_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--executor`` and ``--ray-address``; the command receives ``executor_kind`` and
    ``ray_address`` and calls ``resolve_executor(executor_kind, ray_address=ray_address)``."""

    f = click.option("--ray-address", default=None, metavar="ADDR",
                     help="Join this Ray cluster (default: $BAKEOFF_RAY_ADDRESS or $RAY_ADDRESS; "
                          "else start a local Ray instance).")(f)
    f = click.option("--executor", "executor_kind", type=click.Choice(EXECUTORS), default=None,
                     help="Where batches run: local (this process, the default) or ray "
                          "(needs pip install 'bakeoff[ray]'; default: $BAKEOFF_EXECUTOR).")(f)
    return f


def ray_available() -> bool:
    """Whether the optional ``ray`` extra is installed."""
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


@contextmanager
def ray_session(executor: Executor) -> Iterator[Any]:
    """The ``ray`` module, initialised: joins ``executor.ray_address`` or starts a
    local instance (this machine's cores, no dashboard). A session this call
    started is shut down on exit; one that was already running is left alone."""
    try:
        import ray
    except ImportError:
        raise BakeoffError("--executor ray needs Ray: pip install 'bakeoff[ray]'") from None
    started = False
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                  "logging_level": "WARNING", "configure_logging": True}
        if executor.ray_address:
            kwargs["address"] = executor.ray_address
        else:
            kwargs["num_cpus"] = executor.num_cpus or os.cpu_count() or 1
        try:
            ray.init(**kwargs)
        except ConnectionError as exc:
            raise BakeoffError(f"cannot join the Ray cluster at {executor.ray_address}: {exc}") from None
        started = True
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()
