"""Progress where stderr is not a terminal (a logged or piped demo): plain
periodic lines with done/total, rate and ETA instead of rich's live bar, which
draws nothing there."""

from __future__ import annotations

import io
import json
import subprocess
import sys

from rich.console import Console

import bakeoff.console as console


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _not_a_terminal(monkeypatch) -> tuple[io.StringIO, Clock]:
    buf, clock = io.StringIO(), Clock()
    monkeypatch.setattr(console, "err", Console(file=buf, force_terminal=False, width=200, get_time=clock))
    return buf, clock


def test_plain_lines_every_tenth_and_at_the_end(monkeypatch):
    buf, clock = _not_a_terminal(monkeypatch)
    with console.progress() as p:
        assert isinstance(p, console.PlainProgress)
        task = p.add_task("evaluate [bold]base[/]", total=100)
        for _ in range(100):
            clock.now += 0.5            # 2 items a second: 10 % every 5 s
            p.advance(task)
    lines = buf.getvalue().splitlines()
    assert len(lines) == 10, lines    # 10 %, 20 %, ... 100 %, each once
    assert lines[0].startswith("evaluate base: 10/100 (10 %), 2.0 it/s, elapsed 0:05, ETA 0:45")
    assert lines[-1].startswith("evaluate base: 100/100 (100 %)") and lines[-1].endswith("done")
    assert "[bold]" not in buf.getvalue() and "\x1b[" not in buf.getvalue()


def test_slow_task_prints_every_ten_seconds(monkeypatch):
    buf, clock = _not_a_terminal(monkeypatch)
    with console.progress() as p:
        task = p.add_task("models", total=1000)
        for _ in range(35):
            clock.now += 1.0            # 1 item a second: 0.1 % a second
            p.advance(task)
    lines = buf.getvalue().splitlines()
    # at 10, 20 and 30 s, and where the unfinished task was when the display stopped
    assert [ln.split(",")[0] for ln in lines] == ["models: 10/1000 (1 %)", "models: 20/1000 (2 %)",
                                                  "models: 30/1000 (3 %)", "models: 35/1000 (4 %)"]
    assert "s/it" not in lines[0] and "1.0 it/s" in lines[0] and "ETA 16:30" in lines[0]


def test_steps_slower_than_rich_speed_window_still_show_rate_and_eta(monkeypatch):
    buf, clock = _not_a_terminal(monkeypatch)
    with console.progress() as p:
        task = p.add_task("train", total=12)
        for step in range(1, 4):
            clock.now += 40.0           # one step every 40 s: rich's 30 s window holds one sample
            p.update(task, completed=step)
    first = buf.getvalue().splitlines()[0]
    assert first == "train: 1/12 (8 %), 40.0 s/it, elapsed 0:40, ETA 7:20"


def test_a_task_of_a_few_seconds_prints_only_its_end(monkeypatch):
    buf, clock = _not_a_terminal(monkeypatch)
    with console.progress() as p:
        task = p.add_task("embedding", total=50)
        for _ in range(50):
            clock.now += 0.06
            p.advance(task)
    lines = buf.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("embedding: 50/50 (100 %)") and lines[0].endswith("done")


def test_terminal_keeps_the_rich_bar(monkeypatch):
    monkeypatch.setattr(console, "err", Console(file=io.StringIO(), force_terminal=True))
    with console.progress() as p:
        assert not isinstance(p, console.PlainProgress)


def test_json_stdout_stays_one_document_with_progress_on_stderr():
    """Progress lines go to stderr; stdout holds exactly the JSON document."""
    code = ("from bakeoff.console import progress, emit\n"
            "with progress() as p:\n"
            "    t = p.add_task('work', total=3)\n"
            "    for _ in range(3): p.advance(t)\n"
            "emit({'ok': True}, True)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(done.stdout) == {"ok": True}
    assert "work: 3/3 (100 %)" in done.stderr
