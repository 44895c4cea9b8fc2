"""`bakeoff curate semantic`: remove paraphrase-level duplicates by embedding cosine."""

from __future__ import annotations

import time
from typing import Any

import click

from bakeoff.context import get_workspace, json_option
from bakeoff.executor import executor_options, resolve_executor


def _render(result: dict[str, Any]) -> None:
    from bakeoff.console import out, table

    rows = [("rows in", result["rows_in"]), ("removed", result["removed"]), ("kept", result["rows_out"]),
            ("clusters", result["clusters"]), ("threshold (cosine)", result["threshold"]),
            ("model", result["model"]), ("index", result["search"].get("index")),
            ("candidate pairs checked", result["search"].get("candidates_checked"))]
    if result.get("skipped_empty"):
        rows.append(("empty scope text (kept, not compared)", result["skipped_empty"]))
    emb = result.get("embeddings") or {}
    if emb:
        rows.append(("embeddings computed / cached", f"{emb.get('computed', 0)} / {emb.get('cached', 0)}"))
    if result.get("rows_longer_than_window"):
        rows.append(("rows longer than the model's window (embedded in windows, not cut)",
                     f"{result['rows_longer_than_window']} ({result['share_longer_than_window']:.0%})"))
    rows.append(("new version", result.get("version") or "(dry run: nothing written)"))
    rows.append(("time", f"{result['seconds']:.2f}s"))
    out.print(table("semantic dedup", ["", ""], rows))
    if result.get("examples"):
        out.print(table("examples (removed -> kept)", ["cosine", "removed", "kept"],
                        [[f"{e['cosine']:.3f}", e["removed_text"][:70], e["kept_text"][:70]]
                         for e in result["examples"]]))
    from .dedup_cmd import render_warning

    render_warning(result.get("warning"))


@click.command("semantic")
@click.argument("ref")
@click.option("--threshold", type=float, default=0.95, show_default=True,
              help="Cosine similarity at or above which two rows are duplicates.")
@click.option("--scope", type=click.Choice(["prompt", "response", "all"]), default="all", show_default=True,
              help="Which text of a row to embed.")
@click.option("--keep", type=click.Choice(["first", "longest", "quality"]), default="first", show_default=True,
              help="Which row of a duplicate group survives.")
@click.option("--quality-column", default="quality", show_default=True,
              help="Numeric column (or key of `extra`) for --keep quality.")
@click.option("--model", default=None,
              help="Embedding model (default: env BAKEOFF_EMBEDDING_MODEL, else all-MiniLM-L6-v2; "
                   "'hashing' = fast offline stand-in).")
@click.option("--index", type=click.Choice(["auto", "flat", "ivf"]), default="auto", show_default=True,
              help="faiss index: exact flat, IVF for large sets, or auto by size.")
@click.option("--nprobe", type=int, default=16, show_default=True, help="IVF cells probed per query.")
@click.option("--batch-size", "embed_batch_size", type=int, default=None,
              help="Texts per embedding-model call (default 64).")
@click.option("--name", default=None, help="Write the result under this dataset name.")
@click.option("--dry-run", is_flag=True, help="Report what would be removed; write no version.")
@executor_options
@json_option
def command(ref: str, threshold: float, scope: str, keep: str, quality_column: str, model: str | None,
            index: str, nprobe: int, embed_batch_size: int | None, name: str | None, dry_run: bool,
            executor_kind: str | None, ray_address: str | None, as_json: bool) -> None:
    """Remove semantic duplicates: rows whose embeddings have cosine >= --threshold.

    Rows are embedded (cached in the workspace, so reruns and later steps reuse
    the vectors), ranked by --keep, and each row is compared through a faiss
    index with the rows kept before it. Every removed row goes to the ledger
    with the kept row it duplicates and their cosine (`bakeoff data why ID`).

    \b
    Examples:
      bakeoff curate semantic fin-train@v3 --threshold 0.95
      bakeoff curate semantic pool@v1 --scope prompt --keep longest --dry-run --json
      bakeoff curate semantic fin-train@v3 --executor ray   # embeddings by a Ray actor pool
    """
    from bakeoff.console import emit
    from bakeoff.curate.semantic import SemanticDedupConfig, semantic_dedup_rows
    from bakeoff.curate.embeddings import resolve_model_name
    from bakeoff.steps import commit_step

    cfg = SemanticDedupConfig(threshold=threshold, scope=scope, keep=keep, model=model,
                              quality_column=quality_column, index=index, nprobe=nprobe,
                              embed_batch_size=embed_batch_size)
    cfg.validate()
    ws = get_workspace()
    parent = ws.resolve(ref)
    t0 = time.perf_counter()
    executor = resolve_executor(executor_kind, ray_address=ray_address)
    output = semantic_dedup_rows(ws.load(parent), cfg, ws=ws, executor=executor)
    version = None
    if not dry_run:
        params = {k: v for k, v in vars(cfg).items()}
        params["model"] = resolve_model_name(cfg.model)
        version = commit_step(ws, parent, "dedup-semantic", params, output, name=name).ref
    rep = output.report
    result = {
        "parent": parent.ref, "version": version, "dry_run": dry_run,
        "rows_in": rep["rows_in"], "rows_out": rep["rows_out"], "removed": rep["removed"],
        "clusters": rep["clusters"], "largest_cluster": rep["largest_cluster"],
        "skipped_empty": rep["skipped_empty"], "threshold": threshold, "scope": scope, "keep": keep,
        "model": rep["config"]["model"], "search": rep["search"], "embeddings": rep["embeddings"],
        "similarity": rep["similarity"], "examples": rep["examples"],
        "rows_longer_than_window": rep["rows_longer_than_window"],
        "share_longer_than_window": rep["share_longer_than_window"], "warning": rep.get("warning"),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    emit(result, as_json, _render)
