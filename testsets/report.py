"""HTML reports of test-set builds and contamination checks (self-contained:
inline CSS, plots as inline PNG; see ``bakeoff.html``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bakeoff import html as H
from bakeoff.workspace import Version, Workspace

_SLICE_COLOURS = {"in-domain": "#3b7dd8", "adjacent": "#e08a1e", "far": "#8a8a8a", "unassigned": "#cccccc"}


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _slice_plot(slices: dict[str, Any]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(slices)
    fig, ax = plt.subplots(figsize=(6, 0.6 + 0.5 * max(1, len(names))))
    sizes = [slices[n]["size"] for n in names]
    targets = [slices[n].get("target", 0) for n in names]
    ax.barh(names, targets, color="#eeeeee", edgecolor="#bbbbbb", label="target")
    ax.barh(names, sizes, color=[_SLICE_COLOURS.get(n, "#555") for n in names], height=0.5, label="items")
    for i, s in enumerate(sizes):
        ax.text(s, i, f" {s}", va="center", fontsize=9)
    ax.invert_yaxis()
    ax.set_xlabel("items")
    ax.set_xlim(0, max([*sizes, *targets, 1]) * 1.15)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    return H.figure(fig, "slice sizes")


def _similarity_plot(domains: list[dict[str, Any]], baseline: float | None,
                     adjacent_at: float | None = None) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    doms = sorted(domains, key=lambda d: -(d.get("nn_mean") or 0))
    fig, ax = plt.subplots(figsize=(7, 0.7 + 0.4 * max(1, len(doms))))
    y = range(len(doms))
    ax.barh([i - 0.18 for i in y], [d.get("nn_mean") or 0 for d in doms], height=0.35,
            color=[_SLICE_COLOURS.get(d["slice"], "#555") for d in doms], label="mean nearest-neighbour cosine")
    ax.barh([i + 0.18 for i in y], [d.get("centroid_cos") or 0 for d in doms], height=0.35,
            color=[_SLICE_COLOURS.get(d["slice"], "#555") for d in doms], alpha=0.45, label="centroid cosine")
    ax.set_yticks(list(y), [f"{d['domain']} ({d['slice']})" for d in doms], fontsize=8)
    if baseline:
        ax.axvline(baseline, color="#3b7dd8", ls="--", lw=1, label="in-domain baseline")
    if adjacent_at:
        ax.axvline(adjacent_at, color="#e08a1e", ls=":", lw=1.5, label="adjacent band starts")
    ax.invert_yaxis()
    ax.set_xlabel("cosine similarity to the training data")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7)
    return H.figure(fig, "domain similarity")


def flagged_section(records: list[dict[str, Any]], title: str = "Flagged items") -> str:
    if not records:
        return f"<h2>{H.esc(title)}</h2><p class=good>No item shares content with the training data.</p>"
    rows = [[r["id"][:16], "flagged" if r["flagged"] else "reported", ", ".join(r["signals"]) or "ngram>=report",
             r["ngram_len"], _fmt(r["minhash_jaccard"]), _fmt(r["cosine"]),
             (r["train_match_id"] or "")[:16], r["text"], r["train_text"]] for r in records]
    hl = [i for i, r in enumerate(records) if r["flagged"]]
    return (f"<h2>{H.esc(title)}</h2><p>{len(hl)} flagged; {len(records) - len(hl)} only reported "
            f"(shared n-gram at or above the report length). Highlighted rows were flagged.</p>"
            + H.table(["item", "status", "signals", "longest n-gram", "MinHash J", "cosine", "training match",
                       "item text", "training text"], rows, highlight=hl))


def build_sections(report: dict[str, Any]) -> list[str]:
    sec: list[str] = []
    sec.append(f"<p>Training version <code>{H.esc(report['train'])}</code>; pools "
               + ", ".join(f"<code>{H.esc(p)}</code>" for p in report["pools"])
               + f". Domains from {H.esc(report['domains_from'])}.</p>")
    if report.get("warnings"):
        sec.append("<h2>Warnings</h2><ul>" + "".join(f"<li class=bad>{H.esc(w)}</li>" for w in report["warnings"])
                   + "</ul>")
    slices = report["slices"]
    sec.append("<h2>Slices</h2>")
    if slices:
        sec.append(_slice_plot(slices))
    power = report["power"]["slices"]
    sec.append(H.table(
        ["slice", "items", "target", "domains", "by task", "mean NN cosine to training",
         "95% half-width at p=0.5", "enough?"],
        [[s, v["size"], v.get("target"), ", ".join(map(str, v["domains"])),
          ", ".join(f"{k}: {n}" for k, n in v["by_task"].items()), _fmt(v.get("nn_cosine_mean")),
          _fmt(power.get(s, {}).get("half_width")), "no" if power.get(s, {}).get("too_wide") else "yes"]
         for s, v in slices.items()],
        highlight=[i for i, s in enumerate(slices) if power.get(s, {}).get("too_wide")]))
    base = report["baseline"]
    sec.append("<h2>Domain similarity to the training data</h2>"
               f"<p>Baseline (mean nearest-neighbour cosine of {H.esc(base['from'])}): "
               f"{_fmt(base['nn_mean'])}; embeddings: <code>{H.esc(report.get('embedding_model'))}</code>. Band mode {H.esc(report['params']['band_mode'])}: adjacent at "
               f"&ge; {report['params']['adjacent_min']}, far below {report['params']['far_max']}.</p>")
    params = report["params"]
    adjacent_at = (params["adjacent_min"] * base["nn_mean"] if params["band_mode"] == "relative"
                   else params["adjacent_min"])
    sec.append(_similarity_plot(report["domains"], base["nn_mean"], adjacent_at))
    sec.append(H.table(["domain", "slice", "pool items", "centroid cosine", "mean NN cosine", "relative", "why"],
                       [[d["domain"], d["slice"], d["pool_rows"], _fmt(d["centroid_cos"]), _fmt(d["nn_mean"]),
                         _fmt(d["relative"]), d["why"]] for d in report["domains"]]))
    if report.get("clusters"):
        cl = report["clusters"]["clusters"]
        sec.append("<h3>Clusters</h3>" + H.table(
            ["cluster", "training rows", "pool rows", "training enrichment", "majority label"],
            [[c, v["train_rows"], v["pool_rows"], v["train_enrichment"], v["majority_label"]] for c, v in cl.items()]))
    sec.append("<h2>Scoring</h2>" + H.table(["method", "items"], list(report["scoring"].items())))
    con = report["contamination"]
    cfg = con["config"]
    sec.append(f"<p>Decontamination: {con['flagged']} pool candidates flagged "
               f"({', '.join(f'{k}: {v}' for k, v in con['by_signal'].items())}); "
               f"{con['removed']} removed, {con['kept_flagged']} kept and marked. Thresholds: shared n-gram "
               f"&ge; {cfg['ngram_flag']} words (reported from {cfg['ngram_report']}), MinHash Jaccard &ge; "
               f"{cfg['minhash_threshold']}, cosine &ge; {cfg['cosine_flag']}.</p>")
    sec.append(flagged_section(con["items"]))
    counts = report["counts"]
    sec.append("<h2>Counts</h2>" + H.table(["", "rows"], list(counts.items())))
    return sec


def write_build_html(ws: Workspace, version: Version, report: dict[str, Any], path: str | None = None) -> Path:
    """The build report of a test set version, under ``ws.reports_dir()`` by default."""
    target = Path(path) if path else ws.reports_dir() / f"testset-{version.name}-v{version.number}.html"
    return H.write(target, f"Test set {version.ref}", build_sections(report))


def write_check_html(ws: Workspace, report: dict[str, Any], path: str | None = None) -> Path:
    """The report of ``testsets check``."""
    name = f"check-{report['testset'].replace('@', '-')}-vs-{report['train'].replace('@', '-')}.html"
    target = Path(path) if path else ws.reports_dir() / name
    s = report["summary"]
    intro = (f"<p>{s['items']} items of <code>{H.esc(report['testset'])}</code> checked against "
             f"{s['training_rows']} rows of <code>{H.esc(report['train'])}</code>: {s['flagged']} flagged "
             f"({', '.join(f'{k}: {v}' for k, v in s['flagged_by_signal'].items())}).</p>")
    return H.write(target, f"Contamination check {report['testset']}", [intro, flagged_section(report["items"])])
