"""End to end: `bakeoff evaluate run` + `rank` with tiny models on a small test
set, and a leaderboard whose winner fails one item that the others pass."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from bakeoff.cli import cli
from bakeoff.evaluate.fakes import ScriptedGenerator, commit_testset, save_tiny_causal_lm
from bakeoff.evaluate.generate import GenerationSettings
from bakeoff.evaluate.items import load_items
from bakeoff.evaluate.rank import build_leaderboard
from bakeoff.evaluate.report import render_html
from bakeoff.evaluate.runner import ModelSpec, evaluate_model

ITEMS = [
    dict(question="Revenue 2023 (in thousands): 1,200. Revenue in dollars?", reference="1200000",
         slice="in-domain", task="arithmetic", scoring={"method": "numeric", "scale": 1000}),
    dict(question="Which company filed?", reference="ACME", slice="in-domain", task="qa",
         scoring={"method": "exact"}),
    dict(question="Extract vendor and total", reference='{"vendor": "ACME", "total": "12.50"}',
         slice="adjacent", task="extraction", scoring={"method": "fields"}),
    dict(question="Summarise the invoice", reference="an invoice from acme for 12.50", slice="adjacent",
         task="summary", scoring={"method": "rouge_l"}),
    dict(question="Contract type?", reference="lease", slice="far", task="classification",
         scoring={"method": "choice", "choices": ["lease", "nda", "employment"]}),
    dict(question="Who signs?", reference="the tenant", slice="far", task="qa", scoring={"method": "token_f1"}),
]


def _run(ws, *args: str) -> dict:
    res = CliRunner().invoke(cli, ["-w", str(ws.root), *args], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def test_cli_run_and_rank_with_tiny_models(ws, tmp_path):
    commit_testset(ws, "fin-test", ITEMS)
    base = save_tiny_causal_lm(tmp_path / "base", seed=0)
    run_dir = ws.runs_dir() / "fin" / "run1"
    for step, seed in ((10, 1), (20, 2)):
        save_tiny_causal_lm(run_dir / f"checkpoint-{step}", seed=seed, checkpoint={
            "run_id": "run1", "experiment_name": "fin", "step": step, "kind": "sft", "base_model": str(base),
            "datasets": ["fin-test@v1"], "parent_run_id": None, "parent_checkpoint": None})

    out = _run(ws, "evaluate", "run", "--testset", "fin-test@v1", "--checkpoints", "run1",
               "--max-new-tokens", "4", "--batch-size", "4", "--devices", "cpu", "--json")
    models = {m["label"]: m for m in out["models"]}
    # labels say what a checkpoint is: kind, dataset version, step
    assert set(models) == {"base:base", "sft fin-test@v1 step 10", "sft fin-test@v1 step 20"}
    assert all(m["generated"] == len(ITEMS) and m["n_items"] == len(ITEMS) for m in models.values())
    assert models["base:base"]["is_base"]

    # Again: everything from the cache.
    again = _run(ws, "evaluate", "run", "--testset", "fin-test@v1", "--experiment", "fin",
                 "--max-new-tokens", "4", "--no-rank", "--json")
    assert all(m["generated"] == 0 for m in again["models"])

    html = tmp_path / "board.html"
    board = _run(ws, "evaluate", "rank", "--testset", "fin-test@v1", "--html", str(html), "--json")
    rows = board["checkpoints"]
    assert len(rows) == 3
    for r in rows:  # tied means share a rank
        assert r["rank"] == 1 + sum(o["score"] > r["score"] + 1e-12 for o in rows)
    for r in rows:
        assert r["interval"][0] <= r["score"] <= r["interval"][1]
        assert set(r["slices"]) == {"in-domain", "adjacent", "far"}
        assert 0 <= r["p_best"] <= 1 and r["loglik_per_token"] < 0
    assert sum(r["p_best"] for r in rows) == pytest.approx(1.0)
    assert [r for r in rows if r["is_base"]][0]["label"] == "base:base"
    text = html.read_text()
    assert "<img" in text and "http://" not in text and "https://" not in text
    assert "fin-test@v1" in text and "sft fin-test@v1 step 20" in text
    assert board["mlflow_run_id"]

    import mlflow

    mlflow.set_tracking_uri(ws.tracking_uri)
    child = mlflow.search_runs(experiment_names=["bakeoff-eval"],
                               filter_string="tags.`bakeoff.checkpoint` = 'sft fin-test@v1 step 10'")
    assert len(child) == 1 and "metrics.score" in child.columns

    # --experiment filters to that experiment's checkpoints plus base models.
    res = CliRunner().invoke(cli, ["-w", str(ws.root), "evaluate", "rank", "--testset", "fin-test@v1",
                                   "--experiment", "nope", "--no-mlflow"])
    assert res.exit_code != 0


def test_winner_that_fails_one_item_ranks_first_and_report_shows_it(ws, tmp_path):
    items = [dict(question=f"q{i}", reference=f"a{i}", slice=("in-domain", "adjacent", "far")[i % 3])
             for i in range(40)]
    commit_testset(ws, "ts", items)
    version, frame = load_items(ws, "ts@v1")
    right = {it["question"]: it["reference"] for it in items}
    answers = {
        "winner": {**right, "q0": "wrong"},                                   # fails only q0
        "second": {q: a for q, a in right.items() if int(q[1:]) % 4 != 1},    # passes q0, fails 10
        "third": {q: a for q, a in right.items() if int(q[1:]) % 2 == 0},     # passes q0, fails 20
    }
    for label, table in answers.items():
        gen = ScriptedGenerator(table, default="?")
        evaluate_model(ws, version, frame, ModelSpec(label, digest=f"d-{label}", template_id=gen.template_id,
                                                     generator_factory=lambda s, d, g=gen: g),
                       GenerationSettings(batch_size=8))
    board = build_leaderboard(ws, "ts@v1", n_boot=500)
    assert board.winner.label == "winner" and board.winner.rank == 1
    assert board.winner.p_best > 0.95
    q0 = frame.filter(frame["prompt"].list.first().struct.field("content") == "q0")["id"][0]
    assert [x["id"] for x in board.winner_losses] == [q0]
    assert set(board.winner_losses[0]["beaten_by"]) == {"second", "third"}
    assert board.winner_losses[0]["winner_output"] == "wrong"
    assert board.n_disagreements == 21  # q0, and the 20 odd items `third` fails
    assert board.slice_losses == []     # still best on every slice
    second = [e for e in board.entries if e.label == "second"][0]
    assert second.p_adj < 0.05 and second.significantly_worse and board.test == "mcnemar"
    assert board.best_set == ["winner"] and second.worse_than == "winner"
    page = render_html(board, tmp_path / "r.html").read_text()
    assert q0[:12] in page and "Where the winner loses" in page
