"""`bakeoff curate dedup`: exact + MinHash near-duplicate removal, on a dataset
version (writes the next version) or directly on a JSONL/Parquet file (writes a
ledger of removed lines; no workspace needed)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click

from bakeoff.context import get_workspace, json_option
from bakeoff.executor import executor_options, resolve_executor
from bakeoff.workspace import BakeoffError

FILE_SUFFIXES = (".jsonl", ".ndjson", ".json", ".parquet")


def read_text_file(path: Path, text_field: str, quality_field: str | None = None):
    """Texts of a JSONL file, one per *line* (blank lines and lines without the
    field are empty texts, never duplicates, so ``row`` = 0-based line index),
    or of a Parquet file, one per row. Returns (texts, quality or None)."""
    import polars as pl

    quality = None
    if path.suffix == ".parquet":
        df = pl.read_parquet(path)
        if text_field not in df.columns:
            raise BakeoffError(f"{path}: no column {text_field!r} (columns: {', '.join(df.columns)})")
        texts = df[text_field].cast(pl.String)
        if quality_field:
            if quality_field not in df.columns:
                raise BakeoffError(f"{path}: no column {quality_field!r} for --keep quality")
            quality = df[quality_field].cast(pl.Float64, strict=False).fill_null(float("nan")).to_numpy()
        return texts, quality
    lines = pl.read_lines(path)["line"]
    # Vectorized field extraction; a line that is not JSON yields null here, so
    # the (few) null lines are re-parsed to tell "bad JSON" from "no field".
    texts = lines.str.json_path_match(f"$.{text_field}") if text_field.isidentifier() else None
    if texts is None:
        raise BakeoffError(f"--text-field must be a plain field name, got {text_field!r}")
    null_idx = (texts.is_null() & (lines.str.strip_chars() != "")).arg_true()
    for i in null_idx.head(10_000).to_list():
        try:
            json.loads(lines[i])
        except json.JSONDecodeError as exc:
            raise BakeoffError(f"{path}:{i + 1}: not valid JSON ({exc.msg})") from None
    if lines.len() and null_idx.len() == lines.len():
        raise BakeoffError(f"{path}: no line has a field {text_field!r}")
    if quality_field:
        quality = (lines.str.json_path_match(f"$.{quality_field}").cast(pl.Float64, strict=False)
                   .fill_null(float("nan")).to_numpy())
    return texts.fill_null(""), quality


def dedup_file(path: str | Path, text_field: str = "text", ledger_path: str | Path | None = None,
               config=None, quality_field: str | None = None, executor=None) -> dict[str, Any]:
    """Dedup the texts of a file; write the ledger (``row``, ``kept_row``,
    ``jaccard``, ``stage``: one row per removed line) and return counts and
    timings. ``executor``: where the batches run (default: here)."""
    import numpy as np
    import polars as pl

    from bakeoff.curate.dedup import EXACT, STAGE_NAMES, DedupConfig, dedup_texts, keep_order, loud_warning

    cfg = (config or DedupConfig()).validate()
    path = Path(path)
    if not path.is_file():
        raise BakeoffError(f"no such file: {path}")
    t0 = time.perf_counter()
    texts, quality = read_text_file(path, text_field, quality_field if cfg.keep == "quality" else None)
    if cfg.keep == "quality" and quality is None:
        raise BakeoffError("--keep quality needs --quality-field")
    t_read = time.perf_counter() - t0
    lengths = texts.str.len_chars().to_numpy() if cfg.keep == "longest" else None
    order = keep_order(texts.len(), cfg.keep, lengths=lengths, quality=quality)
    if executor is not None and executor.is_ray:
        from bakeoff.curate.dedup_key import Segments
        from bakeoff.curate.on_ray.minhash import dedup_segments_on_ray

        n = texts.len()
        plain = Segments(texts.cast(pl.String), pl.Series([], dtype=pl.String), np.arange(n + 1, dtype=np.int64),
                         np.zeros(n, np.int64))
        res = dedup_segments_on_ray(plain, cfg, order, executor)
    else:
        res = dedup_texts(texts, cfg, order=order, show_progress=texts.len() >= 20000)
    removed = np.flatnonzero(res.removed)
    ledger = pl.DataFrame({
        "row": removed.astype(np.int64),
        "kept_row": res.partner[removed],
        "jaccard": res.similarity[removed],
        "stage": pl.Series([STAGE_NAMES[int(s)] for s in res.stage[removed]], dtype=pl.String),
    })
    if ledger_path is not None:
        Path(ledger_path).parent.mkdir(parents=True, exist_ok=True)
        ledger.write_parquet(ledger_path)
    total = time.perf_counter() - t0
    n = texts.len()
    return {
        "input": str(path), "rows": n, "kept": int(n - removed.size),
        "removed": int(removed.size), "removed_exact": int((res.stage == EXACT).sum()),
        "removed_near": int(removed.size - (res.stage == EXACT).sum()),
        "ledger": str(ledger_path) if ledger_path is not None else None,
        "config": cfg.to_dict(),
        "warning": loud_warning("dedup", n, removed, res.partner[removed], texts),
        "lsh": {k: res.stats.get(k) for k in ("bands", "rows_per_band", "verified_pairs")},
        "timings": {"read_s": round(t_read, 4), **res.stats.get("timings", {}), "total_s": round(total, 4)},
        "docs_per_s": round(n / total, 1) if total > 0 else None,
    }


def _render(result: dict[str, Any]) -> None:
    from bakeoff.console import out, table

    rows = [("rows in", result["rows"]), ("removed (exact)", result["removed_exact"]),
            ("removed (near, verified)", result["removed_near"]), ("kept", result["kept"])]
    if result.get("version"):
        rows.append(("new version", result["version"]))
    if result.get("ledger"):
        rows.append(("ledger", result["ledger"]))
    lsh = result.get("lsh") or {}
    if lsh.get("bands"):
        rows.append(("LSH bands x rows", f"{lsh['bands']} x {lsh['rows_per_band']}"))
        rows.append(("candidate pairs verified", lsh.get("verified_pairs")))
    t = result.get("timings", {})
    if t:
        rows.append(("time", f"{t.get('total_s', 0):.2f}s"))
    if result.get("dry_run"):
        rows.append(("dry run", "no version written"))
    out.print(table("dedup", ["", ""], rows))
    for c in result.get("largest_clusters", []):
        out.print(f"[bold]cluster {c['kept_row_id'][:12]}[/]: {c['removed']} removed "
                  f"(min Jaccard {c['min_jaccard']})", highlight=False)
    render_warning(result.get("warning"))


def render_warning(warning: dict[str, Any] | None) -> None:
    """A step that removed more than a quarter of its input, loudly, with a few
    removed rows beside the row each was judged against."""
    if not warning:
        return
    from rich.markup import escape

    from bakeoff.console import out, table

    out.print(f"[bold red]WARNING: {escape(warning['message'])}[/]")
    if warning.get("pairs"):
        out.print(table("removed rows and the rows they were judged against", ["removed", "judged against"],
                        [(escape(p["removed"]), escape(p["judged_against"])) for p in warning["pairs"]]))


@click.command("dedup")
@click.argument("source")
@click.option("--text-field", default="text", show_default=True,
              help="File mode: the JSON field (or Parquet column) holding the text.")
@click.option("--scope", type=click.Choice(["prompt", "response", "all"]), default="all", show_default=True,
              help="Dataset mode: which text of a row to compare.")
@click.option("--threshold", type=float, default=0.8, show_default=True, help="Jaccard of shingle sets.")
@click.option("--num-perm", type=int, default=128, show_default=True)
@click.option("--ngram", type=int, default=3, show_default=True)
@click.option("--unit", type=click.Choice(["word", "char"]), default="word", show_default=True,
              help="Shingles of words or of characters.")
@click.option("--keep", type=click.Choice(["first", "longest", "quality"]), default="first", show_default=True,
              help="Which row of a duplicate group survives.")
@click.option("--quality-field", default="quality", show_default=True,
              help="Numeric field/column for --keep quality.")
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--no-exact", is_flag=True, help="Skip the exact (normalised text) stage.")
@click.option("--no-near", is_flag=True, help="Skip the MinHash stage.")
@click.option("--ledger", "ledger_path", type=click.Path(dir_okay=False), default=None,
              help="File mode: write removed lines (row, kept_row, jaccard, stage) to this Parquet file.")
@click.option("--key", "key", multiple=True,
              help="Dataset mode: what must match, segment by segment (repeatable): turns (default), prompt, "
                   "response, last_user, system, chosen, rejected, or a label column such as meta.group.")
@click.option("--name", default=None, help="Dataset mode: write the result under this dataset name.")
@click.option("--dry-run", is_flag=True, help="Dataset mode: report what would be removed; write no version.")
@executor_options
@json_option
def command(source: str, text_field: str, scope: str, threshold: float, num_perm: int, ngram: int, unit: str,
            keep: str, quality_field: str, seed: int, no_exact: bool, no_near: bool, ledger_path: str | None,
            key: tuple[str, ...], name: str | None, dry_run: bool, executor_kind: str | None,
            ray_address: str | None, as_json: bool) -> None:
    """Remove exact and near-duplicate rows (MinHash LSH, every pair verified).

    SOURCE is a dataset version NAME@vN (writes the next version; removed rows
    go to its ledger with the row they duplicate, the Jaccard and a cluster id)
    or a .jsonl/.parquet file (writes --ledger: one row per removed line).
    Exact = identical text after lowercasing and collapsing punctuation and
    spaces; near = Jaccard of word (or char) n-gram sets >= --threshold,
    checked exactly for every LSH candidate. In dataset mode two rows are
    duplicates only when *every* turn is (each user and assistant turn; for
    preference rows the prompt, chosen and rejected): different questions about
    one shared table are not.

    \b
    Examples:
      bakeoff curate dedup fin-train@v2 --scope prompt --keep longest
      bakeoff curate dedup tatqa@v1 --key meta.group --key last_user --dry-run
      bakeoff curate dedup docs.jsonl --text-field text --threshold 0.8 \\
          --ledger removed.parquet --json
      bakeoff curate dedup fin-train@v2 --executor ray   # the same result, batches on Ray
    """
    from bakeoff.console import emit
    from bakeoff.curate.dedup import DedupConfig

    cfg = DedupConfig(scope=scope, exact=not no_exact, near=not no_near, threshold=threshold,
                      num_perm=num_perm, ngram=ngram, unit=unit, seed=seed, keep=keep,
                      quality_column=quality_field, key=list(key) or None).validate()
    executor = resolve_executor(executor_kind, ray_address=ray_address)
    path = Path(source)
    if path.suffix.lower() in FILE_SUFFIXES or path.is_file():
        if not path.is_file():
            raise BakeoffError(f"no such file: {source}")
        result = dedup_file(path, text_field=text_field, ledger_path=ledger_path, config=cfg,
                            quality_field=quality_field if keep == "quality" else None, executor=executor)
        emit(result, as_json, _render)
        return

    from bakeoff.curate.dedup import dedup_rows
    from bakeoff.steps import commit_step

    ws = get_workspace()
    parent = ws.resolve(source)
    t0 = time.perf_counter()
    if executor.is_ray:  # the rows stay on the workers; the driver streams the output
        from bakeoff.curate.on_ray.minhash import dedup_on_ray
        from bakeoff.curate.on_ray.rows import RowSource, commit_ray_step
        from bakeoff.executor import ray_session

        rows = RowSource([ws.version_dir(parent) / "rows.parquet"])
        with ray_session(executor), ws.scratch_folder(name or parent.name) as scratch:
            ray_output = dedup_on_ray(rows, cfg, executor, spill=scratch)  # the ledger spilled to scratch
            version = None if dry_run else commit_ray_step(ws, parent, "dedup", cfg.to_dict(), rows, ray_output,
                                                           name=name)
        rep = ray_output.report
    else:
        output = dedup_rows(ws.load(parent), cfg)
        version = None if dry_run else commit_step(ws, parent, "dedup", cfg.to_dict(), output, name=name)
        rep = output.report
    result = {
        "parent": parent.ref, "version": version.ref if version else None, "dry_run": dry_run,
        "rows": rep["rows_in"], "kept": rep["rows_out"], "key": rep["key"], "warning": rep.get("warning"),
        "removed_exact": rep["removed_exact"], "removed_near": rep["removed_near"],
        "clusters": rep["clusters"], "lsh": rep["lsh"],
        "timings": {**rep["timings"], "total_s": round(time.perf_counter() - t0, 4)},
        "largest_clusters": rep["largest_clusters"],
    }
    emit(result, as_json, _render)
