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
from bakeoff.evaluate.rank import SMALL_N, Entry, Leaderboard


def _f(x: float | None, digits: int = 3) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def _p(x: float | None) -> str:
    if x is None:
        return "—"
    return "<0.001" if x < 0.001 else f"{x:.3f}"


def _cell(c: dict[str, Any] | None) -> str:
    """A cell: mean [interval] (n), with "n<30" when it is too small to read."""
    if not c or c.get("mean") is None:
        return "—"
    small = f" n={c['n']}<{SMALL_N}!" if c.get("small") else f" n={c['n']}"
    return f"{c['mean']:.3f} [{_f(c['lo'], 2)}, {_f(c['hi'], 2)}]{small}"


def _gap(e: Entry) -> str:
    if e.gap is None:
        return "—"
    return f"{e.gap:+.3f} [{e.gap_lo:+.2f}, {e.gap_hi:+.2f}]" + (f" n<{SMALL_N}!" if e.gap_small else "")


def _label(e: Entry) -> str:
    tags = [t for t, on in (("base", e.is_base), ("imported", e.imported)) if on]
    return e.label + (f" ({', '.join(tags)})" if tags else "")


def _verdict(e: Entry, board: Leaderboard) -> str:
    if board.winner is not None and e.label == board.winner.label:
        return "sole best"
    if e.in_best_set:
        return "best set (cannot be told apart)"
    return f"worse than {e.worse_than}"


def leaderboard_rows(board: Leaderboard) -> tuple[list[str], list[list[str]]]:
    cols = ["#", "checkpoint", "kind", "round", "dataset", "step", "score", "95% CI", "n", "prompts cut", "p_best",
            "Δ to best other (simult. CI)", "p (adj.)", "verdict"]
    rows = []
    for e in board.entries:
        rows.append([str(e.rank), _label(e), e.kind or ("base" if e.is_base else "—"),
                     "—" if e.round is None else str(e.round), e.dataset or "—",
                     "—" if e.step is None else str(e.step), _f(e.score),
                     f"[{_f(e.lo)}, {_f(e.hi)}]", str(e.n),
                     f"{e.n_truncated} ({e.truncated_share:.0%})" + ("!" if e.truncated_share > 0.05 else ""),
                     _f(e.p_best, 2),
                     "—" if e.diff_lo is None else f"[{e.diff_lo:+.3f}, {e.diff_hi:+.3f}]", _p(e.p_adj),
                     _verdict(e, board)])
    return cols, rows


def slice_rows(board: Leaderboard) -> tuple[list[str], list[list[str]]]:
    """Per slice: mean [95% interval] n, and the generalisation gap."""
    cols = ["checkpoint", *board.slices, "gap (in−adj)"]
    return cols, [[e.label, *[_cell(e.slice_stats.get(s)) for s in board.slices], _gap(e)] for e in board.entries]


def _round_row(name: str, c: dict[str, Any]) -> list[str]:
    return [name, f"{c['diff']:+.3f}", f"[{c['lo']:+.3f}, {c['hi']:+.3f}]", _p(c["p"]),
            f"{c['n']}" + (f" (n<{SMALL_N}!)" if c["small"] else "")]


def verdict_text(board: Leaderboard) -> str:
    """One sentence: who is best, or which checkpoints cannot be told apart."""
    if board.winner is not None:
        return (f"{board.winner.label} is the sole best: every other checkpoint is significantly worse "
                f"(family-wise error ≤ 5 % over all pairs).")
    return (f"No single winner: {len(board.best_set)} checkpoints cannot be told apart from the best "
            f"({', '.join(board.best_set)}); the highest mean is {board.leader.label if board.leader else '—'}.")


def render_terminal(board: Leaderboard) -> None:
    """The leaderboard and where the winner loses, on stdout."""
    from rich.table import Table

    from bakeoff.console import out

    cols, rows = leaderboard_rows(board)
    t = Table(title=f"Leaderboard on {board.testset} ({board.n_items} items)", title_justify="left")
    for c in cols:
        t.add_column(c, justify="left" if c in ("checkpoint", "verdict", "dataset", "kind") else "right")
    for e, r in zip(board.entries, rows):
        style = "bold green" if e.in_best_set else ("dim" if e.significantly_worse else None)
        t.add_row(*r, style=style)
    out.print(t)
    st = Table(title="Per slice: mean [95% CI] n", title_justify="left")
    scols, srows = slice_rows(board)
    for c in scols:
        st.add_column(c, justify="left" if c == "checkpoint" else "right")
    for r in srows:
        st.add_row(*r)
    out.print(st)
    out.print(verdict_text(board), highlight=False)
    for rc in board.round_comparison:
        rt = Table(title=f"Round {rc['round']} ({rc['checkpoint']}) vs round {rc['vs_round']} "
                         f"({rc['vs_checkpoint']})", title_justify="left")
        for c in ("", "difference", "95% CI", "p", "n"):
            rt.add_column(c, justify="left" if not c else "right")
        for k, c in [("overall", rc["overall"]), *rc["slices"].items()]:
            rt.add_row(*_round_row(k, c))
        out.print(rt)
    if len(board.tasks) > 1:
        tt = Table(title="Per task", title_justify="left")
        tt.add_column("checkpoint")
        for task in board.tasks:
            tt.add_column(task, justify="right")
        for e in board.entries:
            tt.add_row(e.label, *[_cell(e.task_stats.get(task)) for task in board.tasks])
        out.print(tt)
    w = board.leader
    if w is not None:
        out.print(f"Leader: [bold]{w.label}[/] (p_best {w.p_best:.2f}). It scores below another model on "
                  f"{board.n_winner_losses} of {board.n_items} items; models disagree on "
                  f"{board.n_disagreements} items.", highlight=False)
        for sl in board.slice_losses:
            out.print(f"  slice [bold]{sl['slice']}[/] (n={sl['n_items']}{'<30!' if sl['small'] else ''}): "
                      f"leader {sl['winner_score']:.3f} < {sl['best']} {sl['best_score']:.3f} "
                      f"(difference [{sl['diff_lo']:+.2f}, {sl['diff_hi']:+.2f}])", highlight=False)
        if board.winner_losses:
            lt = Table(title="Items the leader loses (largest loss first)", title_justify="left")
            for c in ("item", "slice", "task", "leader", "best other", "reference", "leader said"):
                lt.add_column(c)
            for x in board.winner_losses[:10]:
                lt.add_row(x["id"][:10], x["slice"], x["task"], _f(x["winner_score"], 2),
                           f"{x['best_other']} {_f(x['best_other_score'], 2)}", x["reference"][:40],
                           (x["winner_output"] or "")[:40])
            out.print(lt)
    for e in board.not_ranked:
        out.print(f"[yellow]not ranked[/] {e['label']}: {e['reason']}", highlight=False)
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
        f" {board.n_items} items. Ranked by mean score over the full test set. Score intervals are 95 % "
        "(Wilson for 0/1 scores, BCa bootstrap otherwise). A checkpoint is <i>worse</i> only when a paired "
        "comparison over all pairs, family-wise error ≤ 5 %, says so; Δ is its difference to the best of the "
        "others with a simultaneous interval (below 0 exactly when it is worse). Cells marked "
        f"<b>n&lt;{SMALL_N}!</b> have too few items to read.</p>",
        f"<p class={'good' if board.winner else 'bad'}><b>{H.esc(verdict_text(board))}</b></p>",
        "<h2>Leaderboard</h2>",
        H.table(cols, rows, highlight=[i for i, e in enumerate(board.entries) if e.in_best_set]),
        "<h3>Per slice: mean [95% CI] n</h3>", H.table(*slice_rows(board)),
    ]
    if board.not_ranked or board.unevaluated:
        sections.append("<h2>Not ranked</h2>")
    if board.not_ranked:
        sections.append(H.table(["checkpoint", "items missing", "why"],
                                [[x["label"], "—" if x.get("missing") is None else x["missing"], x["reason"]]
                                 for x in board.not_ranked]))
    if board.unevaluated:
        sections.append(f"<p class=bad>{len(board.unevaluated)} checkpoint(s) were never evaluated on this "
                        f"test set. Evaluate them with:</p><pre>{H.esc(board.evaluate_command)}</pre>")
        sections.append(H.table(["checkpoint", "run", "kind", "round", "step"],
                                [[x["path"], x["run_id"], x["kind"], x["round"], x["step"]]
                                 for x in board.unevaluated]))
    for rc in board.round_comparison:
        sections.append(f"<h2>Round {rc['round']} vs round {rc['vs_round']}</h2>"
                        f"<p>Best of round {rc['round']}: <b>{H.esc(rc['checkpoint'])}</b>; best of round "
                        f"{rc['vs_round']}: <b>{H.esc(rc['vs_checkpoint'])}</b>. Paired difference on the same items "
                        "(95 % interval; it excludes 0 exactly when the paired test has p &lt; 0.05).</p>")
        sections.append(H.table(["", "difference", "95% CI", "p", "n"], [_round_row(k, c) for k, c in
                                [("overall", rc["overall"]), *rc["slices"].items()]]))
    if len(board.tasks) > 1:
        sections += ["<h3>Per task</h3>", H.table(["checkpoint", *board.tasks],
                                                  [[e.label, *[_cell(e.task_stats.get(t)) for t in board.tasks]]
                                                   for e in board.entries])]
    if any(e.loglik_per_token is not None for e in board.entries):
        sections += ["<h3>Reference log-likelihood (generation-free)</h3>",
                     H.table(["checkpoint", "log p per reference token (all items' tokens pooled)"],
                             [[e.label, _f(e.loglik_per_token)] for e in board.entries])]
    sections += ["<h2>Checkpoint × slice</h2>", _heatmap(board), "<h2>Score vs step</h2>", _curves(board)]

    w = board.leader
    sections.append("<h2>Where the winner loses</h2>")
    if w is not None:
        sections.append(f"<p><b>{H.esc(w.label)}</b> is first overall (p_best {w.p_best:.2f}) but scores below "
                        f"another model on <b>{board.n_winner_losses}</b> of {board.n_items} items; models "
                        f"disagree on {board.n_disagreements} items.</p>")
    if board.slice_losses:
        sections.append(H.table(["slice", "leader", "best there", "its score", "difference (95% CI)", "items"],
                                [[s["slice"], _f(s["winner_score"]), s["best"], _f(s["best_score"]),
                                  f"[{s['diff_lo']:+.2f}, {s['diff_hi']:+.2f}]",
                                  f"{s['n_items']}" + (f" (n<{SMALL_N}!)" if s["small"] else "")]
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
                         "bakeoff.winner": board.winner.label if board.winner else "",
                         "bakeoff.best_set": " | ".join(board.best_set)[:5000]})
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
                metrics = {"score": e.score, "ci_lo": e.lo, "ci_hi": e.hi, "p_best": e.p_best, "rank": e.rank,
                           "in_best_set": float(e.in_best_set), "n": e.n, "n_truncated": e.n_truncated,
                           "truncated_share": e.truncated_share}
                metrics.update({f"slice.{k}": v for k, v in e.slices.items() if v is not None})
                metrics.update({f"slice_n.{k}": c["n"] for k, c in e.slice_stats.items()})
                metrics.update({f"task.{k}": v for k, v in e.tasks.items() if k})
                if e.gap is not None:
                    metrics["gap"] = e.gap
                if e.loglik_per_token is not None:
                    metrics["loglik_per_token"] = e.loglik_per_token
                import re

                metrics = {re.sub(r"[^\w\-. /]", "_", k): v for k, v in metrics.items()}
                mlflow.log_metrics(metrics, step=int(e.step or 0))
        return parent.info.run_id
