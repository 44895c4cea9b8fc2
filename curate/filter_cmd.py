"""`bakeoff curate filter`: run the noise filters on a version."""

from __future__ import annotations

from typing import Any

import click

from bakeoff.context import get_workspace, json_option
from bakeoff.executor import executor_options, resolve_executor


def render_filter_report(rep: dict[str, Any], title: str = "filters") -> None:
    """A table per filter (hits, share, examples) and the filter x filter overlap."""
    from bakeoff.console import out, table  # table() shows user text literally

    out.print(table(
        f"{title}: {rep['rows_in']} rows in, {rep['rows_out']} kept, {rep['dropped']} dropped, "
        f"{rep['rewritten']} rewritten",
        ["filter", "action", "roles", "rows hit", "share", "dropped", "notes"],
        [(name, f["action"], f["roles"], f["hits"], f"{f['share']:.1%}", f["dropped"],
          ", ".join(f"{k} {f[k]}" for k in ("detected", "repaired", "unrepairable", "redacted") if k in f))
         for name, f in rep["filters"].items()]))
    for name, f in rep["filters"].items():
        if not f["examples"]:
            continue
        out.print(table(f"{name}: examples", ["row id", "side", "detail", "text"],
                        [(e["id"][:12], e["side"], e.get("detail") or "", e["text"])
                         for e in f["examples"]]))
    if rep.get("warning"):
        out.print(f"[bold red]WARNING: {escape(rep['warning']['message'])}[/]")
    names = rep["overlap"]["filters"]
    matrix = rep["overlap"]["matrix"]
    hit = [i for i, n in enumerate(names) if matrix[i][i]]
    if len(hit) > 1:
        out.print(table("overlap (rows hit by both)", ["", *[names[i] for i in hit]],
                        [(names[i], *[matrix[i][j] for j in hit]) for i in hit]))


@click.command("filter")
@click.argument("ref")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="YAML: filter name -> options (enabled, roles, action, thresholds).")
@click.option("--dry-run", is_flag=True, help="Report how many rows each filter hits; write no version.")
@click.option("--examples", "n_examples", type=int, default=3, show_default=True,
              help="Hit rows to show per filter.")
@executor_options
@json_option
def command(ref: str, config_path: str | None, dry_run: bool, n_examples: int, executor_kind: str | None,
            ray_address: str | None, as_json: bool) -> None:
    """Run the noise filters on NAME@vN and write the next version.

    Filters (in the order they run): structure, empty, length, mojibake,
    control, repetition, refusal, pii, echo (off by default), truncated,
    language. Each has an action (flag | drop, redact for pii, repair for
    mojibake/control) and roles (prompt | response | both). Dropped rows go to
    the ledger (stage 'filter', rule = filter name, and a reason in words).
    --dry-run shows how many rows each filter hits and --examples N of them.

    \b
    Example:
      bakeoff curate filter fin-train@v1 --dry-run --examples 10
      bakeoff curate filter fin-train@v1 --config filters.yaml --json
      bakeoff curate filter fin-train@v1 --executor ray --ray-address ray://<head-node>:10001

    \b
    filters.yaml:
      pii: {action: drop}
      language: {enabled: false}
      length: {max_chars: 8000, roles: response}
    """
    from bakeoff.console import emit, log
    from bakeoff.steps import commit_step

    from .filters import FilterSuiteConfig, filter_rows, load_filter_config

    ws = get_workspace()
    parent = ws.resolve(ref)
    config = FilterSuiteConfig(filters=load_filter_config(config_path), examples=max(0, n_examples))
    log(f"filtering {parent.ref} ({parent.rows} rows)")
    executor = resolve_executor(executor_kind, ray_address=ray_address)
    params = {"config": config.to_dict(), "config_file": config_path}
    if executor.is_ray:  # the rows stay on the workers; the driver streams the output
        from bakeoff.executor import ray_session

        from .on_ray.filters import filter_on_ray
        from .on_ray.rows import RowSource, commit_ray_step

        source = RowSource([ws.version_dir(parent) / "rows.parquet"])
        with ray_session(executor):
            ray_output = filter_on_ray(source, config, executor)
        rep = ray_output.report["filter"]
        version = None if dry_run else commit_ray_step(ws, parent, "filter", params, source, ray_output)
    else:
        output = filter_rows(ws.load(parent), config)
        rep = output.report["filter"]
        version = None if dry_run else commit_step(ws, parent, "filter", params, output)
    result: dict[str, Any] = {"parent": parent.ref, "dry_run": dry_run, **rep}
    if version is not None:
        result["version"] = version.ref
    del result["config"]

    def render(r: dict[str, Any]) -> None:
        from bakeoff.console import out

        render_filter_report(r, title=f"filter {r['parent']}")
        out.print("dry run: no version written" if r["dry_run"] else f"wrote {r['version']}")

    emit(result, as_json, render)
