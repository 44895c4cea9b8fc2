"""`bakeoff train sft/reward/note` end to end on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from _train_data import commit, sft_rows

pytest.importorskip("trl")


def test_train_sft_json_and_note(ws, tmp_path, monkeypatch):
    from bakeoff.cli import cli

    monkeypatch.setenv("BAKEOFF_MODEL_CACHE", str(tmp_path / "models"))
    ref = commit(ws, "fin", sft_rows(12))
    runner = CliRunner()
    res = runner.invoke(cli, ["-w", str(ws.root), "train", "sft", "--dataset", ref, "--model", "tiny",
                              "--experiment_name", "cli", "--max-steps", "2", "--save-steps", "1",
                              "--max-length", "64", "--subset", "0.5", "--hypothesis", "smoke", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert {"run_id", "tracking_uri", "experiment_name", "checkpoints"} <= set(doc)
    assert doc["experiment_name"] == "cli"
    assert [Path(c).name for c in doc["checkpoints"]] == ["checkpoint-1", "checkpoint-2"]

    import mlflow

    run = mlflow.MlflowClient(tracking_uri=doc["tracking_uri"]).get_run(doc["run_id"])
    assert doc["tracking_uri"] == ws.tracking_uri
    assert run.data.params["data.rows_subset"] == "6" and run.data.params["subset"] == "0.5"

    res = runner.invoke(cli, ["-w", str(ws.root), "train", "note", doc["run_id"],
                              "--conclusion", "pipeline works", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["conclusion"] == "pipeline works"

    res = runner.invoke(cli, ["-w", str(ws.root), "train", "sft", "--dataset", "nope@v1", "--model", "tiny",
                              "--experiment_name", "cli"])
    assert res.exit_code != 0 and "Traceback" not in res.output


def test_train_help_shows_examples():
    from bakeoff.cli import cli

    for cmd in ("sft", "reward", "note"):
        res = CliRunner().invoke(cli, ["train", cmd, "--help"])
        assert res.exit_code == 0 and "Example" in res.output
