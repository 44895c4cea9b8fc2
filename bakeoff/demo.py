"""`bakeoff demo`: the whole iteration loop on embedded defaults."""

from __future__ import annotations

import click

from bakeoff.context import get_workspace, json_option


@click.group(invoke_without_command=True)
@click.pass_context
def demo(ctx: click.Context) -> None:
    """Run the demo: generate data, curate, build test sets, train and rank.

    \b
    Example:
      bakeoff demo data --seed 0
    """
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())


@demo.command("data")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed (same seed, same files).")
@click.option("--scale", type=float, default=1.0, show_default=True,
              help="Size multiplier (1.0: ~600 training rows, ~400 pool rows).")
@click.option("--out", "raw_dir", type=click.Path(file_okay=False), default=None,
              help="Where to write the raw files (default: inside the workspace cache).")
@json_option
def data_cmd(seed: int, scale: float, raw_dir: str | None, as_json: bool) -> None:
    """Write the demo corpus (with planted noise and its ground truth) and ingest it.

    Datasets: fin-train (finance-table QA, the training domain, noisy), pool
    (held-out finance, invoices, contracts), prefs (preference pairs), prompts
    (PPO prompts). ground_truth.jsonl lists every planted defect by file and line.

    \b
    Example:
      bakeoff demo data --seed 0
      bakeoff demo data --seed 1 --scale 0.2 --json
    """
    from bakeoff.console import emit, log, out, table
    from bakeoff.demo_data import make_demo_workspace

    ws = get_workspace()
    log(f"generating demo data (seed {seed}, scale {scale:g})")
    result = make_demo_workspace(ws, seed=seed, scale=scale, raw_dir=raw_dir)

    def render(r: dict) -> None:
        rows = [(name, ref, r["ingest"][name]["rows_in"], r["ingest"][name]["accepted"],
                 r["ingest"][name]["quarantined"]) for name, ref in r["datasets"].items()]
        out.print(table("demo datasets", ["dataset", "version", "rows in", "accepted", "quarantined"], rows))
        out.print(f"raw files: {r['raw_dir']}\nground truth: {r['ground_truth']}")

    emit(result, as_json, render)
