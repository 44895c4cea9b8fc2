"""`bakeoff data` commands: ingest, list, log, show, diff, export, why, quarantine.

The functions above the commands are the Python API (``version_stats``,
``diff_versions``, ``row_fate``, ``export_version``, ``quarantine_rows``); the
click commands only parse options and render. Heavy work runs in DuckDB over the
versions' Parquet files (anti-joins for diff, a filtered scan for why), so these
stay fast on million-row versions.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import click
import duckdb
import polars as pl

from bakeoff.console import emit, escape, out, table
from bakeoff.context import get_workspace, json_option
from bakeoff.workspace import BakeoffError, Version, Workspace, sql_string

LABELS = ("domain", "doctype", "task", "tags")


def _rows_path(ws: Workspace, v: Version) -> str:
    return str(ws.version_dir(v) / "rows.parquet")


# --- show -----------------------------------------------------------------------------------

def version_stats(ws: Workspace, ref: str) -> dict[str, Any]:
    """Rows by kind/domain/doctype/task/tag, the length distribution (characters of
    the whole conversation, and turns), quarantine and ledger counts."""
    from bakeoff.schema import conversation_text

    v = ws.resolve(ref)
    lf = ws.scan(v)
    cols = lf.collect_schema().names()

    def counts(col: str) -> dict[str, int]:
        df = lf.group_by(pl.col(col).fill_null("(none)")).len().sort("len", descending=True).collect()
        return {str(k): int(n) for k, n in df.iter_rows()}

    tags = (lf.select(pl.col("tags").list.explode()).drop_nulls().group_by("tags").len()
            .sort("len", descending=True).head(20).collect())
    lengths = lf.select(conversation_text().str.len_chars().alias("chars"),
                        pl.col("messages").list.len().alias("turns")).collect()
    length: dict[str, Any] = {}
    if lengths.height:
        c = lengths["chars"]
        qs = [0.1, 0.25, 0.5, 0.75, 0.9, 0.99]
        length = {"min": int(c.min()), **{f"p{int(q * 100)}": int(c.quantile(q, "nearest")) for q in qs},
                  "max": int(c.max()), "mean": round(float(c.mean()), 1),
                  "turns_mean": round(float(lengths["turns"].mean()), 2)}
        edges = [0, 100, 250, 500, 1000, 2000, 4000, 8000, 16000]
        hist = []
        for lo, hi in zip(edges, edges[1:] + [None]):
            sel = (c >= lo) if hi is None else ((c >= lo) & (c < hi))
            hist.append({"range": f"{lo}-{hi}" if hi else f"{lo}+", "rows": int(sel.sum())})
        length["histogram"] = hist
    ledger = ws.ledger(v)
    by_rule = (ledger.group_by("stage", "rule").len().sort("len", descending=True).to_dicts()
               if ledger.height else [])
    return {
        "version": v.to_dict(),
        "rows": v.rows,
        "by_kind": counts("kind"), "by_domain": counts("domain"), "by_doctype": counts("doctype"),
        "by_task": counts("task"),
        "by_tag": {k: int(n) for k, n in tags.iter_rows()},
        "length_chars": length,
        "extra_columns": [c for c in cols if c not in _core_columns()],
        "quarantined": ws.quarantine(v).height,
        "dropped_by_this_step": [{"stage": d["stage"], "rule": d["rule"], "rows": d["len"]} for d in by_rule],
    }


def _core_columns() -> set[str]:
    from bakeoff.schema import SCHEMA

    return set(SCHEMA)


# --- diff -----------------------------------------------------------------------------------

def diff_versions(ws: Workspace, a: str, b: str, sample: int = 5) -> dict[str, Any]:
    """Rows added, removed and changed from ``a`` to ``b``.

    A changed row is one at the same source (file, line) in both with a different
    id (its content was rewritten) or different labels. Removals are grouped by
    the stage and rule that dropped them, from the ledgers of the versions on
    b's lineage that are not on a's (the steps between a and b).
    """
    va, vb = ws.resolve(a), ws.resolve(b)
    con = duckdb.connect()
    try:
        sel = "SELECT id, source_file, source_line, domain, doctype, task, tags FROM read_parquet({})"
        con.execute(f"CREATE TEMP TABLE A AS {sel.format(sql_string(_rows_path(ws, va)))}")
        con.execute(f"CREATE TEMP TABLE B AS {sel.format(sql_string(_rows_path(ws, vb)))}")
        # Same source location, different id or labels. Rows without a source
        # (made by a step, not read from a file) can only be added or removed.
        con.execute("""
            CREATE TEMP TABLE C AS
            SELECT A.id AS id_a, B.id AS id_b,
                   A.id <> B.id AS content_changed,
                   A.domain IS DISTINCT FROM B.domain OR A.doctype IS DISTINCT FROM B.doctype
                   OR A.task IS DISTINCT FROM B.task OR A.tags IS DISTINCT FROM B.tags AS labels_changed
            FROM A JOIN B ON A.source_file = B.source_file AND A.source_line = B.source_line
                          AND A.source_file IS NOT NULL AND A.source_line IS NOT NULL
            WHERE A.id <> B.id OR A.domain IS DISTINCT FROM B.domain OR A.doctype IS DISTINCT FROM B.doctype
                  OR A.task IS DISTINCT FROM B.task OR A.tags IS DISTINCT FROM B.tags
        """)
        con.execute("""
            CREATE TEMP TABLE REMOVED AS
            SELECT id FROM A ANTI JOIN B USING (id)
            EXCEPT SELECT id_a FROM C WHERE content_changed
        """)
        con.execute("""
            CREATE TEMP TABLE ADDED AS
            SELECT id FROM B ANTI JOIN A USING (id)
            EXCEPT SELECT id_b FROM C WHERE content_changed
        """)
        (n_removed,) = con.execute("SELECT count(*) FROM REMOVED").fetchone()
        (n_added,) = con.execute("SELECT count(*) FROM ADDED").fetchone()
        (n_changed, n_content, n_labels) = con.execute(
            "SELECT count(*), count(*) FILTER (content_changed), count(*) FILTER (labels_changed) FROM C").fetchone()

        # Ledgers of the steps between a and b.
        on_a = {v.ref for v in ws.lineage(va)}
        between = [v for v in ws.lineage(vb) if v.ref not in on_a]
        ledger_files = [str(ws.version_dir(v) / "ledger.parquet") for v in between
                        if (ws.version_dir(v) / "ledger.parquet").exists()]
        by_rule: list[dict[str, Any]] = []
        if n_removed:
            if ledger_files:
                files = "[" + ", ".join(sql_string(f) for f in ledger_files) + "]"
                con.execute(f"""
                    CREATE TEMP TABLE L AS
                    SELECT row_id, stage, rule FROM (
                        SELECT row_id, stage, rule,
                               row_number() OVER (PARTITION BY row_id ORDER BY filename) AS k
                        FROM read_parquet({files}, filename = true, union_by_name = true)) WHERE k = 1
                """)
                join = "LEFT JOIN L ON L.row_id = REMOVED.id"
                stage, rule = "coalesce(L.stage, '(no ledger entry)')", "coalesce(L.rule, '')"
            else:
                join, stage, rule = "", "'(no ledger entry)'", "''"
            rows = con.execute(
                f"SELECT {stage} AS stage, {rule} AS rule, count(*) AS n FROM REMOVED {join} "
                "GROUP BY ALL ORDER BY n DESC, stage, rule").fetchall()
            by_rule = [{"stage": s, "rule": r, "rows": int(n)} for s, r, n in rows]
        samples = {
            "added": [r[0] for r in con.execute(f"SELECT id FROM ADDED ORDER BY id LIMIT {sample}").fetchall()],
            "removed": [r[0] for r in con.execute(f"SELECT id FROM REMOVED ORDER BY id LIMIT {sample}").fetchall()],
            "changed": [{"id_a": r[0], "id_b": r[1], "content_changed": r[2], "labels_changed": r[3]}
                        for r in con.execute(f"SELECT * FROM C ORDER BY id_a LIMIT {sample}").fetchall()],
        }
    finally:
        con.close()
    return {
        "a": va.ref, "b": vb.ref, "rows_a": va.rows, "rows_b": vb.rows,
        "added": int(n_added), "removed": int(n_removed), "changed": int(n_changed),
        "changed_content": int(n_content), "changed_labels": int(n_labels),
        "unchanged": int(va.rows - n_removed - n_changed),
        "removed_by": by_rule, "steps_between": [v.ref for v in between], "samples": samples,
    }


# --- why ------------------------------------------------------------------------------------

#: Operations that draw a sample from their parents rather than filter them: a
#: parent's row they leave out was not selected, which is not a drop.
SELECTING_OPERATIONS = {
    "testsets.build": lambda in_training: (
        "in the training version this test set is held out from; test items are drawn from the pools"
        if in_training else "not drawn into the test set"),
}


def row_fate(ws: Workspace, row_id: str) -> dict[str, Any]:
    """Where a row appears across every version, and which step dropped it and
    why (rule, score, the kept partner and similarity for duplicates).
    ``row_id`` may be a unique prefix of an id."""
    versions = ws.versions()
    if not versions:
        raise BakeoffError("the workspace has no datasets yet")
    by_path = {str(ws.version_dir(v) / "rows.parquet"): v for v in versions}
    files = "[" + ", ".join(sql_string(p) for p in by_path) + "]"
    con = duckdb.connect()
    try:
        hits = con.execute(
            f"SELECT DISTINCT id, filename FROM read_parquet({files}, filename = true, union_by_name = true) "
            "WHERE starts_with(id, ?)", [row_id]).fetchall()
        ids = sorted({h[0] for h in hits})
        if row_id in ids:
            ids = [row_id]
        if len(ids) > 1:
            shown = ", ".join(ids[:5]) + (" ..." if len(ids) > 5 else "")
            raise BakeoffError(f"id prefix {row_id!r} matches {len(ids)} rows: {shown}; give more characters")
        full = ids[0] if ids else row_id
        present = {by_path[f].ref for i, f in hits if i == full}
        ledger_paths = {str(ws.version_dir(v) / "ledger.parquet"): v for v in versions
                        if (ws.version_dir(v) / "ledger.parquet").exists()}
        drops: dict[str, dict[str, Any]] = {}
        partner_of: list[dict[str, Any]] = []
        if ledger_paths:
            lf = "[" + ", ".join(sql_string(p) for p in ledger_paths) + "]"
            res = con.sql(
                f"SELECT *, filename FROM read_parquet({lf}, filename = true, union_by_name = true) "
                "WHERE row_id = ? OR kept_row_id = ?", params=[full, full]).pl()
            for d in res.to_dicts():
                v = ledger_paths[d.pop("filename")]
                if d["row_id"] == full:
                    drops[v.ref] = {k: d[k] for k in ("stage", "rule", "score", "kept_row_id", "similarity",
                                                      "cluster_id", "detail")}
                else:
                    partner_of.append({"version": v.ref, "row_id": d["row_id"], "stage": d["stage"],
                                       "rule": d["rule"], "similarity": d["similarity"]})
        content = None
        if present:
            first = next(v for v in versions if v.ref in present)
            row = con.sql(
                f"SELECT * FROM read_parquet({sql_string(_rows_path(ws, first))}) WHERE id = ?", params=[full]).pl()
            if row.height:
                content = row.to_dicts()[0]
    finally:
        con.close()
    if not present and not drops:
        raise BakeoffError(f"no row with id {row_id!r} in any version")

    timeline: dict[str, list[dict[str, Any]]] = {}
    for v in versions:
        here = v.ref in present
        dropped = drops.get(v.ref)
        parents_had = any(p in present for p in v.parents)
        if not (here or dropped or parents_had):
            continue
        entry: dict[str, Any] = {"version": v.ref, "operation": v.operation, "present": here,
                                 "fate": "kept" if here else "dropped"}
        if dropped:
            entry["dropped"] = dropped
        elif parents_had and not here and v.operation in SELECTING_OPERATIONS:
            entry["fate"] = "not selected"
            entry["why"] = SELECTING_OPERATIONS[v.operation](v.parents[0] in present)
        elif parents_had and not here:
            entry["dropped"] = {"stage": v.operation, "rule": "(no ledger entry)"}
        timeline.setdefault(v.name, []).append(entry)
    return {"row_id": full, "appears_in": sorted(present), "timeline": timeline,
            "kept_partner_of": partner_of, "row": content}


# --- export ---------------------------------------------------------------------------------

def _hf_frame(df: pl.DataFrame) -> pl.DataFrame:
    """Columns TRL takes: ``messages`` (sft), ``prompt``/``chosen``/``rejected``
    (preference, conversational), ``prompt`` (prompt rows); plus id, labels and
    any columns a stage added (e.g. ``slice`` of a test set)."""
    from bakeoff.schema import SCHEMA

    kind = df["kind"][0] if df.height else "sft"
    keep = ["id", "domain", "doctype", "task", "tags"]
    added = [c for c in df.columns if c not in SCHEMA]
    if kind == "sft":
        main = [pl.col("messages")]
    elif kind == "preference":
        main = [pl.col("messages").alias("prompt"), pl.col("chosen"), pl.col("rejected")]
    else:
        main = [pl.col("messages").alias("prompt")]
    return df.select([*main, *keep, *added])


#: Marks a directory written by ``data export --format hf``: only such a directory
#: may be replaced by ``--force``.
EXPORT_STAMP = ".bakeoff-export.json"
_WORKSPACE_ENTRIES = ("catalog.duckdb", "versions", "cache", "runs", "reports", "mlflow.db", "mlruns")


def _check_export_target(ws: Workspace, out_path: Path, fmt: str, force: bool) -> None:
    """Refuse targets whose replacement would destroy data: the workspace, its
    ancestors, its own files, a directory that is not a previous export."""
    target = out_path.resolve()
    if target == ws.root or target in ws.root.parents:
        raise BakeoffError(f"--out {out_path} is the workspace or a folder holding it; choose another path")
    first = target.relative_to(ws.root).parts[0] if ws.root in target.parents else ""
    if first in _WORKSPACE_ENTRIES or first.startswith(("catalog.duckdb", "mlflow.db")):
        raise BakeoffError(f"--out {out_path} is inside the workspace's own files; choose another path")
    if not out_path.exists() and not out_path.is_symlink():
        return
    if out_path.is_dir() and not out_path.is_symlink():
        if fmt != "hf":
            raise BakeoffError(f"--out {out_path} is a directory; {fmt} export writes one file")
        if not any(out_path.iterdir()):
            return
        if not (out_path / EXPORT_STAMP).is_file():
            raise BakeoffError(f"--out {out_path} is a non-empty directory that is not a bakeoff export; "
                               "choose an empty or new directory")
    elif fmt == "hf":
        raise BakeoffError(f"--out {out_path} is a file; hf export writes a directory")
    if not force:
        raise BakeoffError(f"{out_path} exists; pass --force to overwrite")


def export_version(ws: Workspace, ref: str, fmt: str, out_path: str | Path, force: bool = False) -> dict[str, Any]:
    """Write a version as JSONL, Parquet, or a Hugging Face dataset directory
    (``datasets.load_from_disk``). A version mixing kinds exports to hf as a
    DatasetDict with one split per kind.

    The output appears whole or not at all (written beside it, then renamed).
    ``force`` replaces an existing file, or a directory only if a previous hf
    export wrote it (``EXPORT_STAMP``); never the workspace or its ancestors."""
    if fmt not in ("jsonl", "parquet", "hf"):
        raise BakeoffError(f"unknown export format {fmt!r}; expected jsonl, parquet or hf")
    v = ws.resolve(ref)
    out_path = Path(out_path)
    _check_export_target(ws, out_path, fmt, force)
    df = ws.load(v)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.tmp-{uuid.uuid4().hex[:12]}")
    try:
        if fmt == "jsonl":
            df.write_ndjson(tmp)
        elif fmt == "parquet":
            df.write_parquet(tmp)
        else:
            import datasets

            kinds = sorted(df["kind"].unique().to_list())
            if len(kinds) <= 1:
                datasets.Dataset.from_polars(_hf_frame(df)).save_to_disk(str(tmp))
            else:
                datasets.DatasetDict({
                    k: datasets.Dataset.from_polars(_hf_frame(df.filter(pl.col("kind") == k))) for k in kinds
                }).save_to_disk(str(tmp))
            (tmp / EXPORT_STAMP).write_text(json.dumps({"version": v.ref, "digest": v.digest}))
            if out_path.is_dir():  # empty, or a stamped previous export (checked above)
                shutil.rmtree(out_path)
        os.replace(tmp, out_path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()
    return {"version": v.ref, "format": fmt, "out": str(out_path), "rows": df.height,
            "kinds": dict(df.group_by("kind").len().iter_rows())}


# --- quarantine -------------------------------------------------------------------------------

def quarantine_rows(ws: Workspace, ref: str, reason: str | None = None) -> tuple[Version, pl.DataFrame]:
    """The quarantined records of a version (the latest that has any, for a bare
    name), optionally only those whose reason contains ``reason``."""
    v = ws.resolve(ref)
    if "@v" not in ref:
        with_q = [x for x in ws.versions(v.name) if x.counts.get("quarantined")]
        if with_q:
            v = with_q[-1]
    q = ws.quarantine(v)
    if reason:
        q = q.filter(pl.col("reason").str.to_lowercase().str.contains(reason.lower(), literal=True))
    return v, q


# === commands ===================================================================================

@click.group()
def data() -> None:
    """Dataset versions: ingest, list, log, show, diff, export, why, quarantine.

    \b
    Example:
      bakeoff data ingest train.jsonl --name fin --meta domain=finance
      bakeoff data show fin@v1
    """


@data.command("ingest")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--name", "-n", required=True, help="Dataset name; the ingest writes NAME@vN (N = next).")
@click.option("--format", "fmt", default="auto", show_default=True,
              type=click.Choice(["auto", "alpaca", "sharegpt", "messages", "completion", "preference", "prompt"]),
              help="Input format; auto detects it per file and says what it found.")
@click.option("--map", "mapping", multiple=True, metavar="FIELD=COLUMN",
              help="Read FIELD from input COLUMN (dotted for nested), e.g. output=answer, role=speaker.")
@click.option("--meta", multiple=True, metavar="LABEL=VALUE",
              help="Stamp a label (domain, doctype, task, tags) on rows that lack it; tags comma-separated.")
@click.option("--strict", is_flag=True, help="Exit non-zero, writing nothing, if any record is quarantined.")
@json_option
def ingest_cmd(paths: tuple[str, ...], name: str, fmt: str, mapping: tuple[str, ...], meta: tuple[str, ...],
               strict: bool, as_json: bool) -> None:
    """Read JSON, JSONL, CSV or Parquet files (or .gz of them) into a new version.

    Bad records (malformed JSON, invalid UTF-8, missing or wrong-typed fields,
    empty turns, impossible role order) go to the version's quarantine with
    file:line and reason; rows_in = accepted + quarantined.

    \b
    Examples:
      bakeoff data ingest data/train.jsonl --name fin --meta domain=finance-tables --meta task=qa
      bakeoff data ingest alpaca.json --name alp --format alpaca --map output=response
      bakeoff data ingest prompts.jsonl --name prompts --format prompt --json
    """
    from bakeoff.curate.ingest import ingest, parse_pairs

    ws = get_workspace()
    res = ingest(ws, list(paths), name, fmt=fmt, mapping=parse_pairs(mapping, "--map"),
                 meta=parse_pairs(meta, "--meta"), strict=strict)

    def render(r: dict[str, Any]) -> None:
        out.print(f"[bold]{r['version']}[/]  {r['rows_in']} records in: {r['accepted']} accepted, "
                  f"{r['quarantined']} quarantined")
        out.print(table(None, ["file", "type", "format", "in", "accepted", "quarantined"],
                        [[f["path"], f["file_type"], f["format"], f["rows_in"], f["accepted"], f["quarantined"]]
                         for f in r["files"]]))
        if r["quarantine_reasons"]:
            out.print(table("quarantined by reason", ["reason", "records"], list(r["quarantine_reasons"].items())[:10]))
            out.print(f"browse: bakeoff data quarantine {name}")

    emit(res.to_dict(), as_json, render)


@data.command("list")
@json_option
def list_cmd(as_json: bool) -> None:
    """Every dataset with its latest version.

    \b
    Example:
      bakeoff data list --json
    """
    ws = get_workspace()
    by_name: dict[str, list[Version]] = {}
    for v in ws.versions():
        by_name.setdefault(v.name, []).append(v)
    result = [{"name": n, "latest": vs[-1].ref, "versions": len(vs), "rows": vs[-1].rows,
               "kinds": vs[-1].counts.get("kind", {}), "operation": vs[-1].operation,
               "created_at": vs[-1].created_at} for n, vs in sorted(by_name.items())]

    def render(r: list[dict[str, Any]]) -> None:
        if not r:
            out.print("no datasets yet (try: bakeoff data ingest FILE --name NAME)")
            return
        # The names are what this table is for: their column is as wide as the
        # longest name, and every column folds rather than cutting text short.
        from rich.table import Table

        t = Table(title=None)
        t.add_column("dataset", min_width=max(len(d["name"]) for d in r), overflow="fold")
        for column in ("latest", "versions", "rows", "kinds", "last operation", "created"):
            t.add_column(column, overflow="fold")
        for d in r:
            t.add_row(d["name"], d["latest"].rsplit("@", 1)[-1], str(d["versions"]), str(d["rows"]),
                      ", ".join(f"{k}:{n}" for k, n in d["kinds"].items()), d["operation"],
                      d["created_at"][:16].replace("T", " "))
        out.print(t)

    emit(result, as_json, render)


@data.command("log")
@click.argument("name")
@json_option
def log_cmd(name: str, as_json: bool) -> None:
    """The versions of a dataset, newest first: operation, parameters, parents, counts.

    \b
    Example:
      bakeoff data log fin
    """
    ws = get_workspace()
    v = ws.resolve(name)
    result = [x.to_dict() for x in reversed(ws.versions(v.name))]

    def render(r: list[dict[str, Any]]) -> None:
        rows = []
        for x in r:
            params = {k: val for k, val in x["params"].items() if val not in (None, {}, [], "")}
            rows.append([x["ref"], x["created_at"], x["operation"], x["rows"], ", ".join(x["parents"]) or "-",
                         x["digest"][:12], json.dumps(params, default=str)[:80],
                         ", ".join(f"{k}={val}" for k, val in x["counts"].items() if k in ("quarantined", "ledger") and val)])
        out.print(table(f"{v.name}", ["version", "created", "operation", "rows", "parents", "digest", "params", "dropped"],
                        rows))

    emit(result, as_json, render)


@data.command("show")
@click.argument("ref")
@click.option("--rows", "n_rows", default=0, show_default=True, help="Also print the first N rows.")
@json_option
def show_cmd(ref: str, n_rows: int, as_json: bool) -> None:
    """Rows by kind/domain/task, the length distribution, and what the step dropped.

    \b
    Example:
      bakeoff data show fin@v2 --rows 3
    """
    ws = get_workspace()
    stats = version_stats(ws, ref)
    if n_rows:
        stats["head"] = ws.load(ref).head(n_rows).to_dicts()

    def render(s: dict[str, Any]) -> None:
        v = s["version"]
        out.print(f"[bold]{v['ref']}[/]  {s['rows']} rows  op={v['operation']}  parents={', '.join(v['parents']) or '-'}"
                  f"  digest={v['digest'][:16]}  created={v['created_at']}")
        for key, title in (("by_kind", "kind"), ("by_domain", "domain"), ("by_doctype", "doctype"),
                           ("by_task", "task"), ("by_tag", "tag")):
            if s[key]:
                out.print(table(f"rows by {title}", [title, "rows"], list(s[key].items())))
        ln = s["length_chars"]
        if ln:
            out.print(table("length (characters of the whole conversation)",
                            ["min", "p10", "p25", "p50", "p75", "p90", "p99", "max", "mean", "turns/row"],
                            [[ln["min"], ln["p10"], ln["p25"], ln["p50"], ln["p75"], ln["p90"], ln["p99"],
                              ln["max"], ln["mean"], ln["turns_mean"]]]))
            peak = max(h["rows"] for h in ln["histogram"]) or 1
            out.print(table(None, ["chars", "rows", ""],
                            [[h["range"], h["rows"], "█" * round(30 * h["rows"] / peak)] for h in ln["histogram"]]))
        if s["dropped_by_this_step"]:
            out.print(table("dropped by this step", ["stage", "rule", "rows"],
                            [[d["stage"], d["rule"], d["rows"]] for d in s["dropped_by_this_step"]]))
        if s["quarantined"]:
            out.print(f"{s['quarantined']} records quarantined at ingest (bakeoff data quarantine {v['ref']})")
        if s["extra_columns"]:
            out.print(f"extra columns: {escape(', '.join(s['extra_columns']))}")
        for row in s.get("head", []):
            out.print_json(json.dumps(row, default=str))

    emit(stats, as_json, render)


@data.command("diff")
@click.argument("a")
@click.argument("b")
@click.option("--sample", default=5, show_default=True, help="How many example ids to list per category.")
@json_option
def diff_cmd(a: str, b: str, sample: int, as_json: bool) -> None:
    """Rows added, removed and changed from A to B; removals by stage and rule.

    \b
    Example:
      bakeoff data diff fin@v1 fin@v3
    """
    ws = get_workspace()
    d = diff_versions(ws, a, b, sample=sample)

    def render(r: dict[str, Any]) -> None:
        out.print(f"[bold]{r['a']} -> {r['b']}[/]  {r['rows_a']} -> {r['rows_b']} rows")
        out.print(table(None, ["added", "removed", "changed (content)", "changed (labels)", "unchanged"],
                        [[r["added"], r["removed"], r["changed_content"], r["changed_labels"], r["unchanged"]]]))
        if r["removed_by"]:
            out.print(table("removed by stage and rule", ["stage", "rule", "rows"],
                            [[x["stage"], x["rule"], x["rows"]] for x in r["removed_by"]]))
        for k in ("added", "removed"):
            if r["samples"][k]:
                out.print(f"{k} e.g.: {', '.join(r['samples'][k])}")
        if r["samples"]["changed"]:
            out.print("changed e.g.: " + ", ".join(f"{c['id_a']} -> {c['id_b']}" for c in r["samples"]["changed"]))

    emit(d, as_json, render)


@data.command("export")
@click.argument("ref")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "parquet", "hf"]), default="jsonl", show_default=True,
              help="hf = a directory datasets.load_from_disk opens, in the columns TRL takes.")
@click.option("--out", "out_path", required=True, type=click.Path(), help="Output file (jsonl, parquet) or directory (hf).")
@click.option("--force", is_flag=True, help="Overwrite an existing output.")
@json_option
def export_cmd(ref: str, fmt: str, out_path: str, force: bool, as_json: bool) -> None:
    """Write a version out as JSONL, Parquet or a Hugging Face dataset.

    \b
    Example:
      bakeoff data export fin@v3 --format hf --out exports/fin-v3
    """
    ws = get_workspace()
    res = export_version(ws, ref, fmt, out_path, force=force)
    emit(res, as_json, lambda r: out.print(escape(f"wrote {r['rows']} rows of {r['version']} to {r['out']} ({r['format']})")))


@data.command("why")
@click.argument("row_id")
@json_option
def why_cmd(row_id: str, as_json: bool) -> None:
    """A row's fate across all versions: where it appears, which step dropped it and why.

    \b
    Example:
      bakeoff data why 3f2a9c1e
    """
    ws = get_workspace()
    res = row_fate(ws, row_id)

    def render(r: dict[str, Any]) -> None:
        out.print(f"[bold]{escape(r['row_id'])}[/]  appears in: {', '.join(r['appears_in']) or 'none'}")
        row = r.get("row")
        if row:
            msgs = row.get("messages") or []
            preview = " | ".join(f"{m['role']}: {m['content'][:60]}" for m in msgs[:3]).replace("\n", " ")
            out.print(escape(f"  {row.get('kind')}  {row.get('source_file')}:{row.get('source_line')}  {preview}"),
                      highlight=False)
        for name, entries in r["timeline"].items():
            rows = []
            for e in entries:
                d = e.get("dropped")
                fate = e.get("fate") or ("kept" if e["present"] else "dropped")
                detail = e.get("why") or ""
                if d:
                    detail = f"{d.get('stage')} / {d.get('rule')}"
                    if d.get("score") is not None:
                        detail += f"  score={d['score']:.3g}"
                    if d.get("kept_row_id"):
                        detail += f"  kept={d['kept_row_id']}"
                    if d.get("similarity") is not None:
                        detail += f"  similarity={d['similarity']:.3f}"
                    if d.get("detail"):
                        detail += f"  ({d['detail']})"
                rows.append([e["version"], e["operation"], fate, detail])
            out.print(table(name, ["version", "operation", "fate", "why"], rows))
        if r["kept_partner_of"]:
            out.print(f"kept as the representative of {len(r['kept_partner_of'])} dropped row(s): "
                      + ", ".join(p["row_id"] for p in r["kept_partner_of"][:5]))

    emit(res, as_json, render)


@data.command("quarantine")
@click.argument("ref")
@click.option("--reason", default=None, help="Only records whose reason contains this text.")
@click.option("--limit", default=50, show_default=True, help="At most this many records (0 = all).")
@json_option
def quarantine_cmd(ref: str, reason: str | None, limit: int, as_json: bool) -> None:
    """Browse the records an ingest quarantined, with reason and file:line.

    \b
    Example:
      bakeoff data quarantine fin --reason "malformed JSON"
    """
    ws = get_workspace()
    v, q = quarantine_rows(ws, ref, reason)
    by_reason = dict(q.group_by("reason").len().sort("len", descending=True).iter_rows()) if q.height else {}
    shown = q if not limit else q.head(limit)
    result = {"version": v.ref, "total": q.height,
              "records": shown.to_dicts(), "by_reason": by_reason}

    def render(r: dict[str, Any]) -> None:
        if not r["total"]:
            out.print(f"{r['version']}: nothing quarantined")
            return
        out.print(f"[bold]{r['version']}[/]  {r['total']} quarantined records"
                  + (f" (showing {len(r['records'])})" if len(r["records"]) < r["total"] else ""))
        out.print(table(None, ["where", "reason", "raw"],
                        [[f"{Path(x['source_file']).name}:{x['source_line']}", x["reason"],
                          (x["raw"] or "").replace("\n", "\\n")[:100]] for x in r["records"]]))

    emit(result, as_json, render)


__all__ = ["data", "diff_versions", "export_version", "quarantine_rows", "row_fate", "version_stats"]
