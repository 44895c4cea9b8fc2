"""Objective coverage: assignment by label / keyword / embedding, gaps,
off-objective rows, diversity, the HTML page and the CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

from bakeoff.cli import cli
from bakeoff.curate.coverage import (UNASSIGNED, assign_rows, coverage_report, load_objectives,
                                     mean_pairwise_distance, write_html)
from bakeoff.schema import conform, with_ids
from bakeoff.workspace import BakeoffError

DEMO_OBJECTIVES = Path(__file__).resolve().parents[1] / "curate" / "demo_objectives.yaml"

OBJECTIVES = {
    "name": "fin objective",
    "embedding_floor": 0.35,
    "axes": {
        "domain": {
            "finance-tables": {"description": "financial statements revenue operating income fiscal year table",
                               "keywords": ["fiscal year", "revenue"], "aliases": ["finance"], "min": 3},
            "payroll": {"description": "salary payslip employee wages gross net pay", "min": 2},
        },
        "task": [
            {"name": "qa", "description": "look up one value", "keywords": ["what was"], "min": 2},
            {"name": "arithmetic", "description": "compute growth average ratio",
             "keywords": ["average", "growth"], "patterns": [r"\bsum of\b"], "min": 1},
        ],
    },
    "cells": [{"domain": "finance-tables", "task": "qa", "min": 2},
              {"domain": "payroll", "task": "qa", "min": 1}],
}


def row(prompt: str, answer: str = "ok", **labels) -> dict:
    return {"kind": "sft", "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}],
            **labels}


def frame(rows: list[dict]) -> pl.DataFrame:
    return with_ids(conform(pl.DataFrame(rows)))


@pytest.fixture
def df() -> pl.DataFrame:
    return frame([
        row("What was revenue in 2021?", domain="finance-tables", task="qa"),                 # 0 labels
        row("What was operating income in 2020?", domain="finance", task="qa"),               # 1 alias
        row("Compute the average revenue for the fiscal year.", task="arithmetic"),           # 2 keyword domain
        row("Give the sum of the two columns in the operating statement.", domain="finance-tables"),  # 3 pattern task
        row("Extract the invoice number.", domain="invoices", task="extraction"),             # 4 off (labels)
        row("salary payslip employee wages gross net pay for March", task="qa"),              # 5 embedding domain
        row("zzz qqq xxx", domain=None),                                                      # 6 nothing matches
    ])


def test_assignment_by_label_keyword_and_embedding(ws, df):
    a = assign_rows(df, load_objectives(OBJECTIVES), ws)
    got = a.select("domain", "domain_method", "task", "task_method").rows()
    assert got[0] == ("finance-tables", "label", "qa", "label")
    assert got[1] == ("finance-tables", "label", "qa", "label")          # alias mapped
    assert got[2][:2] == ("finance-tables", "keyword") and got[2][2:] == ("arithmetic", "label")
    assert got[3][2:] == ("arithmetic", "keyword")                       # regex pattern
    assert got[4] == ("invoices", "label", "extraction", "label")
    assert got[5][:2] == ("payroll", "embedding")
    assert got[6][0] == UNASSIGNED and got[6][1] == "none"
    assert a["domain_on"].to_list() == [True, True, True, True, False, True, False]
    conf = a["domain_confidence"].to_list()
    assert conf[0] == 1.0 and conf[2] == 1.0                             # both keyword hits are one value's
    assert 0.35 <= conf[5] <= 1.0 and conf[6] < 0.35


def test_keyword_confidence_is_share_of_hits(ws):
    d = frame([row("What was the average growth?")])                     # qa: 1 hit, arithmetic: 2 hits
    a = assign_rows(d, load_objectives(OBJECTIVES), ws)
    assert a["task"][0] == "arithmetic" and a["task_method"][0] == "keyword"
    assert a["task_confidence"][0] == pytest.approx(2 / 3)


def test_report_counts_gaps_and_off_objective(ws, df):
    rep = coverage_report(df, OBJECTIVES, ws, dataset="t@v1")
    json.dumps(rep)  # JSON-ready
    assert rep["rows"] == 7
    cells = {(c["domain"], c["task"]): c for c in rep["cells"]}
    assert cells[("finance-tables", "qa")]["count"] == 2 and not cells[("finance-tables", "qa")]["gap"]
    assert cells[("finance-tables", "arithmetic")]["count"] == 2
    assert cells[("payroll", "qa")]["count"] == 1
    assert cells[("payroll", "arithmetic")]["count"] == 0
    assert sum(c["count"] for c in rep["cells"]) == 7
    gaps = {(g["kind"], g.get("axis") or g["domain"], g.get("value") or g["task"]) for g in rep["gaps"]}
    # finance-tables has 4 >= 3; payroll 1 < 2; qa 3 >= 2; cell payroll x qa 1 >= 1.
    assert gaps == {("axis", "domain", "payroll")}
    payroll = rep["axes"]["domain"]["values"]["payroll"]
    assert payroll == {"count": 1, "min": 2, "gap": True, "short": 1, "by_method": {"embedding": 1}}
    off = rep["off_objective"]
    assert off["rows"] == 2
    assert off["by_reason"]["domain: not in objectives"] == 1 and off["by_reason"]["domain: unassigned"] == 1
    assert {e["id"] for e in off["examples"]} == {df["id"][4], df["id"][6]}
    assert rep["axes"]["domain"]["off_objective"] == {"invoices": 1}
    assert rep["lengths"]["by_domain"]["finance-tables"]["rows"] == 4


def test_cell_minimum_gap(ws, df):
    objectives = json.loads(json.dumps(OBJECTIVES))
    objectives["cells"].append({"domain": "payroll", "task": "arithmetic", "min": 5})
    rep = coverage_report(df, objectives, ws)
    assert {"kind": "cell", "domain": "payroll", "task": "arithmetic", "count": 0, "min": 5, "short": 5} in rep["gaps"]


def test_diversity(ws):
    v = np.random.default_rng(0).standard_normal((30, 16))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    brute = np.mean([1 - v[i] @ v[j] for i in range(30) for j in range(30) if i != j])
    assert mean_pairwise_distance(v) == pytest.approx(brute)
    assert mean_pairwise_distance(v[:1]) is None
    same = frame([row(f"What was revenue in 2021? {'' if i % 2 else ''}", domain="finance-tables", task="qa")
                  for i in range(2)] + [row(p, domain="finance-tables", task="arithmetic")
                                         for p in ("average revenue growth", "payroll invoice contract clause")])
    rep = coverage_report(same, OBJECTIVES, ws)
    cells = {(c["domain"], c["task"]): c for c in rep["cells"]}
    assert cells[("finance-tables", "qa")]["diversity"] == pytest.approx(0.0, abs=1e-5)  # identical rows
    assert cells[("finance-tables", "arithmetic")]["diversity"] > 0.3


def test_no_diversity_embeds_only_what_rules_miss(ws, df, monkeypatch):
    from bakeoff.curate import embeddings as E

    asked: list[list[str]] = []
    original = E.embed_texts

    def spy(texts, *args, **kwargs):
        asked.append(list(texts))
        return original(texts, *args, **kwargs)

    monkeypatch.setattr(E, "embed_texts", spy)
    rep = coverage_report(df, OBJECTIVES, ws, diversity=False)
    assert all(c["diversity"] is None for c in rep["cells"])
    row_texts = df.select(pl.concat_str([pl.col("messages").list.eval(pl.element().struct.field("content"))
                                         .list.join("\n")]))[:, 0].to_list()
    embedded_rows = {t for call in asked for t in call if t in row_texts}
    # Only the rows no label or keyword placed on some axis: 5 (domain), 6 (both).
    assert embedded_rows == {row_texts[5], row_texts[6]}
    asked.clear()
    coverage_report(df, OBJECTIVES, ws, diversity=True)
    assert set(row_texts) <= {t for call in asked for t in call}


def test_html_is_written_and_self_contained(ws, df, tmp_path):
    rep = coverage_report(df, OBJECTIVES, ws, dataset="t@v1")
    path = write_html(rep, tmp_path / "out" / "coverage.html")
    html = path.read_text()
    assert html.startswith("<!doctype html>")
    assert html.count("data:image/png;base64,") == 2           # heatmap + length histograms
    assert not re.search(r"""(?:src|href)\s*=\s*["'](?!data:)""", html)  # nothing fetched from outside
    assert "<script" not in html
    assert "payroll" in html and "Gaps" in html and "invoices" in html


def test_objectives_validation(tmp_path):
    with pytest.raises(BakeoffError, match="at least one axis"):
        load_objectives({"name": "x"})
    with pytest.raises(BakeoffError, match="unknown key"):
        load_objectives({"domain": {"a": {"descripton": "typo"}}})
    with pytest.raises(BakeoffError, match="min"):
        load_objectives({"domain": {"a": {"min": -1}}})
    with pytest.raises(BakeoffError, match="pattern"):
        load_objectives({"task": {"a": {"patterns": ["(unclosed"]}}})
    with pytest.raises(BakeoffError, match="twice"):
        load_objectives({"task": [{"name": "a"}, {"name": "a"}]})
    bad = tmp_path / "bad.yaml"
    bad.write_text("domain: [unclosed\n")
    with pytest.raises(BakeoffError, match="YAML"):
        load_objectives(bad)
    with pytest.raises(BakeoffError, match="not found"):
        load_objectives(tmp_path / "missing.yaml")


def test_demo_objectives_on_demo_data(ws):
    """The shipped objectives: fin-train is on objective with an arithmetic gap (the
    demo's training file is mostly look-ups); in the pool, invoices and contracts
    are off-objective."""
    from bakeoff.demo_data import make_demo_workspace

    make_demo_workspace(ws, scale=0.5)
    obj = load_objectives(DEMO_OBJECTIVES)
    assert obj.names("domain") == ["finance-tables"] and obj.names("task") == ["qa", "arithmetic"]
    pool = coverage_report(ws.load("pool"), obj, ws, dataset="pool")
    assert set(pool["axes"]["domain"]["off_objective"]) == {"invoices", "contracts"}
    assert set(pool["axes"]["task"]["off_objective"]) == {"extraction", "classification"}
    n_off = ws.load("pool").filter(pl.col("domain") != "finance-tables").height
    assert pool["off_objective"]["rows"] == n_off
    train = coverage_report(ws.load("fin-train"), obj, ws, dataset="fin-train")
    assert train["on_objective"]["share"] > 0.9
    assert any(g["kind"] == "cell" and g["task"] == "arithmetic" for g in train["gaps"])
    assert not any(g["kind"] == "cell" and g["task"] == "qa" for g in train["gaps"])
    # Unlabelled finance rows are picked up by keywords.
    assert train["axes"]["domain"]["values"]["finance-tables"]["by_method"].get("keyword", 0) > 5


def run(ws, *args):
    res = CliRunner().invoke(cli, ["--workspace", str(ws.root), *args], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res


def test_cli(ws, df, tmp_path):
    ws.commit_version("mix", df, operation="test")
    obj = tmp_path / "objectives.yaml"
    import yaml

    obj.write_text(yaml.safe_dump(OBJECTIVES))
    html = tmp_path / "cov.html"
    rep = json.loads(run(ws, "curate", "coverage", "mix@v1", "--objectives", str(obj), "--html", str(html),
                         "--json").stdout)
    assert rep["dataset"] == "mix@v1" and rep["html"] == str(html) and html.exists()
    assert rep["off_objective"]["rows"] == 2
    human = run(ws, "curate", "coverage", "mix@v1", "--objectives", str(obj)).stdout
    assert "domain x task" in human and "payroll" in human and "gaps" in human
    assert [v.ref for v in ws.versions("mix")] == ["mix@v1"]  # coverage writes no version
    res = CliRunner().invoke(cli, ["--workspace", str(ws.root), "curate", "coverage", "mix@v1",
                                   "--objectives", str(tmp_path / "nope.yaml")])
    assert res.exit_code != 0


def test_keywords_on_the_question_override_a_file_wide_label(ws):
    """A file labelled task=qa throughout still has its arithmetic questions counted
    as arithmetic; and the task is read from the question, not the table with it."""
    table = "| item | 2019 | 2018 |\n|---|---|---|\n| Revenue growth | 10 | 9 |\n| Average cost | 4 | 3 |"
    d = frame([row(f"{table}\n\nQuestion: What was the average revenue growth from 2018 to 2019?", task="qa"),
               row(f"{table}\n\nQuestion: What was revenue in 2019?", task="qa")])
    rep = coverage_report(d, OBJECTIVES, ws, diversity=False)
    a = assign_rows(d, load_objectives(OBJECTIVES), ws)
    assert a["task"].to_list() == ["arithmetic", "qa"]  # the table's "growth", "average" do not count
    assert a["task_method"][0] == "keyword"
    assert rep["axes"]["task"]["relabelled"] == 1


def test_misspelt_axis_is_an_error():
    with pytest.raises(BakeoffError, match="unknown key.*tasks"):
        load_objectives({**OBJECTIVES["axes"], "tasks": {"qa": {}}})
    with pytest.raises(BakeoffError, match="axes.tasks"):
        load_objectives({"axes": {**OBJECTIVES["axes"], "tasks": {}}})


def test_hashing_embedder_assignment_carries_a_warning(ws, df):
    rep = coverage_report(df, OBJECTIVES, ws, model="hashing")
    assert any("word overlap" in w for w in rep["warnings"])
