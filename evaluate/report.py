"""Leaderboard reports: a rich terminal table, a self-contained HTML page, MLflow.

The HTML page (``bakeoff.html``: inline CSS, matplotlib plots as inline PNG) has
the leaderboard, a checkpoint x slice heatmap, score-vs-step curves per run, where
the winner loses, an item-level drill-down with every model's output, and the
dataset and test-set versions behind each run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bakeoff import html as H
from bakeoff.evaluate.rank import Entry, Leaderboard


def _f(x: float | None, digits: int = 3) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def _p(x: float | None) -> str:
    if x is None:
        return "—"
    return "<0.001" if x < 0.001 else f"{x:.3f}"


def leaderboard_rows(board: Leaderboard) -> tuple[list[str], list[list[str]]]:
    cols = ["#", "checkpoint", "score", "95% CI", "p_best", f"p vs #1 (Holm, {board.test})",
            *board.slices, "gap (in−adj)"]
    rows = []
    for e in board.entries:
        rows.append([str(e.rank), e.label + (" (base)" if e.is_base else ""), _f(e.score),
                     f"[{_f(e.lo)}, {_f(e.hi)}]", _f(e.p_best, 2), _p(e.p_holm),
                     *[_f(e.slices.get(s)) for s in board.slices], _f(e.gap)])
    return cols, rows


def render_terminal(board: Leaderboard) -> None:
    """The leaderboard and where the winner loses, on stdout."""
    from rich.table import Table

    from bakeoff.console import out

    cols, rows = leaderboard_rows(board)
    t = Table(title=f"Leaderboard on {board.testset} ({board.n_items} items)", title_justify="left")
    for c in cols:
        t.add_column(c, justify="left" if c == "checkpoint" else "right")
    for e, r in zip(board.entries, rows):
        style = "bold green" if e.rank == 1 else ("dim" if e.significantly_worse else None)
        t.add_row(*r, style=style)
    out.print(t)
    if len(board.tasks) > 1:
        tt = Table(title="Per task", title_justify="left")
        tt.add_column("checkpoint")
        for task in board.tasks:
            tt.add_column(task, justify="right")
        for e in board.entries:
            tt.add_row(e.label, *[_f(e.tasks.get(task)) for task in board.tasks])
        out.print(tt)
    w = board.winner
    if w is not None:
        out.print(f"Winner: [bold]{w.label}[/] (p_best {w.p_best:.2f}). It scores below another model on "
                  f"{board.n_winner_losses} of {board.n_items} items; models disagree on "
                  f"{board.n_disagreements} items.", highlight=False)
        for sl in board.slice_losses:
            out.print(f"  slice [bold]{sl['slice']}[/]: winner {sl['winner_score']:.3f} < "
                      f"{sl['best']} {sl['best_score']:.3f}", highlight=False)
        if board.winner_losses:
            lt = Table(title="Items the winner loses (largest loss first)", title_justify="left")
            for c in ("item", "slice", "task", "winner", "best other", "reference", "winner said"):
                lt.add_column(c)
            for x in board.winner_losses[:10]:
                lt.add_row(x["id"][:10], x["slice"], x["task"], _f(x["winner_score"], 2),
                           f"{x['best_other']} {_f(x['best_other_score'], 2)}", x["reference"][:40],
                           (x["winner_output"] or "")[:40])
            out.print(lt)
    for e in board.excluded:
        out.print(f"[yellow]excluded[/] {e['label']}: {e['reason']}", highlight=False)
    for wmsg in board.warnings:
        out.print(f"[yellow]warning[/] {wmsg}", highlight=False)


# --- HTML ---------------------------------------------------------------------------

def _heatmap(board: Leaderboard) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cols = board.slices + [f"task:{t}" for t in board.tasks if len(board.tasks) > 1]
    data = np.array([[e.slices.get(c) if not c.startswith("task:") else e.tasks.get(c[5:]) for c in cols]
                     for e in board.entries], dtype=float)
    fig, ax = plt.subplots(figsize=(1.4 + 1.1 * len(cols), 0.8 + 0.35 * len(board.entries)))
    im = ax.imshow(data, cmap="RdYlGn", aspect="auto", vmin=np.nanmin(data), vmax=np.nanmax(data))
    ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right")
    ax.set_yticks(range(len(board.entries)), [e.label for e in board.entries])
    for i in range(data.shape[0]):
        for j in range(data.shape[1]):
            ax.text(j, i, f"{data[i, j]:.2f}", ha="center", va="center", fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.04)
    ax.set_title("score by checkpoint and slice")
    return H.figure(fig, "checkpoint x slice heatmap")


def _curves(board: Leaderboard) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs: dict[str, list[Entry]] = {}
    for e in board.entries:
        if e.step is not None and e.run_id:
            runs.setdefault(e.run_id, []).append(e)
    if not runs:
        return "<p class=muted>No checkpoints with training steps.</p>"
    fig, axes = plt.subplots(1, 1 + len(board.slices), figsize=(4.2 * (1 + len(board.slices)), 3.2),
                             squeeze=False)
    panels = [("overall", None)] + [(s, s) for s in board.slices]
    for ax, (title, sl) in zip(axes[0], panels):
        for run, es in sorted(runs.items()):
            es = sorted(es, key=lambda e: e.step)
            steps = [e.step for e in es]
            if sl is None:
                ys = [e.score for e in es]
                line, = ax.plot(steps, ys, marker="o", label=str(run)[:12])
                ax.fill_between(steps, [e.lo for e in es], [e.hi for e in es], alpha=0.15,
                                color=line.get_color())
            else:
                ax.plot(steps, [e.slices.get(sl) for e in es], marker="o", label=str(run)[:12])
        for e in board.entries:
            if e.is_base:
                y = e.score if sl is None else e.slices.get(sl)
                ax.axhline(y, ls="--", color="grey", lw=1)
        ax.set_title(title)
        ax.set_xlabel("step")
    axes[0][0].set_ylabel("score (dashed: base model)")
    axes[0][0].legend(fontsize=7)
    return H.figure(fig, "score vs step")


def render_html(board: Leaderboard, path: str | Path, lineage: dict[str, list[str]] | None = None) -> Path:
    """Write the self-contained HTML report; ``lineage`` maps a dataset ref to its
    ancestor refs (shown beside each run)."""
    cols, rows = leaderboard_rows(board)
    sections = [
        f"<p>Test set <code>{H.esc(board.testset)}</code> (digest <code>{H.esc(board.testset_digest[:16])}</code>),"
        f" {board.n_items} items, paired bootstrap 95% intervals, {H.esc(board.test)} tests against the leader "
        "with Holm correction. Ranked by mean score over the full test set.</p>",
        "<h2>Leaderboard</h2>", H.table(cols, rows, highlight=[0]),
    ]
    if len(board.tasks) > 1:
        sections += ["<h3>Per task</h3>", H.table(["checkpoint", *board.tasks],
                                                  [[e.label, *[_f(e.tasks.get(t)) for t in board.tasks]]
                                                   for e in board.entries])]
    if any(e.loglik_per_token is not None for e in board.entries):
        sections += ["<h3>Reference log-likelihood (generation-free)</h3>",
                     H.table(["checkpoint", "mean log p per reference token"],
                             [[e.label, _f(e.loglik_per_token)] for e in board.entries])]
    sections += ["<h2>Checkpoint × slice</h2>", _heatmap(board), "<h2>Score vs step</h2>", _curves(board)]

    w = board.winner
    sections.append("<h2>Where the winner loses</h2>")
    if w is not None:
        sections.append(f"<p><b>{H.esc(w.label)}</b> is first overall (p_best {w.p_best:.2f}) but scores below "
                        f"another model on <b>{board.n_winner_losses}</b> of {board.n_items} items; models "
                        f"disagree on {board.n_disagreements} items.</p>")
    if board.slice_losses:
        sections.append(H.table(["slice", "winner", "best there", "its score", "items"],
                                [[s["slice"], _f(s["winner_score"]), s["best"], _f(s["best_score"]), s["n_items"]]
                                 for s in board.slice_losses]))
    if board.winner_losses:
        sections.append(H.table(
            ["item", "slice", "task", "reference", "winner score", "winner output", "best other", "its output"],
            [[x["id"][:12], x["slice"], x["task"], x["reference"], _f(x["winner_score"], 2), x["winner_output"],
              f"{x['best_other']} ({_f(x['best_other_score'], 2)})", x["best_other_output"]]
             for x in board.winner_losses]))
    else:
        sections.append("<p class=good>The winner scores at least as well as every other model on every item.</p>")

    sections.append("<h2>Item drill-down</h2><p class=muted>Items on which models disagree first.</p>")
    labels = [e.label for e in board.entries]
    ordered = sorted(board.items, key=lambda it: -(max(it["scores"].values()) - min(it["scores"].values())))
    for it in ordered[:500]:
        spread = max(it["scores"].values()) - min(it["scores"].values())
        body = H.table(["model", "score", "output"],
                       [[lb, _f(it["scores"][lb], 2), it["outputs"].get(lb)] for lb in labels])
        sections.append(
            f"<details><summary><code>{H.esc(it['id'][:12])}</code> {H.esc(it['slice'])} / {H.esc(it['task'])}"
            f" — spread {spread:.2f}</summary><pre>{H.esc(it['prompt'])}</pre>"
            f"<p>reference: <code>{H.esc(it['reference'])}</code></p>{body}</details>")

    sections.append("<h2>Data behind each run</h2>")
    lineage = lineage or {}
    sections.append(H.table(
        ["checkpoint", "run", "experiment", "step", "kind", "base model", "datasets (lineage)", "weights digest"],
        [[e.label, e.run_id, e.experiment, e.step, e.kind, e.base_model,
          "; ".join(f"{d} ← {' ← '.join(lineage.get(d, [])[1:])}" if lineage.get(d, [])[1:] else d
                    for d in e.datasets), e.weights_digest[:16]] for e in board.entries]))
    for x in board.excluded:
        sections.append(f"<p class=bad>excluded {H.esc(x['label'])}: {H.esc(x['reason'])}</p>")
    for wmsg in board.warnings:
        sections.append(f"<p class=bad>warning: {H.esc(wmsg)}</p>")
    return H.write(path, f"bakeoff leaderboard — {board.testset}", sections)


def dataset_lineage(ws: Any, board: Leaderboard) -> dict[str, list[str]]:
    """Each dataset ref named by a checkpoint -> its lineage refs (nearest first)."""
    out: dict[str, list[str]] = {}
    for e in board.entries:
        for ref in e.datasets:
            if ref not in out:
                try:
                    out[ref] = [v.ref for v in ws.lineage(ref)]
                except Exception:  # a dataset from another workspace: show the ref alone
                    out[ref] = [ref]
    return out


def log_to_mlflow(ws: Any, board: Leaderboard, html_path: Path | None, experiment: str = "bakeoff-eval") -> str:
    """One MLflow run for the ranking (report + leaderboard JSON as artifacts, the
    test set as an input) with a nested run of metrics per checkpoint."""
    import json
    import tempfile

    import mlflow

    from bakeoff.tracking import log_dataset_version, setup_mlflow

    setup_mlflow(ws, experiment)
    with mlflow.start_run(run_name=f"rank {board.testset}") as parent:
        mlflow.set_tags({"bakeoff.stage": "evaluate", "bakeoff.testset": board.testset,
                         "bakeoff.winner": board.winner.label if board.winner else ""})
        try:
            log_dataset_version(ws, board.testset, context="evaluation")
        except Exception as exc:  # lineage is a nicety; the ranking must still be logged
            from bakeoff.console import warn

            warn(f"could not log the test set as an MLflow input: {exc}")
        mlflow.log_metrics({"n_items": board.n_items, "n_checkpoints": len(board.entries),
                            "n_disagreements": board.n_disagreements})
        with tempfile.TemporaryDirectory() as tmp:
            p = Path(tmp) / "leaderboard.json"
            p.write_text(json.dumps(board.to_json(), indent=2, default=str))
            mlflow.log_artifact(str(p))
        if html_path is not None:
            mlflow.log_artifact(str(html_path))
        for e in board.entries:
            with mlflow.start_run(run_name=e.label, nested=True):
                mlflow.set_tags({"bakeoff.checkpoint": e.label, "bakeoff.weights_digest": e.weights_digest,
                                 "bakeoff.train_run_id": e.run_id or "", "bakeoff.is_base": str(e.is_base)})
                metrics = {"score": e.score, "ci_lo": e.lo, "ci_hi": e.hi, "p_best": e.p_best, "rank": e.rank}
                metrics.update({f"slice.{k}": v for k, v in e.slices.items()})
                metrics.update({f"task.{k}": v for k, v in e.tasks.items() if k})
                if e.gap is not None:
                    metrics["gap"] = e.gap
                if e.loglik_per_token is not None:
                    metrics["loglik_per_token"] = e.loglik_per_token
                import re

                metrics = {re.sub(r"[^\w\-. /]", "_", k): v for k, v in metrics.items()}
                mlflow.log_metrics(metrics, step=int(e.step or 0))
        return parent.info.run_id
