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


class PlainProgress(Progress):
    """A progress display for a stderr that is not a terminal (a log file, a pipe,
    CI): rich's live bar draws nothing there until it stops, so a logged run would
    show no progress for minutes. This one prints a plain line per task instead:
    description, done/total, rate and ETA, every ``every`` seconds or each ``step``
    of the total (but not within ``min_gap`` seconds of the last line: a task of a
    few seconds prints only its end), and once when the task finishes."""

    def __init__(self, *columns: Any, every: float = 10.0, step: float = 0.1, min_gap: float = 5.0,
                 **kwargs: Any):
        kwargs.pop("transient", None)
        super().__init__(*columns, disable=True, **kwargs)
        self.every, self.step, self.min_gap = every, step, min_gap
        self._said: dict[Any, tuple[float, float]] = {}   # task id -> (time, fraction) last printed

    def add_task(self, description: str, *args: Any, **kwargs: Any) -> Any:
        task_id = super().add_task(description, *args, **kwargs)
        self._said[task_id] = (self.get_time(), 0.0)
        return task_id

    def update(self, task_id: Any, **kwargs: Any) -> None:
        super().update(task_id, **kwargs)
        self._report(task_id)

    def advance(self, task_id: Any, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._report(task_id)

    def stop(self) -> None:
        for task in self.tasks:  # where each task stopped, unless that was the last line
            fraction = task.completed / task.total if task.total else 0.0
            if task.completed and self._said.get(task.id, (0.0, -1.0))[1] != fraction:
                self._report(task.id, force=True)
        super().stop()

    def _report(self, task_id: Any, force: bool = False) -> None:
        task = self._tasks[task_id]
        said_at, said_fraction = self._said.get(task_id, (0.0, 0.0))
        fraction = task.completed / task.total if task.total else 0.0
        now = self.get_time()
        due = (force or (task.total is not None and fraction >= 1.0)
               or now - said_at >= self.every
               or (fraction - said_fraction >= self.step and now - said_at >= self.min_gap))
        if not due or (said_fraction >= 1.0 and not force):
            return
        self._said[task_id] = (now, fraction)
        self.console.print(plain_line(task), markup=False, highlight=False)


def plain_line(task: Task) -> str:
    """``description: done/total (pct), rate, elapsed, ETA`` for a log line."""
    done = f"{task.completed:g}"
    parts = [f"{done}/{task.total:g} ({100 * task.completed / task.total:.0f} %)" if task.total else done]
    # rich estimates speed over its last 30 s; slower steps than that leave it
    # empty, and the average since the start stands in.
    speed = task.finished_speed or task.speed or (task.completed / task.elapsed if task.elapsed else None)
    if speed:
        parts.append(f"{speed:.1f} it/s" if speed >= 1 else f"{1 / speed:.1f} s/it")
    if task.elapsed is not None:
        parts.append(f"elapsed {_clock(task.elapsed)}")
    if task.total and task.completed >= task.total:
        parts.append("done")
    elif task.total and speed:
        parts.append(f"ETA {_clock((task.total - task.completed) / speed)}")
    if task.fields.get("loss") not in (None, "", "–"):
        parts.append(f"loss {task.fields['loss']}")
    return f"{Text.from_markup(task.description).plain.strip()}: {', '.join(parts)}"


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"


def progress_display(*columns: Any, transient: bool = True, console: Console | None = None) -> Progress:
    """A rich ``Progress`` with these columns on a terminal; a :class:`PlainProgress`
    (periodic plain lines) where stderr is not one."""
    console = console or err
    if console.is_terminal or console.is_jupyter:
        return Progress(*columns, console=console, transient=transient)
    return PlainProgress(*columns, console=console)


@contextmanager
def progress(transient: bool = True) -> Iterator[Progress]:
    """A progress display on stderr: done/total, rate, elapsed, ETA (plain
    periodic lines where stderr is not a terminal)."""
    with progress_display(SpinnerColumn(), TextColumn("[progress.description]{task.description}"),
                          BarColumn(), MofNCompleteColumn(), RateColumn(), TimeElapsedColumn(), TextColumn("ETA"),
                          TimeRemainingColumn(), transient=transient) as p:
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
