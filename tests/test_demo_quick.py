"""Acceptance: `bakeoff demo --quick` shows a result.

One run of the quick demo (tiny random models, ~2 minutes on 2 idle cores; it is
the demo a new user runs first, so it stays in the default suite). Its ranking
must resolve a significant difference between the base model and a trained
checkpoint, by the statistics of bakeoff.evaluate.stats; stdout is exactly one
JSON document and stderr carries no Python warnings; the overview page is
written.
"""

from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    from bakeoff.cli import cli

    ws = tmp_path_factory.mktemp("quick") / "ws"
    from bakeoff.logs import stop_library_logs

    try:
        result = CliRunner().invoke(cli, ["--workspace", str(ws), "demo", "--quick", "--json"],
                                    catch_exceptions=False)
    finally:
        stop_library_logs()
    assert result.exit_code == 0, result.stderr[-3000:]
    return ws, result


def test_stdout_is_one_json_document_and_stderr_has_no_python_warnings(quick):
    _, result = quick
    summary = json.loads(result.stdout)  # raises if anything else is on stdout
    assert summary["story"]["conclusion"]
    assert not re.search(r"\b\w*Warning\b", result.stderr), result.stderr[-2000:]
    assert "LOAD REPORT" not in result.stderr and "INFO mlflow" not in result.stderr


def test_ranking_resolves_a_trained_checkpoint_over_the_base_model(quick):
    _, result = quick
    story = json.loads(result.stdout)["story"]
    names = story["names"]
    ranking = story["rankings"][story["primary"]]
    rows = ranking["rows"]
    leader, base = rows[0], next(r for r in rows if names[r["label"]] == "base")
    assert names[leader["label"]] != "base"
    assert base["worse_than_best"] and base["p_vs_best"] < 0.05
    # the quick demo says what it ranks on
    assert "log-likelihood" in ranking["metric"]
    assert story["conclusion"][0].startswith("In-domain") and "significant," in story["conclusion"][0]
    assert len(story["conclusion"]) == 3


def test_control_run_ranks_last_and_rounds_are_compared(quick):
    _, result = quick
    story = json.loads(result.stdout)["story"]
    names = story["names"]
    rows = story["rankings"][story["primary"]]["rows"]
    assert names[rows[-1]["label"]].startswith("SFT LR")
    assert any(n.startswith("SFT round 2") for n in names.values())
    assert "Round 2 vs round 1" in story["conclusion"][2]
    # what the loss monitor said is reported either way (at toy scale it may not fire)
    assert "loss monitor: " in story["conclusion"][2]


def test_overview_page_and_logs_are_written(quick):
    ws, result = quick
    summary = json.loads(result.stdout)
    index = ws / "reports" / "index.html"
    assert summary["reports"]["overview"] == str(index)
    page = index.read_text(encoding="utf-8")
    assert "<svg" in page and "Lineage" in page and "leaderboard-fin-test-v1.html" in page
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    logs = list((ws / "logs").glob("bakeoff-*.log"))
    assert logs and logs[0].stat().st_size > 0
