"""`bakeoff train ppo` end to end on tiny models: lineage, MLflow metrics, checkpoints."""

from __future__ import annotations

import json
import shutil

import polars as pl
import pytest
import torch
from click.testing import CliRunner



@pytest.fixture(autouse=True)
def one_thread(torch_one_thread):
    """Every test here runs torch on one thread (see conftest)."""

@pytest.fixture
def setup(ws, tmp_path):
    """A workspace with a prompts version, an 'SFT' checkpoint (the tiny model
    with SFT metadata) and a reward checkpoint with reward_stats.json."""
    from transformers import AutoModelForSequenceClassification

    from bakeoff.schema import conform, with_ids
    from bakeoff.train.models import build_tiny_model

    tiny = build_tiny_model(tmp_path / "models" / "tiny")
    sft = ws.runs_dir() / "sft-exp" / "sftrun" / "checkpoint-5"
    shutil.copytree(tiny, sft)
    (sft / "bakeoff_checkpoint.json").write_text(json.dumps({
        "run_id": "sftrun", "experiment_name": "sft-exp", "step": 5, "kind": "sft",
        "base_model": str(tiny), "datasets": ["fin@v1"], "parent_run_id": None,
        "parent_checkpoint": None}))
    rm_dir = ws.runs_dir() / "rm-exp" / "rmrun" / "checkpoint-3"
    torch.manual_seed(3)
    rm = AutoModelForSequenceClassification.from_pretrained(tiny, num_labels=1)
    rm.save_pretrained(rm_dir)
    shutil.copy(tiny / "tokenizer.json", rm_dir)
    shutil.copy(tiny / "tokenizer_config.json", rm_dir)
    (rm_dir / "bakeoff_checkpoint.json").write_text(json.dumps({
        "run_id": "rmrun", "experiment_name": "rm-exp", "step": 3, "kind": "reward",
        "base_model": str(tiny), "datasets": ["prefs@v1"]}))
    (rm_dir / "reward_stats.json").write_text(json.dumps({"mean": 0.1, "std": 0.5}))
    rows = pl.DataFrame({"kind": ["prompt"] * 8,
                         "messages": [[{"role": "user", "content": f"What is {i} plus 2?"}] for i in range(8)]})
    ws.commit_version("prompts", with_ids(conform(rows)), operation="test")
    return {"tiny": tiny, "sft": sft, "rm": rm_dir}


def _invoke(ws, args):
    from bakeoff.cli import cli

    return CliRunner().invoke(cli, ["--workspace", str(ws.root), "train", "ppo", *args],
                              catch_exceptions=False)


def test_ppo_cli_json_checkpoints_and_mlflow(ws, setup):
    import mlflow

    res = _invoke(ws, ["--policy", str(setup["sft"]), "--reward", str(setup["rm"]),
                       "--prompts", "prompts@v1", "--experiment_name", "ppo-exp", "--steps", "2",
                       "--batch-size", "4", "--max-new-tokens", "4", "--save-steps", "1",
                       "--devices", "cpu", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert set(out) >= {"run_id", "tracking_uri", "experiment_name", "checkpoints"}
    assert [p.rsplit("-", 1)[1] for p in out["checkpoints"]] == ["1", "2"]
    meta = json.loads(open(f"{out['checkpoints'][-1]}/bakeoff_checkpoint.json").read())
    assert meta["kind"] == "ppo" and meta["parent_run_id"] == "sftrun"
    assert meta["parent_checkpoint"] == str(setup["sft"].resolve())
    assert meta["datasets"] == ["prompts@v1"] and meta["run_id"] == out["run_id"]

    from bakeoff.train.models import load_causal_lm
    model, tok = load_causal_lm(out["checkpoints"][-1], device="cpu")
    assert tok.pad_token_id != tok.eos_token_id

    mlflow.set_tracking_uri(out["tracking_uri"])
    client = mlflow.MlflowClient()
    run = client.get_run(out["run_id"])
    for key in ("reward", "kl", "clipfrac", "entropy", "value_loss", "response_length", "eos_rate",
                "time/rollout", "time/scoring", "time/update", "learning_rate"):
        assert len(client.get_metric_history(out["run_id"], key)) == 2, key
    assert run.data.params["kl_estimator"] == "k1"
    assert run.data.params["reward_std"] == "0.5"
    assert run.data.tags["bakeoff.parent_run_id"] == "sftrun"


def test_ppo_cli_refuses_policy_without_sft(ws, setup):
    res = CliRunner().invoke(
        __import__("bakeoff.cli", fromlist=["cli"]).cli,
        ["--workspace", str(ws.root), "train", "ppo", "--policy", str(setup["tiny"]), "--reward",
         str(setup["rm"]), "--prompts", "prompts@v1", "--experiment_name", "e", "--steps", "1"])
    assert res.exit_code != 0
    assert "SFT" in str(res.exception) or "SFT" in res.output


@pytest.mark.parametrize("algorithm", ["grpo", pytest.param("rloo", marks=pytest.mark.slow)])
def test_group_rl_through_trl(ws, setup, algorithm):
    res = _invoke(ws, ["--policy", str(setup["sft"]), "--reward", str(setup["rm"]),
                       "--prompts", "prompts@v1", "--experiment_name", "rl-exp", "--algorithm", algorithm,
                       "--steps", "1", "--batch-size", "4", "--num-generations", "2",
                       "--max-new-tokens", "4", "--devices", "cpu", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert len(out["checkpoints"]) == 1
    ckpt = out["checkpoints"][0]
    meta = json.loads(open(f"{ckpt}/bakeoff_checkpoint.json").read())
    assert meta["kind"] == algorithm and meta["parent_run_id"] == "sftrun"
    import mlflow
    mlflow.set_tracking_uri(out["tracking_uri"])
    history = mlflow.MlflowClient().get_metric_history(out["run_id"], "learning_rate")
    assert history, "learning_rate logged every optimizer step"
    from bakeoff.train.models import load_causal_lm
    load_causal_lm(ckpt, device="cpu")  # merged weights load on their own
