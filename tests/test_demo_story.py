"""The pieces behind the demo's result, without training: the conclusion written
from a ranking, the overview page, the quiet terminal, run names."""

from __future__ import annotations

import logging
import sys
import warnings

import numpy as np

from bakeoff.demo import conclusion
from bakeoff.likelihood import rank_table


def _table(gain_in: float, gain_adj: float, seed: int = 0):
    """items x models: base, SFT round 1, SFT round 2, the LR x10 control."""
    rng = np.random.default_rng(seed)
    slices = ["in-domain"] * 30 + ["adjacent"] * 30
    base = rng.normal(-6.0, 0.3, 60)
    shift = np.array([gain_in] * 30 + [gain_adj] * 30)
    r1 = base + shift + rng.normal(0, 0.05, 60)
    r2 = r1 + rng.normal(0, 0.05, 60)
    bad = base - 1.0 + rng.normal(0, 0.05, 60)
    labels = ["b", "s1", "s2", "x"]
    names = {"b": "base", "s1": "SFT round 1 @12", "s2": "SFT round 2 @12", "x": "SFT LR 10x @12"}
    return rank_table("reference log-likelihood per token", labels,
                      np.column_stack([base, r1, r2, bad]), slices), names


def test_conclusion_is_written_from_the_ranking():
    table, names = _table(gain_in=2.0, gain_adj=-0.5)
    lines = conclusion(table, names, [{"kind": "spike"}])
    assert len(lines) == 3
    assert lines[0].startswith("In-domain (30 items") and "; significant," in lines[0] and "+2.0" in lines[0]
    assert "worse than the base model" in lines[1] and "does not carry over" in lines[1]
    assert "Round 2 vs round 1" in lines[2] and "not significant" in lines[2]
    assert "ranks 4 of 4 (last)" in lines[2] and "loss monitor: spike" in lines[2]


def test_conclusion_reports_the_other_metric_in_domain():
    table, names = _table(gain_in=2.0, gain_adj=0.0)
    rng = np.random.default_rng(1)
    answers = np.column_stack([np.zeros(60), rng.random(60) < 0.3, rng.random(60) < 0.3, np.zeros(60)])
    other = rank_table("score (exact/numeric/fields)", table.labels, answers.astype(float),
                       list(table.item_slices))
    lines = conclusion(table, names, [], other)
    assert len(lines) == 3
    best = "s1" if "SFT round 1" in lines[0] else "s2"
    mean = other.column(best, "in-domain").mean()
    assert f"On score (exact/numeric/fields): {mean:.3f} vs 0.000 (unadjusted p = " in lines[0]


def test_a_smaller_significant_adjacent_gain_carries_over_in_part():
    table, names = _table(gain_in=2.0, gain_adj=0.5)
    assert "carries over only in part" in conclusion(table, names, [])[1]


def test_no_gain_is_not_called_significant():
    table, names = _table(gain_in=0.0, gain_adj=0.0)
    lines = conclusion(table, names, [])
    assert "not significant" in lines[0] and "loss monitor: no alert" in lines[2]


def test_rank_table_slices_follow_the_leaderboard_order():
    table, _ = _table(2.0, 0.0)
    assert list(table.by_slice) == ["in-domain", "adjacent"]
    assert list(table.rows[0].slices) == ["in-domain", "adjacent"]
    assert table.rows[-1].label == "x" and table.rows[-1].worse_than_best


def test_overview_of_an_empty_workspace(tmp_path):
    from bakeoff.overview import write_overview
    from bakeoff.workspace import Workspace

    path = write_overview(Workspace(tmp_path / "ws"))
    page = path.read_text(encoding="utf-8")
    assert path.name == "index.html" and "none yet" in page and "<svg" in page


def test_overview_keeps_the_latest_conclusion(tmp_path):
    from bakeoff.overview import write_overview
    from bakeoff.workspace import Workspace

    ws = Workspace(tmp_path / "ws")
    story = {"primary": "loglik", "names": {}, "conclusion": ["line one", "line two", "line three"],
             "rankings": {}}
    write_overview(ws, story)
    page = write_overview(ws).read_text(encoding="utf-8")   # a later `bakeoff report`
    assert "line two" in page


def test_lineage_svg_links_nodes_to_reports():
    from bakeoff.overview import Lineage, Node, lineage_svg

    L = Lineage()
    L.add(Node("f", "files", "train.jsonl"))
    L.add(Node("d@v1", "datasets", "d@v1", "10 rows"))
    L.add(Node("t@v1", "test sets", "t@v1", "in-domain 5", "testset-t-v1.html"))
    L.link("f", "d@v1"), L.link("d@v1", "t@v1"), L.link("d@v1", "missing")
    svg = lineage_svg(L)
    assert svg.count("<path") == 2 and 'href="testset-t-v1.html"' in svg


def test_library_output_goes_to_the_log_not_the_terminal(tmp_path, capsys):
    from bakeoff.logs import library_output, log_path, route_library_logs, stop_library_logs

    path = route_library_logs(tmp_path / "logs", training=False)
    try:
        assert log_path() == path
        with library_output():
            print("a library print")
            print("a progress bar", file=sys.stderr)
            warnings.warn("a library warning", FutureWarning)
        logging.getLogger("mlflow.store").info("an MLflow INFO line")
    finally:
        stop_library_logs()
    captured = capsys.readouterr()
    assert captured.out == "" and "library" not in captured.err and "MLflow" not in captured.err
    text = path.read_text(encoding="utf-8")
    assert "a library print" in text and "a progress bar" in text and "an MLflow INFO line" in text


def test_run_label_says_round_kind_and_dataset():
    from bakeoff.tracking import run_label

    assert run_label(2, "sft", "fin-train@v3") == "r2-sft-fin-train@v3"
    assert run_label(None, "ppo", "prompts@v1") == "ppo-prompts@v1"
    assert run_label(1, "reward") == "r1-reward"


def test_control_run_tied_with_the_base_model_at_the_bottom_is_last():
    """On answers, a broken run and the base model both score 0: tied ranks share
    a number, and the control run is still last (tied)."""
    rng = np.random.default_rng(2)
    slices = ["in-domain"] * 40 + ["adjacent"] * 20
    good = np.r_[rng.random(40) < 0.4, np.zeros(20)].astype(float)
    scores = np.column_stack([np.zeros(60), good, good * (rng.random(60) < 0.5), np.zeros(60)])
    names = {"b": "base", "s1": "SFT round 1 @64", "s2": "SFT round 2 @64", "x": "SFT LR 10x @64"}
    table = rank_table("score (exact/numeric/fields)", list(names), scores, slices)
    line = conclusion(table, names, [])[2]
    assert "the LR 10x run ranks 3 of 4 (last, tied with base)" in line
