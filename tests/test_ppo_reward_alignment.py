"""PPO reads the reward where the reward model was trained; rollouts sample
from exactly the distribution PPO's maths assume; reward heads are seeded;
reward and PPO run on users' real templates."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from _chat_fixtures import build_model_dir
from _train_data import commit, lora, pref_rows

pytest.importorskip("trl")

PROMPTS = [[{"role": "user", "content": f"What is the total in row {i}?"}] for i in range(8)]


@pytest.fixture(autouse=True)
def one_thread(torch_one_thread):
    """Tiny models: one torch thread (see conftest)."""


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    import os

    from bakeoff.workspace import Workspace

    cache = tmp_path_factory.mktemp("models")
    old = os.environ.get("BAKEOFF_MODEL_CACHE")
    os.environ["BAKEOFF_MODEL_CACHE"] = str(cache)
    ws = Workspace(tmp_path_factory.mktemp("ws"))
    commit(ws, "prefs", pref_rows(48))
    yield ws, tmp_path_factory.mktemp("byom")
    if old is None:
        os.environ.pop("BAKEOFF_MODEL_CACHE", None)
    else:
        os.environ["BAKEOFF_MODEL_CACHE"] = old


def _reward_cfg(**kw):
    from bakeoff.train.config import RewardRunConfig

    base = dict(dataset="prefs@v1", model="tiny", experiment_name="rm", lora=False, lr=3e-3, max_steps=12,
                batch_size=8, max_length=64, save_steps=12, eval_fraction=0.25)
    base.update(kw)
    return RewardRunConfig(**base)


@pytest.fixture(scope="module")
def trained_rm(env):
    from bakeoff.train.reward import train_reward

    ws, _ = env
    r = train_reward(ws, _reward_cfg())
    assert r.metrics["heldout_accuracy"] >= 0.8, r.metrics  # it learnt: reading position matters
    return r


def test_ppo_reward_equals_the_trained_reward_models_score_of_the_templated_text(env, trained_rm):
    from bakeoff.evaluate.scorers import RewardScorer
    from bakeoff.train.models import load_causal_lm, load_reward_model
    from bakeoff.train.ppo import PPOConfig, PPOTrainer, scores_at
    from bakeoff.train.ppo_core import last_token_index
    from bakeoff.train.rl import RewardModelFunction

    ckpt = trained_rm.checkpoints[-1]
    policy, tok = load_causal_lm("tiny", device="cpu")
    rm, rtok = load_reward_model(ckpt, device="cpu")
    cfg = PPOConfig(steps=1, batch_size=8, mini_batch_size=4, ppo_epochs=1, max_new_tokens=6, temperature=1.0,
                    lora_settings=lora(4, 8), device="cpu", normalize_scores=False, missing_eos_penalty=None)
    tr = PPOTrainer(cfg, policy, tok, PROMPTS, reward_model=rm, reward_tokenizer=rtok)
    ro, _ = tr.rollout(PROMPTS)

    # The reward model on exactly what it was trained on: apply_chat_template(prompt + answer), unpadded.
    fresh, _ = load_reward_model(ckpt, device="cpu")
    expected = []
    with torch.no_grad():
        for p, c in zip(PROMPTS, ro.completions):
            ids = rtok.apply_chat_template([*p, {"role": "assistant", "content": c}], tokenize=True,
                                           return_dict=True)["input_ids"]
            expected.append(fresh(input_ids=torch.tensor([ids])).logits[0, 0].item())
    assert ro.raw_scores.tolist() == pytest.approx(expected, abs=1e-4)

    # GRPO/RLOO's reward function and evaluation's scorer give the same number.
    fn = RewardModelFunction(fresh, rtok)
    grpo = fn(PROMPTS, [[{"role": "assistant", "content": c}] for c in ro.completions])
    assert grpo == pytest.approx(expected, abs=1e-4)
    stats = {"mean": 0.0, "std": 1.0}
    scorer = RewardScorer(ckpt, device="cpu")
    scorer.mean, scorer.std = stats["mean"], stats["std"]
    assert scorer.score(PROMPTS, ro.completions) == pytest.approx(expected, abs=1e-4)

    # The old reading (at the response's own last token, <|im_end|>) is a different number.
    with torch.no_grad():
        at = ro.query_len + last_token_index(ro.mask)
        old = scores_at(fresh, ro.input_ids, ro.attention_mask, at)
    assert not torch.allclose(old, torch.tensor(expected), atol=1e-2)


def test_rollout_logprobs_match_training_logprobs_under_a_non_neutral_generation_config(env):
    """Qwen2.5's generation config, made harsher (repetition penalty 1.5,
    n-gram blocking, min-p): the sampler must still draw from softmax(logits/T)."""
    from bakeoff.train.models import load_causal_lm
    from bakeoff.train.ppo import PPOConfig, PPOTrainer
    from bakeoff.train.ppo_core import truncate_after_eos

    _, root = env
    d = build_model_dir("qwen2_5", root / "qwen2_5")
    policy, tok = load_causal_lm(d, device="cpu")
    gen = policy.generation_config
    gen.repetition_penalty, gen.no_repeat_ngram_size, gen.min_p = 1.5, 2, 0.1
    assert gen.top_k == 20 and gen.top_p == 0.8
    cfg = PPOConfig(steps=1, batch_size=8, mini_batch_size=4, ppo_epochs=1, max_new_tokens=12,
                    temperature=0.9, lora_settings=lora(4, 8), device="cpu")
    tr = PPOTrainer(cfg, policy, tok, PROMPTS, reward_fn=lambda p, c, i: [0.0] * len(c))
    enc = tr._encode([tr._prompt_text(p) for p in PROMPTS])
    Q = enc["input_ids"].shape[1]
    with torch.no_grad():
        out = tr._generate(enc, output_scores=True, return_dict_in_generate=True)
        responses, mask, _ = truncate_after_eos(out.sequences[:, Q:], tr.eos_ids, tr.pad_id)
        sampler = torch.stack([torch.log_softmax(s.float(), -1) for s in out.scores], 1)
        sampler = sampler[:, :responses.shape[1]].gather(-1, responses.unsqueeze(-1)).squeeze(-1)
        ids = torch.cat([enc["input_ids"], responses], 1)
        am = torch.cat([enc["attention_mask"], mask.long()], 1)
        train, _ = tr._policy_logprobs(ids, am, Q)
    gap = (sampler - train).abs()[mask.bool()]
    assert gap.max().item() < 1e-4, gap.max().item()
    assert tr.policy.get_base_model().generation_config.repetition_penalty == 1.5  # the model's own, kept


def test_reward_training_twice_gives_identical_heads(env):
    from safetensors.torch import load_file

    from bakeoff.train.reward import train_reward

    ws, _ = env
    a = train_reward(ws, _reward_cfg(max_steps=2, save_steps=2, experiment_name="seed-a"))
    b = train_reward(ws, _reward_cfg(max_steps=2, save_steps=2, experiment_name="seed-b"))
    wa = load_file(Path(a.checkpoints[-1]) / "model.safetensors")
    wb = load_file(Path(b.checkpoints[-1]) / "model.safetensors")
    assert wa.keys() == wb.keys() and "score.weight" in wa
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert a.metrics["heldout_margin"] == b.metrics["heldout_margin"]


def test_reward_split_is_by_prompt_and_eval_fraction_zero_is_labelled(env):
    import polars as pl

    from bakeoff.train.reward import preference_datasets

    rows = pref_rows(20)
    twice = pl.concat([rows, rows.with_columns(pl.col("rejected").list.eval(
        pl.struct(role=pl.element().struct.field("role"), content=pl.lit("nope"))))])
    train, held = preference_datasets(twice, 0.25, 0)
    key = lambda p: p[0]["content"]  # noqa: E731
    assert not {key(p) for p in train["prompt"]} & {key(p) for p in held["prompt"]}
    assert len(held) == 10  # 5 prompts x 2 pairs each
    assert preference_datasets(twice, 0.0, 0)[1] is None


@pytest.mark.parametrize("name", ["llama3", "gemma"])
def test_reward_and_ppo_on_real_templates(env, name):
    """Llama 3 (no pad token: one is added and the embeddings grow) and Gemma
    (no system role): a reward model trains and PPO runs against it."""
    from bakeoff.train.ppo import PPOConfig, train_ppo
    from bakeoff.train.reward import train_reward

    ws, root = env
    d = build_model_dir(name, root / name)
    rm = train_reward(ws, _reward_cfg(model=str(d), max_steps=2, save_steps=2, max_length=128,
                                      experiment_name=f"rm-{name}"))
    assert rm.metrics["reward_std"] > 0
    commit(ws, f"prompts-{name}", pref_rows(8).select(
        "id", "kind", "messages", "domain").with_columns(kind=__import__("polars").lit("prompt")))
    res = train_ppo(ws, PPOConfig(model=str(d), reward_model=rm.checkpoints[-1], dataset=f"prompts-{name}",
                                  experiment_name=f"ppo-{name}", force=True, steps=1, batch_size=4,
                                  mini_batch_size=2, ppo_epochs=1, max_new_tokens=6, device="cpu"))
    assert res.checkpoints and "kl" in res.metrics


def test_smaller_defects(env):
    """No forced first token; no dropout left after the LoRA wrap; the model's
    own stop ids survive loading (Llama 3 stops on <|end_of_text|> and <|eot_id|>)."""
    from bakeoff.train.models import load_causal_lm
    from bakeoff.train.ppo import PPOConfig, PPOTrainer

    _, root = env
    d = build_model_dir("llama3", root / "llama3")
    policy, tok = load_causal_lm(d, device="cpu")
    vocab = tok.get_vocab()
    assert policy.generation_config.eos_token_id == [vocab["<|end_of_text|>"], vocab["<|eot_id|>"]]
    assert tok.pad_token_id not in policy.generation_config.eos_token_id
    assert policy.get_input_embeddings().weight.shape[0] == len(tok)  # the added pad has a row
    cfg = PPOConfig(steps=1, batch_size=4, mini_batch_size=2, lora_settings=lora(16, 32, 0.1), device="cpu")
    tr = PPOTrainer(cfg, policy, tok, PROMPTS, reward_fn=lambda p, c, i: [0.0] * len(c))
    assert not tr.sampling_config().min_new_tokens
    assert all(m.p == 0.0 for m in tr.policy.modules() if isinstance(m, torch.nn.Dropout))
    assert all(m.p == 0.0 for m in tr.value_model.modules() if isinstance(m, torch.nn.Dropout))
