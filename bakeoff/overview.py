"""`bakeoff report`: one self-contained overview page of a workspace.

``reports/index.html`` shows how everything in the workspace came to be, left to
right: the raw files, the dataset versions made from them (with what each
curation step removed, from the ledger), the test sets built from them, the
training runs (their hypothesis and conclusion), their checkpoints, and the
leaderboards that ranked them. Every node of the lineage graph links to its
report; below it, tables of the same, links to every report in ``reports/``,
and the top rows of the latest leaderboard.

Sources, all already in the workspace: the catalog (versions, ledgers), the
checkpoint metadata files under ``runs/`` (``bakeoff_checkpoint.json``), the
MLflow store (hypothesis and conclusion tags), and the evaluation cache.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from bakeoff import html as H
from bakeoff.workspace import Workspace

#: Columns of the lineage graph, left to right.
LAYERS = ("files", "datasets", "curated", "test sets", "runs", "checkpoints", "leaderboards")


@dataclass
class Node:
    id: str
    layer: str
    title: str
    detail: str = ""
    href: str | None = None


@dataclass
class Lineage:
    nodes: dict[str, Node] = field(default_factory=dict)
    edges: set[tuple[str, str]] = field(default_factory=set)

    def add(self, node: Node) -> None:
        self.nodes.setdefault(node.id, node)

    def link(self, a: str, b: str) -> None:
        if a in self.nodes and b in self.nodes:
            self.edges.add((a, b))


# --- gathering ---------------------------------------------------------------------

def _ledger_counts(ws: Workspace, ref: str) -> dict[str, int]:
    import polars as pl

    try:
        led = ws.ledger(ref)
    except Exception:  # noqa: BLE001 - a version without a ledger file
        return {}
    if led.height == 0 or "stage" not in led.columns:
        return {}
    return {r["stage"]: r["len"] for r in led.group_by("stage").agg(pl.len()).sort("stage").iter_rows(named=True)}


def _checkpoints(ws: Workspace) -> list[dict[str, Any]]:
    """Every checkpoint's metadata (``bakeoff_checkpoint.json``), with its path."""
    out = []
    for meta in sorted(ws.runs_dir().glob("*/*/checkpoint-*/bakeoff_checkpoint.json")):
        try:
            d = json.loads(meta.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        d["path"] = str(meta.parent)
        out.append(d)
    return sorted(out, key=lambda d: (d.get("run_id", ""), d.get("step") or 0))


def _run_tags(ws: Workspace, run_ids: list[str]) -> dict[str, dict[str, str]]:
    """MLflow tags and run names of ``run_ids`` ({} where the store has none)."""
    if not run_ids:
        return {}
    try:
        import mlflow

        from bakeoff.tracking import setup_mlflow

        setup_mlflow(ws)
        client = mlflow.MlflowClient()
        tags = {}
        for rid in run_ids:
            run = client.get_run(rid)
            tags[rid] = {**run.data.tags, "name": run.info.run_name or ""}
        return tags
    except Exception:  # noqa: BLE001 - an overview without MLflow tags is still an overview
        return {}


def _leaderboards(ws: Workspace, testsets: list[str]) -> list[Any]:
    """The leaderboard of every test set something was evaluated on."""
    from bakeoff.evaluate.rank import build_leaderboard
    from bakeoff.workspace import BakeoffError

    boards = []
    for ref in testsets:
        try:
            boards.append(build_leaderboard(ws, ref, n_boot=500))
        except BakeoffError:
            continue
    return boards


def gather(ws: Workspace) -> dict[str, Any]:
    versions = ws.versions()
    testsets = [v for v in versions if v.operation.startswith("testsets")]
    ckpts = _checkpoints(ws)
    run_ids = list(dict.fromkeys(c["run_id"] for c in ckpts if c.get("run_id")))
    return {"versions": versions, "testsets": testsets, "checkpoints": ckpts,
            "tags": _run_tags(ws, run_ids), "boards": _leaderboards(ws, [t.ref for t in testsets]),
            "reports": sorted(p for p in ws.reports_dir().glob("*.html") if p.name != "index.html")}


def lineage(ws: Workspace, g: dict[str, Any]) -> Lineage:
    reports = {p.name for p in g["reports"]}

    def href(kind: str, ref: str) -> str | None:
        name = H.report_name(kind, ref)
        return name if name in reports else None

    L = Lineage()
    for v in g["versions"]:
        if v.operation == "ingest":
            L.add(Node(v.ref, "datasets", v.ref, f"{v.rows} rows, {v.counts.get('quarantined', 0)} quarantined"))
            for p in v.params.get("paths", []) or []:
                fid = f"file:{p}"
                L.add(Node(fid, "files", Path(str(p)).name))
                L.link(fid, v.ref)
        elif v.operation.startswith("testsets"):
            sl = v.counts.get("slices") or {}
            L.add(Node(v.ref, "test sets", v.ref, ", ".join(f"{k} {n}" for k, n in sl.items()),
                       href("testset", v.ref)))
        else:
            led = _ledger_counts(ws, v.ref)
            detail = f"{v.rows} rows" + ("; removed " + ", ".join(f"{k} {n}" for k, n in led.items())
                                         if led else "")
            L.add(Node(v.ref, "curated", v.ref, detail, href("coverage", v.ref)))
    for v in g["versions"]:
        for parent in v.parents:
            L.link(parent, v.ref)
    runs: dict[str, list[dict[str, Any]]] = {}
    for c in g["checkpoints"]:
        runs.setdefault(c["run_id"], []).append(c)
    for rid, cks in runs.items():
        tags = g["tags"].get(rid, {})
        kind = cks[0].get("kind", "?")
        L.add(Node(f"run:{rid}", "runs", tags.get("name") or f"{kind} {rid[:8]}",
                   tags.get("bakeoff.conclusion") or tags.get("bakeoff.hypothesis") or ""))
        for ref in cks[0].get("datasets", []):
            L.link(ref, f"run:{rid}")
        steps = ", ".join(str(c.get("step")) for c in cks)
        L.add(Node(f"ckpt:{rid}", "checkpoints", f"{kind} {rid[:8]}", f"steps {steps}"))
        L.link(f"run:{rid}", f"ckpt:{rid}")
    for b in g["boards"]:
        bid = f"board:{b.testset}"
        top = b.entries[0] if b.entries else None
        L.add(Node(bid, "leaderboards", f"leaderboard {b.testset}",
                   f"#1 {top.label} {top.score:.3f}" if top else "", href("leaderboard", b.testset)))
        L.link(b.testset, bid)
        for e in b.entries:
            if e.run_id:
                L.link(f"ckpt:{e.run_id}", bid)
    # Parent checkpoints link to runs only once both exist (PPO after SFT).
    for rid, cks in runs.items():
        if cks[0].get("parent_run_id"):
            L.link(f"ckpt:{cks[0]['parent_run_id']}", f"run:{rid}")
    return L


# --- drawing -----------------------------------------------------------------------

def lineage_svg(L: Lineage, col_w: int = 150, box_w: int = 140, box_h: int = 44, gap: int = 10) -> str:
    """The lineage as an inline SVG: one column per layer, boxes linked to their
    reports, edges as curves. Drawn by hand: a layered layout of a few dozen
    nodes needs no graph library (and graphviz is not a Python dependency)."""
    cols = [[n for n in L.nodes.values() if n.layer == layer] for layer in LAYERS]
    cols = [c for c in cols if c]
    pos: dict[str, tuple[float, float]] = {}
    height = max(len(c) for c in cols) * (box_h + gap) + 40 if cols else 80
    parts = []
    for i, col in enumerate(cols):
        x = 10 + i * col_w
        parts.append(f'<text x="{x}" y="16" class="layer">{H.esc(col[0].layer)}</text>')
        offset = (height - 30 - len(col) * (box_h + gap)) / 2
        for k, n in enumerate(col):
            y = 30 + offset + k * (box_h + gap)
            pos[n.id] = (x, y)
    for a, b in sorted(L.edges):
        if a in pos and b in pos:
            (x1, y1), (x2, y2) = pos[a], pos[b]
            x1, y1, y2 = x1 + box_w, y1 + box_h / 2, y2 + box_h / 2
            mid = (x1 + x2) / 2
            parts.append(f'<path d="M{x1},{y1} C{mid},{y1} {mid},{y2} {x2},{y2}" class="edge"/>')
    for n in L.nodes.values():
        if n.id not in pos:
            continue
        x, y = pos[n.id]
        title = n.title if len(n.title) <= 21 else n.title[:20] + "…"
        detail = n.detail if len(n.detail) <= 26 else n.detail[:25] + "…"
        box = (f'<rect x="{x}" y="{y}" width="{box_w}" height="{box_h}" rx="6" class="node {n.layer.replace(" ", "-")}"/>'
               f'<text x="{x + 8}" y="{y + 18}" class="title">{H.esc(title)}</text>'
               f'<text x="{x + 8}" y="{y + 36}" class="detail">{H.esc(detail)}</text>'
               f'<title>{H.esc(n.title)}\n{H.esc(n.detail)}</title>')
        parts.append(f'<a href="{H.esc(n.href)}">{box}</a>' if n.href else box)
    width = 20 + len(cols) * col_w
    style = ("<style>.layer{font:600 12px system-ui;fill:#555;text-transform:uppercase}"
             ".title{font:600 11.5px system-ui;fill:#111}.detail{font:10.5px system-ui;fill:#555}"
             ".node{fill:#f7f9fc;stroke:#8aa4c8}.node.leaderboards{fill:#fff7d6;stroke:#c9a227}"
             ".node.runs{fill:#eef8f0;stroke:#6aa77a}.edge{fill:none;stroke:#9bb;stroke-width:1.2}"
             "a .node{stroke-width:2}</style>")
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="lineage graph">{style}{"".join(parts)}</svg>')


# --- the page ----------------------------------------------------------------------

def _p(x: float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return "<0.001" if x < 0.001 else f"{x:.3f}"


def _no_winner_note(means: list[float]) -> str:
    if means and max(means) - min(means) < 1e-12:
        return ("<p class=bad>Every model scores the same on this metric: the ranking has no winner "
                "(the order is arbitrary).</p>")
    return ""


def sections(ws: Workspace, g: dict[str, Any], L: Lineage, story: dict[str, Any] | None) -> list[str]:
    out = [f"<p class=muted>Workspace <code>{H.esc(ws.root)}</code>, written "
           f"{H.esc(time.strftime('%Y-%m-%d %H:%M:%S'))}. Every box links to its report where there is one.</p>"]
    if story and story.get("conclusion"):
        out.append("<h2>Conclusion</h2><ol>" + "".join(f"<li>{H.esc(x)}</li>" for x in story["conclusion"])
                   + f"</ol><p class=muted>Written by code from the ranking on {H.esc(story.get('primary'))}.</p>")
    if story:
        names = story.get("names", {})
        for key, ranking in (story.get("rankings") or {}).items():
            rows = [(r["rank"], names.get(r["label"], r["label"]), f"{r['mean']:.3f}",
                     f"[{r['lo']:.3f}, {r['hi']:.3f}]", "yes" if r["worse_than_best"] else "",
                     *[f"{v:.3f}" for v in r["slices"].values()]) for r in ranking["rows"]]
            slices = list(ranking["rows"][0]["slices"]) if ranking["rows"] else []
            primary = " (the conclusion's metric)" if key == story.get("primary") else ""
            out.append(f"<h2>Ranking on {H.esc(ranking['metric'])}{primary}</h2>"
                       + _no_winner_note([r["mean"] for r in ranking["rows"]])
                       + H.table(["#", "model", "mean", "95% CI", "significantly worse than #1", *slices],
                                 rows, highlight=[0]))
    if g["boards"]:
        b = g["boards"][-1]
        names = (story or {}).get("names", {})
        rows = [(e.rank, names.get(e.label, e.label) + (" (base)" if e.is_base and names.get(e.label) != "base" else ""), f"{e.score:.3f}",
                 f"[{e.lo:.3f}, {e.hi:.3f}]", f"{e.p_best:.2f}", _p(e.p_adj),
                 *[f"{e.slices.get(s, float('nan')):.3f}" for s in b.slices],
                 "—" if e.loglik_per_token is None else f"{e.loglik_per_token:.3f}")
                for e in b.entries[:8]]
        link = H.report_name("leaderboard", b.testset)
        out.append(f"<h2>Latest leaderboard: <a href='{H.esc(link)}'>{H.esc(b.testset)}</a></h2>"
                   f"<p>{b.n_items} items, test: {H.esc(b.test)}; top {len(rows)} of {len(b.entries)}.</p>"
                   + _no_winner_note([e.score for e in b.entries])
                   + H.table(["#", "model", "score", "95% CI", "p(best)", "p not best (adj.)", *b.slices,
                              "ref. loglik/token (pooled)"], rows, highlight=[0]))
    out.append("<h2>Lineage</h2><div style='overflow-x:auto'>" + lineage_svg(L) + "</div>")
    vrows = []
    for v in g["versions"]:
        led = _ledger_counts(ws, v.ref) if v.operation != "ingest" else {}
        vrows.append((v.ref, v.operation, v.rows, ", ".join(v.parents),
                      ", ".join(f"{k}: {n}" for k, n in led.items()), v.counts.get("quarantined", 0)))
    out.append("<h2>Dataset versions</h2>" + H.table(
        ["version", "made by", "rows", "from", "removed (ledger, by step)", "quarantined"], vrows))
    runs = [n for n in L.nodes.values() if n.layer == "runs"]
    rrows = []
    for n in runs:
        rid = n.id.split(":", 1)[1]
        t = g["tags"].get(rid, {})
        cks = [c for c in g["checkpoints"] if c["run_id"] == rid]
        rrows.append((n.title, rid[:12], cks[0].get("kind", "") if cks else "",
                      ", ".join(cks[0].get("datasets", [])) if cks else "", t.get("bakeoff.hypothesis", ""),
                      t.get("bakeoff.conclusion", ""), t.get("bakeoff.lr_warning", ""), len(cks)))
    out.append("<h2>Training runs</h2>" + H.table(
        ["run", "id", "kind", "data", "hypothesis", "conclusion", "LR monitor", "checkpoints"], rrows))
    links = "".join(f"<li><a href='{H.esc(p.name)}'>{H.esc(p.name)}</a></li>" for p in g["reports"])
    out.append(f"<h2>All reports</h2><ul>{links or '<li>none yet</li>'}</ul>")
    return out


#: The latest conclusion (``bakeoff demo`` writes it), shown on every later overview.
STORY_FILE = "conclusion.json"


def write_overview(ws: Workspace, story: dict[str, Any] | None = None) -> Path:
    """Write ``reports/index.html`` for ``ws`` and return its path. ``story``
    (rankings and conclusion) is kept in ``reports/conclusion.json`` for later
    overviews."""
    import os

    saved = ws.reports_dir() / STORY_FILE
    if story is not None:
        saved.parent.mkdir(parents=True, exist_ok=True)
        tmp = saved.with_name(f".{saved.name}.tmp")
        tmp.write_text(json.dumps(story, indent=1, default=str), encoding="utf-8")
        os.replace(tmp, saved)
    elif saved.exists():
        story = json.loads(saved.read_text(encoding="utf-8"))
    g = gather(ws)
    L = lineage(ws, g)
    return H.write(ws.reports_dir() / "index.html", f"bakeoff workspace overview — {ws.root.name}",
                   sections(ws, g, L, story))


@click.command("report")
@click.option("--open", "open_it", is_flag=True, help="Also print a file:// URL to open.")
def report_cmd(open_it: bool) -> None:
    """Write reports/index.html: one page with the workspace's lineage (files →
    versions → test sets → runs → checkpoints → leaderboards), links to every
    report, and the latest leaderboard's top rows.

    \b
    Example:
      bakeoff report
      bakeoff --workspace /tmp/demo-ws report
    """
    from bakeoff.console import log, out
    from bakeoff.context import get_workspace
    from bakeoff.logs import ensure_library_logs

    ws = get_workspace()
    ensure_library_logs(ws.root, training=False)
    path = write_overview(ws)
    log(f"overview written: {path}")
    out.print(path.as_uri() if open_it else str(path), highlight=False)
