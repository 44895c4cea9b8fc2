"""`bakeoff curate coverage`: how well a version covers the training objective."""

from __future__ import annotations

import click

from bakeoff.context import get_workspace, json_option
from bakeoff.executor import executor_options, resolve_executor


@click.command("coverage")
@click.argument("ref")
@click.option("--objectives", "objectives_path", required=True, type=click.Path(dir_okay=False),
              help="YAML file: values per axis (domain, doctype, task) with description, keywords, "
                   "examples and a minimum count.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False), default=None,
              help="Also write a self-contained HTML report (heatmap, histograms) here.")
@click.option("--model", default=None,
              help="Embedding model (default: the objectives' `model`, env BAKEOFF_EMBEDDING_MODEL, "
                   "else all-MiniLM-L6-v2).")
@click.option("--floor", type=float, default=None,
              help="Cosine under which a row stays unassigned (overrides the objectives' embedding_floor).")
@click.option("--no-diversity", is_flag=True,
              help="Skip per-cell diversity: only rows the labels and keywords miss are embedded.")
@executor_options
@json_option
def command(ref: str, objectives_path: str, html_path: str | None, model: str | None, floor: float | None,
            no_diversity: bool, executor_kind: str | None, ray_address: str | None, as_json: bool) -> None:
    """Measure a version against the training objective: domain x task counts,
    gaps under their minimum, off-objective rows, diversity, lengths.

    Rows are assigned per axis from their labels, else keywords, else embedding
    similarity to each value's description and examples ('unassigned' under
    the floor). Writes no version. With --executor ray the rows stay on the
    Ray workers (a partial report per block, merged here): the same report.

    \b
    Examples:
      bakeoff curate coverage fin-train@v1 --objectives objectives.yaml
      bakeoff curate coverage pool --objectives curate/demo_objectives.yaml --html coverage.html --json
      bakeoff curate coverage fin-train@v1 --objectives objectives.yaml --executor ray
    """
    from bakeoff.console import emit, log
    from bakeoff.curate.coverage import coverage_report, load_objectives, render_terminal, write_html

    ws = get_workspace()
    version = ws.resolve(ref)
    objectives = load_objectives(objectives_path)
    if floor is not None:
        objectives.floor = floor
    executor = resolve_executor(executor_kind, ray_address=ray_address)
    options = {"model": model, "diversity": not no_diversity, "dataset": version.ref}
    if executor.is_ray:
        from .on_ray.coverage import coverage_on_ray
        from .on_ray.rows import RowSource

        report = coverage_on_ray(RowSource([ws.version_dir(version) / "rows.parquet"]), objectives, executor,
                                 **options)
    else:
        report = coverage_report(ws.load(version), objectives, ws, **options)
    if html_path:
        path = write_html(report, html_path)
        report["html"] = str(path)
        log(f"wrote {path}")

    def render(r: dict) -> None:
        render_terminal(r)
        if r.get("html"):
            from bakeoff.console import out

            out.print(f"HTML report: {r['html']}", highlight=False, markup=False)

    emit(report, as_json, render)
