"""Reward-model scoring: normalised by the checkpoint's reward_stats.json, part of
the scorer cache key, required when a test set asks for it."""

from __future__ import annotations

import json

import pytest
import torch

from bakeoff.evaluate.fakes import ScriptedGenerator, commit_testset
from bakeoff.evaluate.generate import GenerationSettings
from bakeoff.evaluate.items import load_items
from bakeoff.evaluate.runner import ModelSpec, evaluate_model
from bakeoff.evaluate.scorers import RewardScorer
from bakeoff.workspace import BakeoffError


def test_reward_scoring(ws, tmp_path):
    from bakeoff.train.models import tiny_reward_model

    model, tok = tiny_reward_model(seed=0, ws=ws)
    path = tmp_path / "rm"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    (path / "reward_stats.json").write_text(json.dumps({"mean": 1.0, "std": 2.0}))

    items = [dict(question=f"question {i}", reference="ref", scoring={"method": "reward"}) for i in range(3)]
    commit_testset(ws, "ts", items)
    rm = RewardScorer(str(path), device="cpu", batch_size=2)
    version, frame = load_items(ws, "ts@v1", rm.digest)
    gen = ScriptedGenerator({f"question {i}": "answer " * (i + 1) for i in range(3)})
    spec = ModelSpec("m", digest="d-m", template_id=gen.template_id, generator_factory=lambda s, d: gen)

    with pytest.raises(BakeoffError, match="reward"):
        evaluate_model(ws, version, frame, spec, GenerationSettings(), loglik=False)
    res = evaluate_model(ws, version, frame, spec, GenerationSettings(), reward=rm, loglik=False)
    assert res.scored == 3 and res.generated == 0  # outputs were stored by the failed attempt

    # Normalised: (raw - mean) / std, raw from the model on the chat-formatted conversation.
    text = tok.apply_chat_template([{"role": "user", "content": "question 0"},
                                    {"role": "assistant", "content": "answer"}], tokenize=False)
    with torch.inference_mode():
        raw = model(**tok([text], return_tensors="pt")).logits[0, 0].item()
    got = rm.score([[{"role": "user", "content": "question 0"}]], ["answer"])[0]
    assert got == pytest.approx((raw - 1.0) / 2.0, abs=1e-4)
    # Another reward model is another scorer key.
    assert set(load_items(ws, "ts@v1", "other")[1]["scorer"]) != set(frame["scorer"])
