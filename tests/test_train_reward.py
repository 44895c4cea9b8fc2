"""Reward model training on separable pairs (tiny model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from _train_data import commit, pref_rows

pytest.importorskip("trl")


@pytest.fixture
def model_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BAKEOFF_MODEL_CACHE", str(tmp_path / "models"))
    return tmp_path / "models"


def test_reward_model_learns_separable_pairs(ws, model_cache):
    import mlflow

    from bakeoff.train.config import RewardRunConfig
    from bakeoff.train.models import load_reward_model
    from bakeoff.train.reward import pair_stats, preference_datasets
    from bakeoff.train.checkpoints import read_checkpoint_meta

    ref = commit(ws, "prefs", pref_rows(60))
    cfg = RewardRunConfig(dataset=ref, model="tiny", experiment_name="rm", lora=False, lr=3e-3,
                          max_steps=12, batch_size=8, max_length=64, save_steps=6, eval_fraction=0.25)
    from bakeoff.train.reward import train_reward

    r = train_reward(ws, cfg)
    assert r.metrics["heldout_accuracy"] >= 0.8  # chance is 0.5
    assert r.extra["heldout"]["n_pairs"] == 15
    assert [Path(c).name for c in r.checkpoints] == ["checkpoint-6", "checkpoint-12"]
    last = Path(r.checkpoints[-1])
    stats = json.loads((last / "reward_stats.json").read_text())
    assert stats["std"] > 0 and set(stats) >= {"mean", "std"}
    meta = read_checkpoint_meta(last)
    assert meta.kind == "reward" and meta.datasets == [ref]

    # the checkpoint reloads as a reward model giving the same held-out numbers
    model, tok = load_reward_model(last)
    assert model.config.num_labels == 1 and tok.pad_token_id != tok.eos_token_id
    _, held = preference_datasets(ws.load(ref), 0.25, 0)
    again = pair_stats(model, tok, held)
    assert again["accuracy"] == pytest.approx(stats["accuracy"])
    assert again["mean"] == pytest.approx(stats["mean"], abs=0.05 * stats["std"])

    run = mlflow.MlflowClient(tracking_uri=r.tracking_uri).get_run(r.run_id)
    assert float(run.data.metrics["final_heldout_accuracy"]) >= 0.8
    assert run.data.tags["bakeoff.kind"] == "reward"
    assert [i.dataset.name for i in run.inputs.dataset_inputs] == [ref]


@pytest.mark.slow
def test_reward_lora_from_sft_adapter_checkpoint(ws, model_cache):
    """A reward LoRA on top of an SFT LoRA checkpoint: the merged backbone is saved
    once and named as the base, so the reward checkpoint reloads correctly."""
    from bakeoff.train.config import RewardRunConfig, SFTRunConfig
    from bakeoff.train.models import load_reward_model
    from bakeoff.train.reward import train_reward
    from bakeoff.train.sft import train_sft
    from _train_data import sft_rows

    sref = commit(ws, "fin", sft_rows(8))
    s = train_sft(ws, SFTRunConfig(dataset=sref, model="tiny", experiment_name="sft", max_steps=1,
                                   save_steps=1, batch_size=4, max_length=64))
    pref = commit(ws, "prefs", pref_rows(12))
    r = train_reward(ws, RewardRunConfig(dataset=pref, model=s.checkpoints[-1], experiment_name="rm",
                                         max_steps=2, save_steps=2, batch_size=4, max_length=64))
    ckpt = Path(r.checkpoints[-1])
    meta = json.loads((ckpt / "bakeoff_checkpoint.json").read_text())
    assert meta["parent_run_id"] == s.run_id and meta["parent_checkpoint"] == s.checkpoints[-1]
    assert meta["base_model"].endswith("merged-base")
    model, tok = load_reward_model(ckpt)
    assert model.config.num_labels == 1
