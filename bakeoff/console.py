"""Output conventions shared by every command.

- Results go to stdout: a rich rendering for people, or exactly one JSON document
  with ``--json``.
- Progress bars, logs and warnings go to stderr, so ``--json`` output stays clean.
- User text (labels, file names, quarantined records) is shown literally: rich
  would read ``[/bold]`` in it as markup (and raise ``MarkupError`` on a stray
  closing tag), so ``table`` escapes every cell and ``escape`` is there for text
  printed with ``out.print``.
"""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator, TypeVar

from rich.console import Console
from rich.markup import escape as _rich_escape
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, SpinnerColumn, Task,
                           TextColumn, TimeElapsedColumn, TimeRemainingColumn)
from rich.table import Table
from rich.text import Text

#: For progress, logs and warnings.
err = Console(stderr=True)
#: For human-readable results.
out = Console()

T = TypeVar("T")


def escape(text: Any) -> str:
    """``text`` as a string rich prints literally (no markup)."""
    return _rich_escape("" if text is None else str(text))


def log(message: str) -> None:
    err.print(message, highlight=False)


def warn(message: str) -> None:
    err.print(f"[bold yellow]warning:[/] {escape(message)}", highlight=False)


def emit(result: Any, as_json: bool, render: Callable[[Any], None] | None = None) -> None:
    """Print a command's result: one JSON document, or ``render(result)`` for people."""
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2, default=str) + "\n")
        sys.stdout.flush()
    elif render is not None:
        render(result)
    else:
        out.print_json(json.dumps(result, default=str))


def table(title: str | None, columns: list[str], rows: Iterable[Iterable[Any]], markup: bool = False) -> Table:
    """A rich table. Cells are shown literally unless ``markup`` (then the caller
    escapes the user text in them)."""
    t = Table(title=None if title is None else escape(title), title_justify="left")
    for c in columns:
        t.add_column(escape(c))
    for r in rows:
        t.add_row(*["" if v is None else (str(v) if markup else escape(v)) for v in r])
    return t


class RateColumn(ProgressColumn):
    """Items per second (or seconds per item when slower than one a second)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        if not speed:
            return Text("", style="progress.data.speed")
        return Text(f"{speed:.1f} it/s" if speed >= 1 else f"{1 / speed:.1f} s/it", style="progress.data.speed")


@contextmanager
def progress(transient: bool = True) -> Iterator[Progress]:
    """A rich progress display on stderr: done/total, rate, elapsed, ETA."""
    with Progress(SpinnerColumn(), TextColumn("[progress.description]{task.description}"),
                  BarColumn(), MofNCompleteColumn(), RateColumn(), TimeElapsedColumn(), TextColumn("ETA"),
                  TimeRemainingColumn(), console=err, transient=transient) as p:
        yield p


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate with a progress bar on stderr."""
    with progress() as p:
        task = p.add_task(description, total=total if total is not None else _len(items))
        for item in items:
            yield item
            p.advance(task)


def _len(items: Iterable[Any]) -> int | None:
    try:
        return len(items)  # type: ignore[arg-type]
    except TypeError:
        return None
