"""A quiet terminal: library logs go to the workspace's ``logs/``, bakeoff's own
progress and summaries stay on the terminal.

Libraries the loop drives (transformers, TRL, datasets, MLflow, PEFT) print
warnings, INFO lines, progress bars and load reports of their own. They are
useful when something goes wrong, so nothing is dropped: ``route_library_logs``
sends them to ``logs/bakeoff-<time>.log`` in the workspace, and with ``-v`` to
stderr as well. What stays on the terminal is bakeoff's: a rich progress line per
step (training steps with steps/s, loss and ETA) and its summaries.

How each source is caught:

- Python warnings: ``logging.captureWarnings`` turns them into log records.
- ``logging`` records (MLflow, transformers, datasets, urllib3, ...): one file
  handler on the root logger; MLflow and transformers are told not to install
  stderr handlers of their own but to propagate.
- HF progress bars and anything a library writes to ``sys.stdout``/``sys.stderr``
  directly: ``library_output`` redirects both to the log file around a step,
  while bakeoff's console keeps the real stderr.
- The Trainer's tqdm bar: transformers picks its progress callback from
  ``transformers.trainer.DEFAULT_PROGRESS_CALLBACK`` (that is how notebooks get
  theirs); ``RichTrainerProgress`` replaces it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterator

from bakeoff.console import err

#: Loggers of libraries that install stderr handlers of their own.
_SELF_CONFIGURING = ("mlflow", "transformers", "datasets", "trl", "peft", "accelerate", "alembic")

_state: dict[str, Any] = {"path": None, "verbose": False, "handler": None}


def route_library_logs(log_dir: str | Path, verbose: bool = False, training: bool = True) -> Path:
    """Send library logs, warnings and progress bars to a new file in ``log_dir``
    (and, with ``verbose``, to stderr too). Returns the log file's path.
    Calling it again moves the log to the new directory. ``training=False``
    skips the transformers set-up (and its import) for commands that train nothing."""
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    path = log_dir / f"bakeoff-{time.strftime('%Y%m%d-%H%M%S')}.log"
    # Before MLflow is imported: it then leaves logging to us (MLflow >= 2.x).
    os.environ["MLFLOW_CONFIGURE_LOGGING"] = "false"
    if not verbose:
        for var in ("HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS"):
            os.environ[var] = "1"
    root = logging.getLogger()
    if _state["handler"] is not None:
        root.removeHandler(_state["handler"])
        _state["handler"].close()
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    if verbose and not any(getattr(h, "_bakeoff_stderr", False) for h in root.handlers):
        stream = logging.StreamHandler(sys.stderr)
        stream._bakeoff_stderr = True  # type: ignore[attr-defined]
        stream.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        root.addHandler(stream)
    logging.captureWarnings(True)
    for name in _SELF_CONFIGURING:
        lib = logging.getLogger(name)
        for h in list(lib.handlers):   # their own stderr handlers, if already imported
            lib.removeHandler(h)
        lib.propagate = True
    _state.update(path=path, verbose=verbose, handler=handler)
    if training:
        _quiet_transformers(verbose)
    return path


def ensure_library_logs(workspace_root: str | Path, training: bool = True) -> Path:
    """``route_library_logs`` into ``workspace_root/logs`` unless already there
    (keeps ``-v`` as chosen by the command)."""
    log_dir = Path(workspace_root) / "logs"
    current = _state["path"]
    if current is not None and current.parent.resolve() == log_dir.resolve():
        return current
    return route_library_logs(log_dir, _state["verbose"], training)


def stop_library_logs() -> None:
    """Undo ``route_library_logs``'s file handler and warning capture (for API
    users and tests; library handlers already removed stay removed)."""
    if _state["handler"] is not None:
        logging.getLogger().removeHandler(_state["handler"])
        _state["handler"].close()
    logging.captureWarnings(False)
    _state.update(path=None, verbose=False, handler=None)


def log_path() -> Path | None:
    """The current log file (None before ``route_library_logs``)."""
    return _state["path"]


def _quiet_transformers(verbose: bool) -> None:
    """transformers keeps its own handler and tqdm switch; the Trainer's progress
    bar becomes ours. Only if transformers is installed (it is imported here,
    which the training steps that follow would do anyway)."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover - transformers is a dependency
        return
    hf_logging.disable_default_handler()
    hf_logging.enable_propagation()
    if not verbose:
        hf_logging.disable_progress_bar()
    try:
        import datasets

        if not verbose:
            datasets.disable_progress_bars()
    except ImportError:  # pragma: no cover
        pass
    import transformers.trainer as hf_trainer

    hf_trainer.DEFAULT_PROGRESS_CALLBACK = rich_trainer_progress()


@contextlib.contextmanager
def library_output() -> Iterator[None]:
    """Around a step: what libraries print goes to the log file (with ``-v``: to
    stderr), while bakeoff's console keeps writing to the terminal's stderr.
    stdout is never written to: results own it (``--json``)."""
    path = _state["path"]
    if path is None or _state["verbose"]:
        with contextlib.redirect_stdout(sys.stderr):
            yield
        return
    pinned = err._file  # noqa: SLF001 - rich resolves sys.stderr lazily; pin the real one
    err.file = sys.stderr
    with open(path, "a", encoding="utf-8", buffering=1) as fh, \
            contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
        try:
            yield
        finally:
            err.file = pinned  # type: ignore[assignment]


def rich_trainer_progress() -> type:
    """A transformers ``TrainerCallback`` class drawing one rich progress line per
    training run: steps done of total, steps/s, the latest loss, elapsed and ETA."""
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    from bakeoff.console import progress_display
    from transformers import TrainerCallback

    class RichTrainerProgress(TrainerCallback):
        def __init__(self) -> None:
            self.bar: Progress | None = None
            self.task: Any = None

        def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001
            if not state.is_world_process_zero:
                return
            # Plain periodic lines where stderr is not a terminal (see console.PlainProgress).
            self.bar = progress_display(TextColumn("  [bold]training[/]"), BarColumn(), MofNCompleteColumn(),
                                        TextColumn("{task.fields[speed_text]}"),
                                        TextColumn("loss {task.fields[loss]}"),
                                        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                        console=err, transient=False)
            self.bar.start()
            self.task = self.bar.add_task("train", total=state.max_steps, loss="–", speed_text="")
            self.bar.update(self.task, completed=state.global_step)

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
            if self.bar is None:
                return
            self.bar.update(self.task, completed=state.global_step)
            speed = self.bar.tasks[0].speed
            text = "" if not speed else (f"{speed:.2f} steps/s" if speed >= 1 else f"{1 / speed:.1f} s/step")
            self.bar.update(self.task, speed_text=text)

        def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
            if self.bar is not None and logs and "loss" in logs:
                self.bar.update(self.task, loss=f"{float(logs['loss']):.3f}")

        def on_train_end(self, args, state, control, **kwargs):  # noqa: ANN001
            if self.bar is not None:
                self.bar.stop()
                self.bar = None

    return RichTrainerProgress
