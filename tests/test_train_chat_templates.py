"""Bring your own model: real chat templates (SmolLM2, Llama 3, Qwen2.5, Mistral,
Gemma) on tiny random models train SFT with assistant-only labels."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from _chat_fixtures import NAMES, SPECS, TRL_PATCHED, build_model_dir, conversation, labelled_runs
from _train_data import commit, sft_rows

pytest.importorskip("trl")


@pytest.fixture(autouse=True)
def one_thread(torch_one_thread):
    """Tiny models: one torch thread (see conftest)."""


@pytest.fixture(scope="module")
def fixture_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("byom")
    return {n: build_model_dir(n, root / n) for n in NAMES}


@pytest.fixture(scope="module")
def mws(tmp_path_factory):
    """One workspace for the module (each new MLflow store costs seconds of set-up)."""
    from bakeoff.workspace import Workspace

    ws = Workspace(tmp_path_factory.mktemp("ws"))
    commit(ws, "fin", sft_rows(8))
    return ws


def _tok(path):
    from transformers import AutoTokenizer

    from bakeoff.train.models import fix_tokenizer

    return fix_tokenizer(AutoTokenizer.from_pretrained(path))


@pytest.mark.parametrize("name", NAMES)
def test_exactly_the_assistant_tokens_and_their_end_of_turn_carry_labels(fixture_dirs, name):
    from bakeoff.train.chat import tokenize_with_assistant_mask

    tok = _tok(fixture_dirs[name])
    ids, mask = tokenize_with_assistant_mask(tok, conversation())
    answers = [m["content"] for m in conversation() if m["role"] == "assistant"]
    assert labelled_runs(tok, ids, mask) == [a + SPECS[name]["end"] for a in answers]
    if name in ("gemma", "mistral"):  # no system role: its text is folded into the first user turn
        assert "You are a helpful assistant." in tok.decode(ids)


@pytest.mark.parametrize("name", sorted(TRL_PATCHED))
def test_mask_agrees_with_trls_patched_template(fixture_dirs, name):
    """Where TRL has a patched template, its mask covers ours; the only extra
    tokens it labels are template newlines the model never writes (after the
    end-of-turn token, or after Qwen's assistant header)."""
    from trl.chat_template_utils import get_training_chat_template

    from bakeoff.train.chat import conform_messages, tokenize_with_assistant_mask

    tok = _tok(fixture_dirs[name])
    ids, mask = tokenize_with_assistant_mask(tok, conversation())
    out = tok.apply_chat_template(conform_messages(tok, conversation()), tokenize=True, return_dict=True,
                                  chat_template=get_training_chat_template(tok),
                                  return_assistant_tokens_mask=True)
    assert out["input_ids"] == ids
    extra = [tok.decode([i]) for i, a, b in zip(ids, mask, out["assistant_masks"]) if a != b]
    assert all(m <= t for m, t in zip(mask, out["assistant_masks"]))
    assert all(e.strip() == "" for e in extra)


@pytest.mark.parametrize("name", ["smollm2", "mistral"])
def test_trl_cannot_patch_these(fixture_dirs, name):
    from trl.chat_template_utils import get_training_chat_template

    with pytest.raises(ValueError, match="patching is not supported"):
        get_training_chat_template(_tok(fixture_dirs[name]))


def test_templates_without_a_derivable_mask_get_a_one_line_error(fixture_dirs):
    from bakeoff.train.chat import ChatTemplateError, tokenize_with_assistant_mask

    tok = _tok(fixture_dirs["qwen2_5"])
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"  # no end-of-turn
    with pytest.raises(ChatTemplateError, match="never learn to stop") as e:
        tokenize_with_assistant_mask(tok, conversation())
    assert "\n" not in str(e.value)
    # re-renders earlier turns: the last message is shouted
    tok.chat_template = ("{% for m in messages %}{% if loop.last %}{{ m['content'] | upper }}"
                         "{% else %}{{ m['content'] }}{% endif %}<|im_end|>{% endfor %}")
    with pytest.raises(ChatTemplateError, match="not prefix-preserving"):
        tokenize_with_assistant_mask(tok, conversation())


def test_sft_dataset_counts_length_losses(fixture_dirs):
    import polars as pl

    from bakeoff.train.sft import sft_dataset

    tok = _tok(fixture_dirs["llama3"])
    rows = sft_rows(8)
    long = "word " * 200
    rows = pl.concat([rows, sft_rows(2).with_columns(
        pl.col("messages").list.eval(pl.struct(role=pl.element().struct.field("role"),
                                               content=pl.element().struct.field("content") + long)))])
    data, counts = sft_dataset(rows, tok, max_length=64)
    assert counts["truncated_for_length"] + counts["dropped_for_length"] == 2
    assert len(data) == 10 - counts["dropped_for_length"]
    assert max(len(x) for x in data["input_ids"]) <= 64


@pytest.mark.parametrize("name", NAMES)
def test_train_sft_model_dir_from_save_pretrained(mws, fixture_dirs, name):
    """`bakeoff train sft --model DIR` on each fixture: it trains, reports, and
    the checkpoint carries the model's own template."""
    from bakeoff.cli import cli

    res = CliRunner().invoke(cli, ["-w", str(mws.root), "train", "sft", "--dataset", "fin@v1", "--model",
                                   str(fixture_dirs[name]), "--experiment_name", f"byom-{name}",
                                   "--max-steps", "2", "--save-steps", "2", "--batch-size", "4",
                                   "--max-length", "128", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["train_loss"] > 0 if "train_loss" in doc else doc["metrics"]["train_loss"] > 0
    assert doc["length"]["length_truncated"] == 0
    ckpt = Path(doc["checkpoints"][-1])
    saved = json.loads((ckpt / "tokenizer_config.json").read_text()).get("chat_template") \
        or (ckpt / "chat_template.jinja").read_text()
    assert saved.strip() == _tok(fixture_dirs[name]).chat_template.strip()
