"""Runs as a user meets them: killed runs marked KILLED, PPO --resume
continuing exactly, an RL checkpoint's whole lineage, length losses counted
per stage, and `train note` with a short id, appending."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import polars as pl
import pytest
import torch
from click.testing import CliRunner

from _train_data import commit, pref_rows

pytest.importorskip("trl")


@pytest.fixture(autouse=True)
def one_thread(torch_one_thread):
    """Tiny models: one torch thread (see conftest)."""


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A workspace with an SFT checkpoint (tiny model + SFT metadata), a reward
    checkpoint with stats and its own metadata, and a prompts version."""
    from transformers import AutoModelForSequenceClassification

    from bakeoff.schema import conform, with_ids
    from bakeoff.train.models import build_tiny_model
    from bakeoff.workspace import Workspace

    root = tmp_path_factory.mktemp("runs")
    ws = Workspace(root / "ws")
    tiny = build_tiny_model(root / "models" / "tiny")
    sft = ws.runs_dir() / "fin" / "sftrun" / "checkpoint-5"
    shutil.copytree(tiny, sft)
    (sft / "bakeoff_checkpoint.json").write_text(json.dumps({
        "run_id": "sftrun", "experiment_name": "fin", "step": 5, "kind": "sft", "base_model": str(tiny),
        "datasets": ["fin-train@v2"]}))
    rm_dir = ws.runs_dir() / "fin" / "rmrun" / "checkpoint-3"
    torch.manual_seed(3)
    AutoModelForSequenceClassification.from_pretrained(tiny, num_labels=1).save_pretrained(rm_dir)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny / f, rm_dir)
    (rm_dir / "bakeoff_checkpoint.json").write_text(json.dumps({
        "run_id": "rmrun", "experiment_name": "fin", "step": 3, "kind": "reward", "base_model": str(tiny),
        "datasets": ["prefs@v1"]}))
    (rm_dir / "reward_stats.json").write_text(json.dumps({"mean": 0.1, "std": 0.5}))
    texts = [f"What is {i} plus 2?" for i in range(7)] + ["Explain the table. " + "revenue cost " * 40]
    rows = pl.DataFrame({"kind": ["prompt"] * 8, "messages": [[{"role": "user", "content": t}] for t in texts]})
    ws.commit_version("prompts", with_ids(conform(rows)), operation="test")
    return {"ws": ws, "sft": sft, "rm": rm_dir}


def _ppo_cfg(env, **kw):
    from bakeoff.train.ppo import PPOConfig

    base = dict(model=str(env["sft"]), reward_model=str(env["rm"]), dataset="prompts@v1", experiment_name="ppo",
                steps=4, batch_size=4, mini_batch_size=2, ppo_epochs=1, max_new_tokens=4, save_steps=2,
                max_prompt_length=48, device="cpu", learning_rate=1e-3)
    base.update(kw)
    return PPOConfig(**base)


def _status(ws, run_id):
    import mlflow

    from bakeoff.tracking import setup_mlflow

    setup_mlflow(ws)
    return mlflow.MlflowClient().get_run(run_id).info.status


def test_ppo_resume_continues_exactly_and_the_killed_run_is_marked(env, monkeypatch):
    import mlflow

    from bakeoff.train.ppo import PPOTrainer, train_ppo

    ws = env["ws"]
    whole = train_ppo(ws, _ppo_cfg(env, experiment_name="ppo-whole"))
    assert [c.rsplit("-", 1)[1] for c in whole.checkpoints] == ["2", "4"]

    real_step = PPOTrainer.train_step

    def crash_at_3(self):
        if self.step == 2:
            raise KeyboardInterrupt("killed after the first checkpoint")
        return real_step(self)

    monkeypatch.setattr(PPOTrainer, "train_step", crash_at_3)
    with pytest.raises(KeyboardInterrupt):
        train_ppo(ws, _ppo_cfg(env, experiment_name="ppo-crash"))
    monkeypatch.setattr(PPOTrainer, "train_step", real_step)
    crashed = mlflow.search_runs(experiment_names=["ppo-crash"], output_format="list")[0].info.run_id
    # As if the process had been SIGKILLed: still RUNNING, owned by a dead pid.
    client = mlflow.MlflowClient()
    client.set_terminated(crashed, status="RUNNING")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    client.set_tag(crashed, "bakeoff.pid", str(dead.pid))

    # The CLI spelling: `train ppo --resume` (the alias of `train rl`), with only the experiment.
    from bakeoff.cli import cli

    res = CliRunner().invoke(cli, ["-w", str(ws.root), "train", "ppo", "--experiment", "ppo-crash",
                                   "--resume", "--devices", "cpu", "--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    resumed = json.loads(res.stdout)
    assert resumed["run_id"] == crashed
    assert [c.rsplit("-", 1)[1] for c in resumed["checkpoints"]] == ["2", "4"]
    assert resumed["metrics"]["reward"] == pytest.approx(whole.metrics["reward"], abs=1e-5)
    assert resumed["metrics"]["kl"] == pytest.approx(whole.metrics["kl"], abs=1e-5)
    a = [m.value for m in client.get_metric_history(whole.run_id, "reward")]
    b = {m.step: m.value for m in client.get_metric_history(crashed, "reward")}
    assert [b[s] for s in sorted(b)] == pytest.approx(a, abs=1e-5)
    assert _status(ws, crashed) == "FINISHED"
    assert client.get_run(crashed).data.tags["bakeoff.ended"].startswith("killed")


def test_a_new_run_marks_runs_of_dead_processes_killed(env):
    import mlflow

    from bakeoff.train.tracking import create_run

    ws = env["ws"]
    stale = create_run(ws, "marks")
    alive = create_run(ws, "marks")  # this process: alive
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    mlflow.MlflowClient().set_tag(stale, "bakeoff.pid", str(dead.pid))
    create_run(ws, "marks")
    assert _status(ws, stale) == "KILLED"
    assert _status(ws, alive) == "RUNNING"


def test_rl_checkpoint_lists_its_whole_lineage_and_prompt_losses_are_counted(env):
    from bakeoff.train.checkpoints import read_checkpoint_meta
    from bakeoff.train.ppo import train_ppo

    r = train_ppo(env["ws"], _ppo_cfg(env, experiment_name="ppo-lineage", steps=1, save_steps=0, round=2,
                                      run_name="round 2 ppo prompts@v1"))
    meta = read_checkpoint_meta(r.checkpoints[-1])
    roles = {link["role"]: link for link in meta.lineage}
    assert roles["policy"]["kind"] == "sft" and roles["policy"]["run_id"] == "sftrun"
    assert roles["policy"]["datasets"] == ["fin-train@v2"]
    assert roles["reward"]["run_id"] == "rmrun" and roles["reward"]["datasets"] == ["prefs@v1"]
    assert roles["prompts"]["datasets"] == ["prompts@v1"]
    assert meta.round == 2 and meta.kind == "ppo" and meta.datasets == ["prompts@v1"]
    # one prompt of eight is over max_prompt_length=48 (12.5 % > 5 %): counted and warned
    assert r.extra["length"]["length_truncated"] == 1 and r.extra["length"]["length_total"] == 8
    assert any("max_length=48" in w for w in r.warnings)
    import mlflow

    run = mlflow.MlflowClient(tracking_uri=r.tracking_uri).get_run(r.run_id)
    assert run.data.metrics["length_truncated"] == 1
    assert run.data.params["lineage.reward.run_id"] == "rmrun"
    assert run.data.tags["bakeoff.round"] == "2" and run.info.run_name == "round 2 ppo prompts@v1"


def test_reward_counts_pairs_dropped_for_length(env):
    from bakeoff.train.config import RewardRunConfig
    from bakeoff.train.reward import train_reward

    ws = env["ws"]
    rows = pref_rows(20)
    long = rows.head(4).with_columns(pl.col("messages").list.eval(pl.struct(
        role=pl.element().struct.field("role"), content=pl.element().struct.field("content") + " word" * 80)))
    ref = commit(ws, "prefs-long", pl.concat([rows.slice(4), long]))
    r = train_reward(ws, RewardRunConfig(dataset=ref, model="tiny", experiment_name="rm-len", lora=False,
                                         max_steps=1, batch_size=4, max_length=48, save_steps=1,
                                         eval_fraction=0.0))
    assert r.extra["length"]["length_dropped"] >= 3  # the long prompts that landed in training
    assert any("exceed max_length=48" in w for w in r.warnings)
    assert "trainpairs_accuracy" in r.metrics and "heldout_accuracy" not in r.metrics


def test_train_note_accepts_a_short_id_and_appends(env):
    from bakeoff.cli import cli
    from bakeoff.train.tracking import create_run

    ws = env["ws"]
    run_id = create_run(ws, "notes")
    runner = CliRunner()
    for text in ("first finding", "second finding"):
        res = runner.invoke(cli, ["-w", str(ws.root), "train", "note", run_id[:8], "--conclusion", text,
                                  "--json"])
        assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["run_id"] == run_id and doc["conclusions"] == ["first finding", "second finding"]
    import mlflow

    tags = mlflow.MlflowClient().get_run(run_id).data.tags
    assert "first finding" in tags["mlflow.note.content"] and "second finding" in tags["mlflow.note.content"]
    res = runner.invoke(cli, ["-w", str(ws.root), "train", "note", "zzzz", "--conclusion", "x"])
    assert res.exit_code != 0 and "Traceback" not in res.output
