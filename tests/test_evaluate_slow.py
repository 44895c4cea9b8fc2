"""Slow: a real small instruct model (SmolLM2-135M-Instruct) through the whole
evaluate path. Run with `pytest -m slow tests/test_evaluate_slow.py`."""

from __future__ import annotations

import pytest

from bakeoff.evaluate.fakes import commit_testset
from bakeoff.evaluate.generate import GenerationSettings, HFGenerator
from bakeoff.evaluate.items import load_items
from bakeoff.evaluate.rank import build_leaderboard
from bakeoff.evaluate.runner import ModelSpec, evaluate_model


@pytest.mark.slow
def test_smollm2_answers_and_ranks(ws):
    from bakeoff.train.models import resolve_model

    path = resolve_model("smollm2", ws)
    commit_testset(ws, "ts", [
        dict(question="What is the capital of France? Answer with one word.", reference="Paris",
             scoring={"method": "exact"}),
        dict(question="What is 2 + 3? Answer with a number only.", reference="5", scoring={"method": "numeric"}),
        dict(question="Name a primary colour.", reference="red", scoring={"method": "token_f1"}, slice="far"),
    ])
    version, items = load_items(ws, "ts@v1")
    settings = GenerationSettings(batch_size=3, max_new_tokens=16)
    res = evaluate_model(ws, version, items, ModelSpec("smollm2", path, is_base=True), settings, device="cpu")
    assert res.generated == 3
    gen = HFGenerator.from_path(path, settings, "cpu")
    outs = gen.generate([[{"role": "user", "content": "What is the capital of France? Answer with one word."}]])
    assert "paris" in outs[0].lower() and "<|im_end|>" not in outs[0]
    board = build_leaderboard(ws, "ts@v1", n_boot=200)
    assert board.entries[0].score > 0 and board.entries[0].loglik_per_token < 0
