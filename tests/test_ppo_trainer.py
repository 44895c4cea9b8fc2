"""PPOTrainer on tiny models: safety checks, reference = adapter disabled, EOS
scoring and penalty, lineage refusal, checkpoints, and reward rising on a toy
objective."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from _train_data import lora
from bakeoff.workspace import BakeoffError



@pytest.fixture(autouse=True)
def one_thread(torch_one_thread):
    """Every test here runs torch on one thread (see conftest)."""

@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from bakeoff.train.models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture
def policy(tiny_dir):
    from bakeoff.train.models import load_causal_lm

    model, tok = load_causal_lm(tiny_dir, device="cpu")
    return model.float(), tok


@pytest.fixture
def reward_model(tiny_dir):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(1)
    rm = AutoModelForSequenceClassification.from_pretrained(tiny_dir, num_labels=1)
    return rm.float().eval()


PROMPTS = [[{"role": "user", "content": f"What is {i} plus {i + 1}?"}] for i in range(16)]


def _cfg(**kw):
    from bakeoff.train.ppo import PPOConfig

    base = dict(steps=2, batch_size=8, mini_batch_size=4, ppo_epochs=1, max_new_tokens=6,
                temperature=1.0, lora_settings=lora(4, 8), device="cpu", learning_rate=1e-3)
    base.update(kw)
    return PPOConfig(**base)


def test_pad_equal_to_eos_is_refused(policy):
    from bakeoff.train.ppo import PPOTrainer

    model, tok = policy
    tok.pad_token = tok.eos_token
    with pytest.raises(BakeoffError, match="pad token"):
        PPOTrainer(_cfg(), model, tok, PROMPTS, reward_fn=lambda p, c, i: [0.0] * len(p))


def test_reference_is_the_policy_with_adapter_disabled(policy):
    """At step 0 (LoRA B = 0) the policy equals the reference exactly; after an
    update they differ while the frozen weights stay untouched."""
    from bakeoff.train.ppo import PPOTrainer

    model, tok = policy
    frozen = {k: v.clone() for k, v in model.state_dict().items()}
    tr = PPOTrainer(_cfg(learning_rate=5e-3), model, tok, PROMPTS,
                    reward_fn=lambda p, c, ids: [float(len(x)) for x in ids])
    ro, timing = tr.rollout(PROMPTS[:4])
    assert torch.equal(ro.logprobs, ro.ref_logprobs)
    assert {"time/generate", "time/forward", "time/rollout", "time/scoring"} <= set(timing)
    # no second model: only LoRA parameters are trainable in the policy
    trainable = [n for n, p in tr.policy.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    tr.train_step()
    ro2, _ = tr.rollout(PROMPTS[:4])
    assert not torch.allclose(ro2.logprobs, ro2.ref_logprobs)
    base = tr.policy.get_base_model().state_dict()
    for k, v in frozen.items():
        key = k.replace(".weight", ".base_layer.weight") if k.replace(".weight", ".base_layer.weight") in base else k
        assert torch.equal(base[key], v), k


def test_copy_reference_matches_adapter_disabled_reference(tiny_dir):
    """The benchmark's baseline (a second frozen copy) computes the same reference."""
    from bakeoff.train.models import load_causal_lm
    from bakeoff.train.ppo import PPOTrainer

    fn = lambda p, c, ids: [float(len(x)) for x in ids]  # noqa: E731
    m1, tok = load_causal_lm(tiny_dir, device="cpu")
    a = PPOTrainer(_cfg(learning_rate=1e-2), m1.float(), tok, PROMPTS, reward_fn=fn)
    a.train_step()
    m2, tok2 = load_causal_lm(tiny_dir, device="cpu")
    b = PPOTrainer(_cfg(reference="copy"), m2.float(), tok2, PROMPTS, reward_fn=fn)
    ro, _ = a.rollout(PROMPTS[:4])
    with torch.no_grad():
        ref_b, _ = b._policy_logprobs(ro.input_ids, ro.attention_mask, ro.query_len, model=b.ref_model)
    assert torch.allclose(ro.ref_logprobs, ref_b, atol=1e-5)
    assert not torch.allclose(ro.logprobs, ref_b, atol=1e-5)


def test_missing_eos_penalty_and_normalisation(policy):
    from bakeoff.train.ppo import PPOTrainer

    model, tok = policy
    tr = PPOTrainer(_cfg(missing_eos_penalty=2.0), model, tok, PROMPTS,
                    reward_fn=lambda p, c, i: [3.0] * len(p), reward_stats={"mean": 1.0, "std": 4.0})
    has_eos = torch.tensor([True, False])
    assert tr.normalise_scores(torch.tensor([3.0, 3.0]), has_eos).tolist() == [0.5, -1.5]
    # A real rollout: responses of 2 tokens from a random model almost never end.
    tr.config.max_new_tokens = 2
    ro, _ = tr.rollout(PROMPTS[:8])
    expected = torch.where(ro.has_eos, torch.tensor(0.5), torch.tensor(-1.5))
    assert torch.allclose(ro.scores, expected)
    assert (~ro.has_eos).any()


def test_reward_model_scored_as_trained_and_value_head_starts_from_it(policy, reward_model, tiny_dir):
    """The score of a padded batch at the last index equals the reward model on
    the unpadded text; PPO's raw score is the reward model on the chat-templated
    prompt + response; the value head (LoRA on the reward model) starts equal to
    the reward model, and the reward itself does not drift while the value head trains."""
    from bakeoff.train.chat import score_responses
    from bakeoff.train.ppo import PPOTrainer, scores_at, token_values

    model, tok = policy
    ids = tok("hello world yes", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    with torch.no_grad():
        direct = reward_model(input_ids=torch.tensor([ids])).logits[0, 0].item()
        padded = torch.tensor([[tok.pad_token_id] * 3 + ids + [tok.pad_token_id] * 2])
        am = (padded != tok.pad_token_id).long()
        got = scores_at(reward_model, padded, am, torch.tensor([3 + len(ids) - 1])).item()
        assert got == pytest.approx(direct, abs=1e-4)

    import copy

    frozen = copy.deepcopy(reward_model)
    tr = PPOTrainer(_cfg(learning_rate=1e-2), model, tok, PROMPTS, reward_model=reward_model)
    assert tr.value_model is tr.reward_model  # one copy: adapter on = values, off = reward
    ro, _ = tr.rollout(PROMPTS[:8])
    expected = torch.tensor(score_responses(frozen, tok, PROMPTS[:8], ro.completions))
    assert torch.allclose(ro.raw_scores, expected, atol=1e-5)
    with torch.no_grad():
        v = token_values(tr.value_model, ro.input_ids, ro.attention_mask)
        with tr.reward_model.disable_adapter():
            r = token_values(tr.reward_model, ro.input_ids, ro.attention_mask)
        assert torch.allclose(v, r, atol=1e-5)
    tr.train_step()
    tr.train_step()
    assert torch.allclose(torch.tensor(tr.reward_scores(PROMPTS[:8], ro.completions)), expected, atol=1e-5)
    with torch.no_grad():
        assert not torch.allclose(token_values(tr.value_model, ro.input_ids, ro.attention_mask), v, atol=1e-5)


def test_value_model_copy_mode(policy, reward_model):
    from bakeoff.train.ppo import PPOTrainer

    model, tok = policy
    tr = PPOTrainer(_cfg(value_model="copy", kl_estimator="k3", learning_rate=1e-2), model, tok, PROMPTS,
                    reward_model=reward_model)
    assert tr.value_model is not tr.reward_model
    stats = tr.train_step()
    stats = tr.train_step()
    assert stats["kl"] > 0  # k3 is never negative; the policy has moved after one update
    assert set(stats) >= {"reward", "kl", "clipfrac", "entropy", "value_loss", "response_length",
                          "eos_rate", "time/rollout", "time/scoring", "time/update", "learning_rate"}


def test_sft_lineage_required_unless_forced(tmp_path, tiny_dir):
    from bakeoff.train.checkpoints import check_sft_lineage

    plain = tmp_path / "plain"
    shutil.copytree(tiny_dir, plain)
    with pytest.raises(BakeoffError, match="SFT"):
        check_sft_lineage(plain)
    assert check_sft_lineage(plain, force=True) is None
    run = tmp_path / "runs" / "exp" / "r1"
    ckpt = run / "checkpoint-10"
    shutil.copytree(tiny_dir, ckpt)
    (ckpt / "bakeoff_checkpoint.json").write_text(json.dumps({"run_id": "r1", "kind": "reward"}))
    with pytest.raises(BakeoffError, match="kind 'reward'"):
        check_sft_lineage(ckpt)
    (ckpt / "bakeoff_checkpoint.json").write_text(json.dumps({"run_id": "r1", "kind": "sft"}))
    assert check_sft_lineage(ckpt).run_id == "r1"
    # a model folder below an SFT checkpoint counts too ("in or above")
    sub = ckpt / "merged"
    shutil.copytree(tiny_dir, sub)
    assert check_sft_lineage(sub).run_id == "r1"


def test_checkpoint_reloads_as_the_trained_policy(policy, tmp_path):
    from bakeoff.train.models import load_causal_lm
    from bakeoff.train.ppo import PPOTrainer

    model, tok = policy
    tr = PPOTrainer(_cfg(learning_rate=1e-2), model, tok, PROMPTS,
                    reward_fn=lambda p, c, ids: [float(len(x)) for x in ids])
    tr.train_step()
    path = tr.save(tmp_path / "checkpoint-1")
    assert not (path / "adapter_config.json").exists()
    ro, _ = tr.rollout(PROMPTS[:4])
    loaded, ltok = load_causal_lm(path, device="cpu")
    with torch.no_grad():
        lp, _ = tr._policy_logprobs(ro.input_ids, ro.attention_mask, ro.query_len, model=loaded.float())
    m = ro.mask.bool()
    assert torch.allclose(lp[m], ro.logprobs[m], atol=1e-4)
    assert ltok.pad_token_id != ltok.eos_token_id


def _toy_policy(tiny_dir):
    """The tiny random model's logits are nearly flat and capped by its final
    norm; scaling that norm lets a LoRA adapter reshape the distribution, as in
    a real (peaked) language model."""
    from bakeoff.train.models import load_causal_lm

    model, tok = load_causal_lm(tiny_dir, device="cpu")
    with torch.no_grad():
        model.model.norm.weight.mul_(7.0)
    return model.float(), tok


def test_mean_reward_rises_on_a_toy_reward(tiny_dir):
    """A scripted reward pays for tokens from a fixed set of 128 ids (the share of
    the response drawn from it): PPO must raise it well above the start."""
    from bakeoff.train.ppo import PPOTrainer

    torch.manual_seed(0)
    model, tok = _toy_policy(tiny_dir)
    target = set(range(100, 228))

    def reward_fn(prompts, completions, ids):
        return [sum(t in target for t in x) / max(1, len(x)) for x in ids]

    cfg = _cfg(steps=12, batch_size=16, mini_batch_size=8, ppo_epochs=2, learning_rate=3e-3,
               max_new_tokens=8, missing_eos_penalty=None, kl_coef=0.01, lora_settings=lora(8, 16),
               warmup_steps=0, seed=0)
    tr = PPOTrainer(cfg, model, tok, PROMPTS, reward_fn=reward_fn)
    history = tr.train()
    first = sum(h["reward"] for h in history[:3]) / 3
    last = sum(h["reward"] for h in history[-3:]) / 3
    assert last > first + 0.2, [round(h["reward"], 3) for h in history]
    # the KL to the reference is reported every step, and grows as the policy moves away
    assert all("kl" in h for h in history) and history[-1]["kl"] > history[0]["kl"]
    assert history[-1]["entropy"] < history[0]["entropy"]
    assert all(0.0 <= h["clipfrac"] <= 1.0 for h in history)
