"""`bakeoff curate run`: several curation steps from a recipe file, one new version."""

from __future__ import annotations

from typing import Any

import click

from bakeoff.context import get_workspace, json_option
from bakeoff.executor import executor_options, resolve_executor


@click.command("run")
@click.argument("ref")
@click.argument("recipe_path", metavar="RECIPE.yaml", type=click.Path(dir_okay=False))
@click.option("--intermediate", is_flag=True, help="Also write a version after each row-changing step.")
@click.option("--name", "out_name", default=None, help="Dataset name of the result (default: recipe `output`, "
              "else the input's name).")
@executor_options
@json_option
def command(ref: str, recipe_path: str, intermediate: bool, out_name: str | None, executor_kind: str | None,
            ray_address: str | None, as_json: bool) -> None:
    """Run the steps of RECIPE.yaml on NAME@vN in order and write one new version.

    Steps: filter, dedup, semantic, coverage (report only). The version's ledger
    is the union of the steps' ledgers; the summary gives rows in/out and seconds
    per step. The packaged example is curate/default_recipe.yaml.

    \b
    Example:
      bakeoff curate run fin-train@v1 curate/default_recipe.yaml
      bakeoff curate run fin-train@v1 recipe.yaml --intermediate --json
      bakeoff curate run fin-train@v1 recipe.yaml --executor ray --ray-address ray://<head-node>:10001

    \b
    recipe.yaml:
      steps:
        - filter: {pii: {action: redact}}
        - dedup: {threshold: 0.8}
        - semantic: {threshold: 0.95}
        - coverage: {objectives: objectives.yaml}
    """
    from bakeoff.console import emit

    from .recipe import load_recipe, run_recipe

    ws = get_workspace()
    recipe = load_recipe(recipe_path)  # checked in full before any step runs
    executor = resolve_executor(executor_kind, ray_address=ray_address)
    result = run_recipe(ws, ref, recipe, intermediate=intermediate, name=out_name, executor=executor)
    doc: dict[str, Any] = {"parent": ws.resolve(ref).ref, **result.to_dict()}
    emit(doc, as_json, _render)


def _render(doc: dict[str, Any]) -> None:
    from bakeoff.console import out, table

    from .filter_cmd import render_filter_report

    from .dedup_cmd import render_warning

    for key, rep in doc["reports"].items():
        step = key.split(":", 1)[1]
        if step in ("dedup", "semantic"):
            render_warning(rep.get("warning"))
        if step == "filter" and "filter" in rep:
            render_filter_report(rep["filter"], title=f"step {key}")
        elif step == "coverage":
            try:
                from .coverage import render_terminal

                render_terminal(rep)
            except Exception:  # noqa: BLE001 - a rendering problem must not hide the result
                pass
    rows = [(i + 1, s["step"], f"{s['rows_in']:,}", f"{s['rows_out']:,}", f"{s['removed']:,}",
             ", ".join(f"{k} {v}" for k, v in s.get("by_stage", {}).items()), f"{s['seconds']:.2f}",
             s.get("version", "")) for i, s in enumerate(doc["steps"])]
    out.print(table(f"recipe on {doc['parent']} -> {doc['version']}",
                    ["#", "step", "rows in", "rows out", "removed", "by stage", "seconds", "version"], rows))
    total = sum(s["seconds"] for s in doc["steps"])
    out.print(f"wrote {doc['version']} ({doc['rows']:,} rows) in {total:.1f}s")
