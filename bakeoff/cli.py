"""The ``bakeoff`` command: a thin click layer over the Python API.

Each stage keeps its commands beside its code (``bakeoff.curate.cli``,
``bakeoff.testsets.cli``, ...); this module only assembles them and turns
``BakeoffError`` into a one-line message. Command modules import heavy libraries
(torch, transformers, mlflow) inside the commands, so ``--help`` stays fast.
"""

from __future__ import annotations

import sys

import click

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


_register()


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
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
