"""PPO's math against values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from bakeoff.train import ppo_core as core


def close(a, b, tol=1e-5):
    return torch.allclose(torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32),
                          atol=tol)


def test_gae_and_returns_by_hand():
    rewards = torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 99.0]])
    values = torch.tensor([[0.5, 1.0, 1.5], [0.5, 1.0, 7.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    adv, ret = core.gae(rewards, values, mask, gamma=0.9, lam=0.8)
    # row 0: d2 = 3 - 1.5 = 1.5; d1 = 2 + .9*1.5 - 1 = 2.35, A1 = 2.35 + .72*1.5 = 3.43;
    #        d0 = 1 + .9*1 - .5 = 1.4, A0 = 1.4 + .72*3.43 = 3.8696
    # row 1 ends after two tokens: the 99 reward and the 7.0 value are padding.
    assert close(adv, [[3.8696, 3.43, 1.5], [2.12, 1.0, 0.0]])
    assert close(ret, [[4.3696, 4.43, 3.0], [2.62, 2.0, 0.0]])


def test_gae_with_gamma_lambda_one_is_monte_carlo():
    rewards = torch.tensor([[1.0, 2.0, 3.0]])
    values = torch.tensor([[0.3, -0.2, 0.9]])
    adv, ret = core.gae(rewards, values, torch.ones(1, 3), gamma=1.0, lam=1.0)
    assert close(ret, [[6.0, 5.0, 3.0]])          # sum of future rewards
    assert close(adv, ret - values)


def test_kl_estimators_by_hand():
    logp = torch.log(torch.tensor([0.5, 0.25]))
    ref = torch.log(torch.tensor([0.25, 0.5]))
    assert close(core.kl_penalty(logp, ref, "k1"), [math.log(2), -math.log(2)])
    # k3 = (r - 1) - log r, r = ref / p: r = 0.5 -> -0.5 + log 2; r = 2 -> 1 - log 2
    assert close(core.kl_penalty(logp, ref, "k3"), [-0.5 + math.log(2), 1 - math.log(2)])
    assert (core.kl_penalty(torch.randn(100), torch.randn(100), "k3") >= 0).all()
    with pytest.raises(ValueError):
        core.kl_penalty(logp, ref, "k2")


def test_rewards_put_score_on_last_valid_token():
    logp = torch.log(torch.tensor([[0.5, 0.25, 0.1]]))
    ref = torch.log(torch.tensor([[0.25, 0.5, 0.9]]))
    r = core.compute_rewards(torch.tensor([2.0]), logp, ref, torch.tensor([[1, 1, 0]]), kl_coef=0.1)
    ln2 = math.log(2)
    assert close(r.kl, [[ln2, -ln2, 0.0]])
    assert close(r.rewards, [[-0.1 * ln2, 0.1 * ln2 + 2.0, 0.0]])
    assert close(r.non_score, [[-0.1 * ln2, 0.1 * ln2, 0.0]])


def test_clipped_policy_loss_by_hand():
    old = torch.zeros(1, 4)
    new = torch.log(torch.tensor([[1.5, 0.5, 1.1, 0.5]]))
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    out = core.clipped_policy_loss(new, old, adv, torch.ones(1, 4), cliprange=0.2)
    # per token max(-A r, -A clip(r)): -1.2 (clipped), -0.5, 1.1, 0.8 (clipped)
    assert close(out.loss, (-1.2 - 0.5 + 1.1 + 0.8) / 4)
    assert close(out.clipfrac, 0.5)
    assert close(out.approx_kl, 0.5 * (new ** 2).mean())
    assert close(out.ratio, (1.5 + 0.5 + 1.1 + 0.5) / 4)
    # masked tokens count for nothing
    masked = core.clipped_policy_loss(new, old, adv, torch.tensor([[1, 1, 0, 0]]), cliprange=0.2)
    assert close(masked.loss, (-1.2 - 0.5) / 2)
    assert close(masked.clipfrac, 0.5)


def test_clipped_policy_loss_gradient_stops_when_clipped():
    new = torch.log(torch.tensor([[1.5]])).requires_grad_(True)
    core.clipped_policy_loss(new, torch.zeros(1, 1), torch.ones(1, 1), torch.ones(1, 1), 0.2).loss.backward()
    assert new.grad.abs().item() == 0.0


def test_clipped_value_loss_by_hand():
    out = core.clipped_value_loss(torch.tensor([[0.5, 0.1, -0.3]]), torch.zeros(1, 3),
                                  torch.tensor([[1.0, 1.0, -1.0]]), torch.ones(1, 3), cliprange_value=0.2)
    # max((v-R)^2, (clip-R)^2): 0.64 (clipped), 0.81, 0.64 (clipped)
    assert close(out.loss, 0.5 * (0.64 + 0.81 + 0.64) / 3)
    assert close(out.clipfrac, 2 / 3)


def test_logprobs_use_temperature_and_entropy():
    logits = torch.tensor([[[2.0, 0.0]]])
    lp = core.logprobs_from_logits(logits, torch.tensor([[0]]), temperature=2.0)
    assert close(lp, [[1.0 - math.log(math.e + 1.0)]])
    assert close(core.logprobs_from_logits(logits, torch.tensor([[1]])), [[-math.log(1 + math.e ** 2)]])
    assert close(core.entropy_from_logits(torch.zeros(1, 1, 4)), [[math.log(4)]])
    p = torch.tensor([0.7, 0.2, 0.1])
    assert close(core.entropy_from_logits(p.log().view(1, 1, 3)), [[-(p * p.log()).sum()]])


def test_masked_whiten_ignores_padding():
    w = core.masked_whiten(torch.tensor([[1.0, 2.0, 3.0, 100.0]]), torch.tensor([[1, 1, 1, 0]]))
    assert close(w, [[-1.0, 0.0, 1.0, 0.0]], tol=1e-4)
    assert close(core.masked_mean(torch.tensor([[1.0, 5.0]]), torch.tensor([[1, 0]])), 1.0)


def test_truncate_after_first_eos():
    resp = torch.tensor([[5, 2, 7, 2], [5, 6, 7, 8], [2, 9, 9, 9]])
    out, mask, has_eos = core.truncate_after_eos(resp, eos_token_id=2, pad_token_id=0)
    assert out.tolist() == [[5, 2, 0, 0], [5, 6, 7, 8], [2, 0, 0, 0]]
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert has_eos.tolist() == [True, False, True]
    assert core.last_token_index(mask).tolist() == [1, 3, 0]
    # several EOS ids (chat models end turns with their own token)
    _, _, has = core.truncate_after_eos(torch.tensor([[4, 3]]), eos_token_id=[2, 3], pad_token_id=0)
    assert has.tolist() == [True]


def test_position_ids_skip_left_padding():
    assert core.position_ids_from_mask(torch.tensor([[0, 0, 1, 1, 1]])).tolist() == [[0, 0, 0, 1, 2]]
