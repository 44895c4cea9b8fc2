"""PPO's tensor math, kept free of models so every formula can be checked by hand.

Shapes: ``(batch, response_len)`` for per-token quantities; ``mask`` is 1 on the
response tokens that count (up to and including the first EOS) and 0 on padding.

The formulas follow TRL's last PPO trainer (``trl/trainer/ppo_trainer.py``,
v0.11-0.2x), which was removed from TRL, so they live here:

- log-probs are taken from temperature-scaled logits, the same scaling the
  sampler used, so the ratio new/old compares the distributions actually sampled;
- the KL penalty is per token, estimated with k1 (``logp - ref_logp``) or k3
  (``(r - 1) - log r`` with ``r = ref / p``; unbiased and always >= 0), see
  http://joschu.net/blog/kl-approx.html;
- the sequence-level score is added at the last response token;
- advantages come from GAE and are whitened over the valid tokens only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

KLEstimator = Literal["k1", "k3"]


# --- masked statistics -------------------------------------------------------------

def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` is 1 (over all elements, or along ``dim``)."""
    mask = mask.to(values.dtype)
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of ``values`` where ``mask`` is 1 (Bessel-corrected by default)."""
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean) ** 2, mask)
    if unbiased:
        n = mask.sum()
        if n <= 1:
            return torch.zeros((), dtype=values.dtype, device=values.device)
        var = var * n / (n - 1)
    return var


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True,
                  eps: float = 1e-8) -> torch.Tensor:
    """Normalise ``values`` to unit variance (and zero mean if ``shift_mean``) using
    statistics of the masked elements only, so padding does not drag them.
    Masked-out positions are returned as 0."""
    mean = masked_mean(values, mask)
    var = masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask.to(values.dtype)


# --- log-probs, entropy, KL --------------------------------------------------------

def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor,
                         temperature: float = 1.0) -> torch.Tensor:
    """Log-probability of each of ``tokens`` (B, T) under ``logits`` (B, T, V)
    divided by ``temperature``: the distribution the sampler drew from.

    ``logit[token] - logsumexp(logits)`` avoids materialising a full
    log-softmax tensor (B, T, V) a second time."""
    logits = logits.float() / max(temperature, 1e-7)
    picked = torch.gather(logits, -1, tokens.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def entropy_from_logits(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Per-position entropy (nats) of softmax(logits / temperature):
    ``logsumexp(z) - sum(softmax(z) * z)``."""
    z = logits.float() / max(temperature, 1e-7)
    return torch.logsumexp(z, dim=-1) - (F.softmax(z, dim=-1) * z).sum(-1)


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
               estimator: KLEstimator = "k1") -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from the sampled tokens.

    k1 = log p - log ref: unbiased, can be negative per token.
    k3 = (r - 1) - log r with r = ref / p: unbiased, never negative, lower variance."""
    if estimator == "k1":
        return logprobs - ref_logprobs
    if estimator == "k3":
        log_r = ref_logprobs - logprobs
        return torch.expm1(log_r) - log_r
    raise ValueError(f"unknown KL estimator {estimator!r} (expected 'k1' or 'k3')")


# --- rewards, GAE --------------------------------------------------------------------

def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last valid token per row (0 for an all-zero row)."""
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return (positions * mask.long()).max(dim=1).values


@dataclass
class Rewards:
    rewards: torch.Tensor      # (B, T): -kl_coef * KL per token, plus the score at the last token
    kl: torch.Tensor           # (B, T): per-token KL estimate (0 on padding)
    non_score: torch.Tensor    # (B, T): -kl_coef * KL (0 on padding)


def compute_rewards(scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                    mask: torch.Tensor, kl_coef: float,
                    estimator: KLEstimator = "k1") -> Rewards:
    """Per-token rewards: ``-kl_coef * KL`` at every response token plus the
    sequence score (already normalised/penalised) at the last valid token."""
    m = mask.to(logprobs.dtype)
    kl = kl_penalty(logprobs, ref_logprobs, estimator) * m
    non_score = -kl_coef * kl
    rewards = non_score.clone()
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    rewards[rows, last_token_index(mask)] += scores.to(rewards.dtype)
    return Rewards(rewards=rewards, kl=kl, non_score=non_score)


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor,
        gamma: float = 1.0, lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over the response tokens.

    ``delta_t = r_t + gamma * V_{t+1} - V_t`` and
    ``A_t = delta_t + gamma * lam * A_{t+1}``, with V and r taken as 0 past the
    last valid token (the episode ends there). Returns ``(advantages, returns)``
    with ``returns = advantages + values``; both are 0 on padding.

    A Python loop over time steps (as in TRL): T is the response length (tens to
    hundreds) and each step is a vectorised op over the batch."""
    m = mask.to(values.dtype)
    values = values * m
    rewards = rewards * m
    T = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(T)):
        next_value = values[:, t + 1] if t + 1 < T else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = delta + gamma * lam * last
        # Padding positions sit after the episode end: they must not leak into
        # earlier tokens' advantages.
        last = last * m[:, t]
        advantages[:, t] = last
    returns = (advantages + values) * m
    return advantages, returns


# --- losses ------------------------------------------------------------------------

@dataclass
class PolicyLoss:
    loss: torch.Tensor
    clipfrac: torch.Tensor     # share of tokens whose ratio was clipped
    approx_kl: torch.Tensor    # 0.5 * mean((log ratio)^2): how far the update moved
    ratio: torch.Tensor        # mean ratio new/old


def clipped_policy_loss(new_logprobs: torch.Tensor, old_logprobs: torch.Tensor,
                        advantages: torch.Tensor, mask: torch.Tensor,
                        cliprange: float = 0.2) -> PolicyLoss:
    """PPO's clipped surrogate: ``mean(max(-A * r, -A * clip(r, 1-e, 1+e)))`` over
    valid tokens, with ``r = exp(new - old)``."""
    log_ratio = (new_logprobs - old_logprobs) * mask.to(new_logprobs.dtype)
    ratio = torch.exp(log_ratio)
    loss1 = -advantages * ratio
    loss2 = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.max(loss1, loss2), mask)
    with torch.no_grad():
        clipfrac = masked_mean((loss2 > loss1).float(), mask)
        approx_kl = 0.5 * masked_mean(log_ratio ** 2, mask)
        mean_ratio = masked_mean(ratio, mask)
    return PolicyLoss(loss=loss, clipfrac=clipfrac, approx_kl=approx_kl, ratio=mean_ratio)


@dataclass
class ValueLoss:
    loss: torch.Tensor
    clipfrac: torch.Tensor


def clipped_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
                       mask: torch.Tensor, cliprange_value: float = 0.2) -> ValueLoss:
    """``0.5 * mean(max((V - R)^2, (V_clip - R)^2))`` with
    ``V_clip = V_old + clip(V - V_old, -c, c)``: the value head may not move its
    prediction more than ``c`` from the rollout's estimate in one update."""
    clipped = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    loss1 = (values - returns) ** 2
    loss2 = (clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(loss1, loss2), mask)
    with torch.no_grad():
        clipfrac = masked_mean((loss2 > loss1).float(), mask)
    return ValueLoss(loss=loss, clipfrac=clipfrac)


# --- sequences ---------------------------------------------------------------------

def truncate_after_eos(responses: torch.Tensor, eos_token_id: int | list[int],
                       pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cut each response after its first EOS (TRL's ``truncate_response``).

    Returns ``(responses, mask, has_eos)``: tokens after the first EOS replaced by
    ``pad_token_id``; ``mask`` 1 up to and including the EOS (all tokens when
    there is none); ``has_eos`` per row."""
    eos_ids = torch.as_tensor(eos_token_id if isinstance(eos_token_id, (list, tuple)) else [eos_token_id],
                              device=responses.device)
    is_eos = torch.isin(responses, eos_ids)
    has_eos = is_eos.any(dim=1)
    T = responses.shape[1]
    first = torch.where(has_eos, is_eos.long().argmax(dim=1), torch.full_like(has_eos, T - 1, dtype=torch.long))
    positions = torch.arange(T, device=responses.device).expand_as(responses)
    mask = positions <= first.unsqueeze(1)
    return responses.masked_fill(~mask, pad_token_id), mask.long(), has_eos


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that start at 0 on the first real token of left-padded rows."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
