"""The ``bakeoff`` command: a thin click layer over the Python API.

Each stage keeps its commands beside its code (``bakeoff.curate.cli``,
``bakeoff.testsets.cli``, ...); this module only assembles them and turns
errors into one-line messages (``BakeoffError``, and ``OSError`` such as a full
disk or a name too long, with what to do). ``--workspace`` is accepted before the
command and after it (``bakeoff data ingest f.jsonl --workspace w``). Command modules import heavy libraries
(torch, transformers, mlflow) inside the commands, so ``--help`` stays fast.
"""

from __future__ import annotations

import errno
import sys

import click
import duckdb

from bakeoff import __version__
from bakeoff.workspace import BakeoffError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="bakeoff")
@click.option("--workspace", "-w", envvar="BAKEOFF_WORKSPACE", default="bakeoff-workspace",
              show_default=True, type=click.Path(file_okay=False),
              help="Workspace directory (env: BAKEOFF_WORKSPACE); created on first use.")
@click.pass_context
def cli(ctx: click.Context, workspace: str) -> None:
    """bakeoff: curate fine-tuning data, build held-out test sets, train, and rank
    every checkpoint on the full test set.

    \b
    Example:
      bakeoff demo --quick
      bakeoff data ingest train.jsonl --name fin --meta domain=finance
    """
    ctx.obj = {"workspace": workspace}


def _set_workspace(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    """``--workspace`` given after a command: it wins over the one before it."""
    if value is None:
        return
    root = ctx.find_root()
    root.obj = {**(root.obj if isinstance(root.obj, dict) else {}), "workspace": value}
    root.obj.pop("ws", None)


def _add_workspace_option(group: click.Group) -> None:
    """Give every command under ``group`` its own ``--workspace``/``-w``."""
    for cmd in group.commands.values():
        if isinstance(cmd, click.Group):
            _add_workspace_option(cmd)
        elif not any(getattr(p, "name", None) == "workspace_override" for p in cmd.params):
            cmd.params.append(click.Option(
                ["--workspace", "-w", "workspace_override"], default=None, expose_value=False,
                is_eager=True, type=click.Path(file_okay=False), callback=_set_workspace,
                help="Workspace directory (same as `bakeoff --workspace DIR ...`)."))


def _register() -> None:
    from bakeoff.data_cli import data
    from bakeoff.curate.cli import curate
    from bakeoff.testsets.cli import testsets
    from bakeoff.train.cli import train
    from bakeoff.evaluate.cli import evaluate
    from bakeoff.demo import demo
    from bakeoff.pipeline import pipeline
    from bakeoff.overview import report_cmd

    for group in (data, curate, testsets, train, evaluate, demo, pipeline, report_cmd):
        cli.add_command(group)
    _add_workspace_option(cli)


_register()


#: What to do about the OS errors a user can fix.
_OS_ADVICE = {
    errno.ENOSPC: "the disk is full; free space (or point --workspace at a larger disk) and run again",
    errno.EDQUOT: "the disk quota is exceeded; free space and run again",
    errno.ENAMETOOLONG: "a file name is too long; use a shorter name or path",
    errno.EACCES: "permission denied; check the permissions of the path, or use another --workspace",
    errno.EPERM: "operation not permitted; check the permissions of the path",
    errno.EROFS: "the file system is read-only; use another --workspace or output path",
    errno.ENOENT: "no such file or directory",
}


def os_error_message(exc: OSError) -> str:
    """One line for an OSError: what failed, on which path, and what to do."""
    what = _OS_ADVICE.get(exc.errno or -1) or exc.strerror or type(exc).__name__
    path = exc.filename if exc.filename is not None else None
    where = f" ({path})" if path is not None and len(str(path)) <= 200 else \
        (f" ({str(path)[:200]}...)" if path is not None else "")
    return " ".join(f"{what}{where}".split())


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except BakeoffError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except OSError as exc:
        click.echo(f"error: {os_error_message(exc)}", err=True)
        sys.exit(1)
    except duckdb.IOException as exc:  # DuckDB's own I/O errors (e.g. disk full while writing the catalog)
        text = str(exc)
        code = next((e for e, words in ((errno.ENOSPC, "No space left"), (errno.ENAMETOOLONG, "name too long"),
                                        (errno.EACCES, "Permission denied")) if words in text), None)
        msg = os_error_message(OSError(code, text)) if code else " ".join(text.split())[:300]
        click.echo(f"error: {msg}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
