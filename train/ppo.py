"""PPO for a LoRA policy against a reward model, on torch + transformers + PEFT.

TRL 1.16 dropped its PPOTrainer, so this follows the design of TRL's last one
(``trl/trainer/ppo_trainer.py``, v0.11-0.2x), trimmed to a single process:

1. **Rollout.** Prompts (chat template, left padding) are sampled from the policy
   with a temperature. Each response is cut after its first EOS. Log-probs of the
   sampled tokens are recomputed from temperature-scaled logits (the
   distribution actually sampled), under the policy and under the reference.
   The policy is the SFT model with a fresh LoRA adapter; the reference is the
   *same* model with the adapter disabled (``with model.disable_adapter():``) —
   no second copy in memory, and at step 0 policy == reference exactly.
2. **Scoring.** The reward model scores exactly the token sequence it was
   trained on: the chat template's rendering of prompt + response
   (:func:`bakeoff.train.chat.reward_sequence`), read at its last token, as
   the reward statistics, evaluation, GRPO and RLOO read it; a response that
   never emitted EOS loses ``missing_eos_penalty``. Scores are normalised with the reward checkpoint's
   ``reward_stats.json`` so ``kl_coef`` means the same for every reward model.
3. **Advantages.** Per-token reward = ``-kl_coef * KL`` (k1 or k3) plus the score
   at the last response token; GAE (gamma, lambda) with the value head; the
   advantages are whitened over valid tokens.
4. **Update.** Several PPO epochs over shuffled minibatches: clipped policy loss
   + ``vf_coef`` x clipped value loss, gradient clipping, AdamW.

The value head starts as the reward model (it already knows which answers are
good): by default a LoRA adapter plus a trainable copy of the score head on the
reward model itself, so scoring (adapter disabled) and values (adapter enabled)
share one set of weights, as the policy and reference do. ``value_model='copy'``
trains a full copy instead.

The math is in :mod:`bakeoff.train.ppo_core`; MLflow and checkpoints are in
:func:`train_ppo`; the click layer is :mod:`bakeoff.train.ppo_cmd`.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import random
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal, Sequence

from bakeoff.train.config import RLRunConfig, opt
from bakeoff.workspace import BakeoffError

if TYPE_CHECKING:  # heavy imports stay inside functions (bakeoff --help stays fast)
    import torch
    from bakeoff.train.common import TrainResult
    from bakeoff.workspace import Workspace


#: Sampling fields a model's generation config may set, at the values that leave
#: the distribution alone (PPO, GRPO and RLOO sample from softmax(logits / T)).
NEUTRAL_SAMPLING = dict(typical_p=1.0, epsilon_cutoff=0.0, eta_cutoff=0.0, encoder_repetition_penalty=1.0,
                        no_repeat_ngram_size=0, encoder_no_repeat_ngram_size=0, min_length=0,
                        length_penalty=1.0, renormalize_logits=False)

#: A toy/scripted reward: (prompts, completions, completion token ids) -> one score each.
RewardFn = Callable[[list[str], list[str], list[list[int]]], Sequence[float]]


@dataclass
class PPOConfig(RLRunConfig):
    """PPO hyperparameters (beside the run settings every trainer shares).
    Defaults follow TRL's last PPOConfig where it had one, adjusted for a LoRA
    policy (higher learning rate)."""

    steps: int = opt(100, "PPO iterations (one rollout batch each).")
    batch_size: int = opt(16, "Prompts sampled per iteration.")
    mini_batch_size: int = opt(4, "Rollouts per optimizer step.")
    ppo_epochs: int = opt(4, "Passes over each rollout batch.")
    top_k: int = opt(0, "", cli=False)
    top_p: float = opt(1.0, "", cli=False)
    kl_coef: float = opt(0.05, "KL penalty coefficient.")
    kl_estimator: Literal["k1", "k3"] = opt("k1", "Per-token KL estimator.", choices=("k1", "k3"))
    gamma: float = opt(1.0, "", cli=False)
    lam: float = opt(0.95, "", cli=False)
    cliprange: float = opt(0.2, "", cli=False)
    cliprange_value: float = opt(0.2, "", cli=False)
    vf_coef: float = opt(0.1, "", cli=False)
    whiten_rewards: bool = opt(False, "", cli=False)
    value_model: Literal["lora", "copy"] = opt("lora", "", cli=False)
    # "adapter": the reference is the policy with its adapter disabled (no extra
    # memory). "copy": a frozen second copy of the SFT model, as TRL did without
    # PEFT; kept to measure what the adapter trick saves (benchmarks/bench_ppo.py).
    reference: Literal["adapter", "copy"] = opt("adapter", "", cli=False)
    forward_batch_size: int = opt(16, "", cli=False)  # rollouts per no-grad forward pass
    save_steps: int = opt(0, "Checkpoint every N iterations (0: at the end only); all kept.")

    def validate(self) -> None:
        self.validate_run()
        if self.batch_size % self.mini_batch_size:
            raise BakeoffError(f"batch_size ({self.batch_size}) must be a multiple of "
                               f"mini_batch_size ({self.mini_batch_size})")
        if self.kl_estimator not in ("k1", "k3"):
            raise BakeoffError(f"kl_estimator must be 'k1' or 'k3', not {self.kl_estimator!r}")
        if self.value_model not in ("lora", "copy"):
            raise BakeoffError(f"value_model must be 'lora' or 'copy', not {self.value_model!r}")
        if self.reference not in ("adapter", "copy"):
            raise BakeoffError(f"reference must be 'adapter' or 'copy', not {self.reference!r}")
        if self.temperature <= 0:
            raise BakeoffError("temperature must be > 0 (PPO samples its rollouts)")
        if self.steps < 1 or self.ppo_epochs < 1:
            raise BakeoffError("steps and ppo_epochs must be >= 1")


# --- helpers -------------------------------------------------------------------------

def eos_token_ids(tokenizer: Any, model: Any | None = None) -> list[int]:
    """EOS ids: the tokenizer's, plus the generation config's (chat models often
    end turns with a different token than the tokenizer's eos)."""
    ids: list[int] = []
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    gen = getattr(model, "generation_config", None)
    g = getattr(gen, "eos_token_id", None)
    for i in (g if isinstance(g, (list, tuple)) else [g]):
        if i is not None and int(i) not in ids:
            ids.append(int(i))
    if not ids:
        raise BakeoffError("the tokenizer has no EOS token: PPO scores responses at their EOS")
    return ids


def check_pad_not_eos(tokenizer: Any, model: Any | None = None) -> None:
    """PPO cuts responses at EOS and treats pad as 'no token': pad == EOS would
    make every padded position look like the end of a response (and mask real EOS
    tokens out of the loss). Refuse it."""
    pad = tokenizer.pad_token_id
    if pad is None:
        raise BakeoffError("the tokenizer has no pad token; PPO needs one distinct from EOS")
    if pad in eos_token_ids(tokenizer, model):
        raise BakeoffError(f"pad token id {pad} equals the EOS token id: PPO needs a pad token "
                           "distinct from EOS (add one, e.g. tokenizer.add_special_tokens({'pad_token': '<|pad|>'}))")


def disable_dropout(model: Any) -> None:
    """Dropout makes the recomputed log-probs differ from the rollout's, which
    biases the ratio; TRL's PPO disables it in every model too."""
    import torch

    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0


def _unwrap(model: Any) -> Any:
    """The transformers model under a PEFT wrapper (LoRA layers stay injected)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _score_head(model: Any) -> Any:
    inner = _unwrap(model)
    head = getattr(inner, "score", None) or getattr(inner, "classifier", None)
    if head is None:
        raise BakeoffError(f"{type(inner).__name__} has no 'score' head: the reward model must be a "
                           "sequence-classification model (num_labels=1)")
    return head


def sequence_hidden(model: Any, input_ids: "torch.Tensor", attention_mask: "torch.Tensor") -> "torch.Tensor":
    """Last hidden states of a sequence-classification model's backbone, with
    position ids that ignore left padding."""
    from bakeoff.train.ppo_core import position_ids_from_mask

    inner = _unwrap(model)
    backbone = getattr(inner, inner.base_model_prefix)
    out = backbone(input_ids=input_ids, attention_mask=attention_mask,
                   position_ids=position_ids_from_mask(attention_mask), use_cache=False)
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


def token_values(model: Any, input_ids: "torch.Tensor", attention_mask: "torch.Tensor") -> "torch.Tensor":
    """The score head applied at every position: (B, T) values. This is how a
    sequence classifier becomes a per-token value model (as in TRL)."""
    return _score_head(model)(sequence_hidden(model, input_ids, attention_mask)).squeeze(-1).float()


def scores_at(model: Any, input_ids: "torch.Tensor", attention_mask: "torch.Tensor",
              index: "torch.Tensor") -> "torch.Tensor":
    """The reward model's score at ``index`` per row (the EOS / last token)."""
    import torch

    hidden = sequence_hidden(model, input_ids, attention_mask)
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    return _score_head(model)(hidden[rows, index]).squeeze(-1).float()


def merged_state_dict(peft_model: Any) -> dict[str, "torch.Tensor"]:
    """The base model's weights with the LoRA deltas folded in, computed without
    touching the live model (PEFT's ``merge_and_unload`` is destructive and
    ``merge_adapter``/``unmerge_adapter`` round-trips lose precision in bf16)."""
    from peft.tuners.lora import LoraLayer

    base = peft_model.get_base_model()
    adapter = peft_model.active_adapter
    merged: dict[str, Any] = {}
    for name, module in base.named_modules():
        if isinstance(module, LoraLayer) and adapter in module.lora_A:
            w = module.get_base_layer().weight
            merged[f"{name}.weight"] = (w + module.get_delta_weight(adapter).to(w.dtype)).detach()
    out: dict[str, Any] = {}
    for key, value in base.state_dict().items():
        if "lora_" in key:
            continue
        key = key.replace(".base_layer.", ".")
        out[key] = merged.get(key, value).detach().cpu().contiguous()
    return out


# --- the trainer ---------------------------------------------------------------------

@dataclass
class Rollout:
    """One batch of sampled episodes, everything the PPO update needs."""

    input_ids: "torch.Tensor"       # (B, Q+R) query + truncated response
    attention_mask: "torch.Tensor"  # (B, Q+R)
    query_len: int
    mask: "torch.Tensor"            # (B, R) valid response tokens
    logprobs: "torch.Tensor"        # (B, R)
    ref_logprobs: "torch.Tensor"
    values: "torch.Tensor"
    scores: "torch.Tensor"          # (B,) after normalisation and EOS penalty
    raw_scores: "torch.Tensor"      # (B,) straight from the reward model / function
    has_eos: "torch.Tensor"         # (B,)
    completions: list[str] = field(default_factory=list)


class PPOTrainer:
    """PPO on a causal LM with a LoRA adapter.

    ``policy`` is the SFT model (a plain transformers model; a LoRA adapter is
    added here) and ``tokenizer`` its tokenizer (pad != EOS). Rewards come from
    ``reward_model`` (sequence classification, same tokenizer) or, for tests and
    scripted objectives, ``reward_fn(prompts, completions, completion_ids)``.
    ``prompts`` are chat message lists or plain strings."""

    def __init__(self, config: PPOConfig, policy: Any, tokenizer: Any, prompts: Sequence[Any],
                 reward_model: Any | None = None, reward_fn: RewardFn | None = None,
                 reward_stats: dict | None = None,
                 log_fn: Callable[[dict[str, float], int], None] | None = None,
                 reward_tokenizer: Any | None = None) -> None:
        import torch
        from peft import LoraConfig, PeftModel, get_peft_model

        config.validate()
        if (reward_model is None) == (reward_fn is None):
            raise BakeoffError("PPOTrainer needs exactly one of reward_model or reward_fn")
        if not prompts:
            raise BakeoffError("no prompts to train on")
        self.config = config
        self.tokenizer = tokenizer
        self.reward_tokenizer = reward_tokenizer or tokenizer
        self.prompts = list(prompts)
        self.reward_fn = reward_fn
        self.reward_stats = reward_stats if config.normalize_scores else None
        self.log_fn = log_fn
        self.device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        torch.manual_seed(config.seed)
        self._rng = random.Random(config.seed)

        check_pad_not_eos(tokenizer, policy)
        self.eos_ids = eos_token_ids(tokenizer, policy)
        self.pad_id = int(tokenizer.pad_token_id)
        tokenizer.padding_side = "left"

        # Policy: SFT weights frozen, a fresh LoRA adapter trained. With the
        # adapter disabled the same module is the reference policy.
        if isinstance(policy, PeftModel):
            raise BakeoffError("pass the SFT model without a PEFT wrapper (load_causal_lm merges "
                               "adapters): PPO adds its own adapter and uses the model without it "
                               "as the reference")
        self.ref_model = None
        if config.reference == "copy":
            self.ref_model = copy.deepcopy(policy).requires_grad_(False).eval().to(self.device)
            disable_dropout(self.ref_model)
        ls = config.lora_settings
        lora = LoraConfig(r=ls.r, lora_alpha=ls.alpha, lora_dropout=ls.dropout,
                          target_modules=ls.target_modules, task_type="CAUSAL_LM")
        self.policy = get_peft_model(policy, lora).to(self.device)
        disable_dropout(self.policy)  # after the wrap: LoRA's own dropout layers too

        # Reward and value models.
        self.reward_model = None
        if reward_model is not None:
            self._check_same_vocab(reward_model)
            reward_model.requires_grad_(False)
            reward_model.eval()
            if config.value_model == "lora":
                head_name = "score" if hasattr(_unwrap(reward_model), "score") else "classifier"
                vlora = LoraConfig(r=ls.r, lora_alpha=ls.alpha, lora_dropout=ls.dropout,
                                   target_modules=ls.target_modules, modules_to_save=[head_name])
                self.value_model = get_peft_model(reward_model, vlora).to(self.device)
                self.reward_model = self.value_model  # scored with the adapter disabled
            else:
                self.reward_model = reward_model.to(self.device)
                self.value_model = copy.deepcopy(reward_model).requires_grad_(True).to(self.device)
            disable_dropout(self.reward_model)
        else:
            self.value_model = self._value_from_policy(policy).to(self.device)
        disable_dropout(self.value_model)  # after any LoRA wrap
        if self.reward_model is not None and self.reward_model.config.pad_token_id is None:
            self.reward_model.config.pad_token_id = self.pad_id

        params = [p for p in self.policy.parameters() if p.requires_grad]
        params += [p for p in self.value_model.parameters() if p.requires_grad]
        self._params = params
        self.optimizer = torch.optim.AdamW(params, lr=config.learning_rate, eps=1e-5)
        # The project's LR practice: warm-up, then a linear step-down to a floor.
        from bakeoff.train.schedule import make_schedule

        n_opt = config.steps * config.ppo_epochs * (config.batch_size // config.mini_batch_size)
        self.schedule = make_schedule(n_opt, config.warmup_steps, 0.0, config.lr_floor)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.schedule)
        self.step = 0
        self.history: list[dict[str, float]] = []
        self._order: list[int] = []

    # -- construction helpers --

    def _check_same_vocab(self, reward_model: Any) -> None:
        pv = _unwrap(self.policy).get_input_embeddings().weight.shape[0]
        rv = _unwrap(reward_model).get_input_embeddings().weight.shape[0]
        if pv != rv:
            raise BakeoffError(f"the reward model's vocabulary ({rv}) differs from the policy's ({pv}): "
                               "PPO scores the policy's token ids directly, so both must share a tokenizer")

    def _value_from_policy(self, policy: Any) -> Any:
        """With a scripted reward there is no reward model to start the value head
        from: use a sequence classifier over a copy of the policy's backbone."""
        import torch
        from transformers import AutoModelForSequenceClassification

        cfg = copy.deepcopy(policy.get_base_model().config if hasattr(policy, "get_base_model") else policy.config)
        cfg.num_labels = 1
        cfg.pad_token_id = self.pad_id
        value = AutoModelForSequenceClassification.from_config(cfg)
        value.load_state_dict({k: v for k, v in merged_state_dict(self.policy).items()
                               if not k.startswith("lm_head")}, strict=False)
        with torch.no_grad():
            _score_head(value).weight.zero_()
        disable_dropout(value)
        return value.to(torch.float32)

    # -- rollout --

    def _prompt_text(self, prompt: Any) -> str:
        from bakeoff.train.chat import render

        if isinstance(prompt, str):
            return prompt
        if getattr(self.tokenizer, "chat_template", None):
            return render(self.tokenizer, prompt, add_generation_prompt=True)
        return "\n".join(f"{m['role']}: {m['content']}" for m in prompt) + "\nassistant: "

    def _next_prompts(self) -> list[Any]:
        """Without replacement through a shuffled order; reshuffled each pass."""
        out = []
        while len(out) < self.config.batch_size:
            if not self._order:
                self._order = list(range(len(self.prompts)))
                self._rng.shuffle(self._order)
            out.append(self.prompts[self._order.pop()])
        return out

    def _encode(self, texts: list[str]) -> dict[str, "torch.Tensor"]:
        self.tokenizer.padding_side = "left"
        # Over-long prompts lose their beginning: the question is at the end.
        side, self.tokenizer.truncation_side = self.tokenizer.truncation_side, "left"
        try:
            # The chat template already carries the special tokens it wants.
            enc = self.tokenizer(texts, return_tensors="pt", padding=True, truncation=True,
                                 max_length=self.config.max_prompt_length, add_special_tokens=False)
        finally:
            self.tokenizer.truncation_side = side
        return {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}

    def _policy_logprobs(self, input_ids: "torch.Tensor", attention_mask: "torch.Tensor",
                         query_len: int, with_entropy: bool = False,
                         model: Any = None) -> tuple["torch.Tensor", "torch.Tensor | None"]:
        from bakeoff.train.ppo_core import entropy_from_logits, logprobs_from_logits, position_ids_from_mask

        R = input_ids.shape[1] - query_len
        out = (model or self.policy)(input_ids=input_ids, attention_mask=attention_mask,
                          position_ids=position_ids_from_mask(attention_mask),
                          use_cache=False, logits_to_keep=R + 1)
        logits = out.logits[:, :-1]  # logits at position i predict token i+1
        logprobs = logprobs_from_logits(logits, input_ids[:, query_len:], self.config.temperature)
        entropy = None
        if with_entropy:
            import torch
            with torch.no_grad():
                entropy = entropy_from_logits(logits, self.config.temperature)
        return logprobs, entropy

    def sampling_config(self) -> Any:
        """Plain temperature sampling (with the configured top-k/top-p), every
        other field neutral. The PPO ratio assumes the rollout's distribution is
        ``softmax(logits / T)``; a model's generation config (repetition
        penalty, n-gram blocking, min-p, typical-p, ...) would silently change
        it. No ``min_new_tokens``: forcing a first token biases its log-prob."""
        from transformers import GenerationConfig

        return GenerationConfig(
            do_sample=True, num_beams=1, temperature=self.config.temperature, top_k=self.config.top_k,
            top_p=self.config.top_p, min_p=0.0, repetition_penalty=1.0, **NEUTRAL_SAMPLING,
            max_new_tokens=self.config.max_new_tokens, pad_token_id=self.pad_id, eos_token_id=self.eos_ids,
            bos_token_id=self.tokenizer.bos_token_id)

    @contextlib.contextmanager
    def _neutral_generation_config(self) -> Any:
        """The model's own generation config swapped for a blank one while
        sampling: ``generate`` fills any field left unset from the model's
        config (bad_words_ids, suppress_tokens, sequence_bias, ...), so unset
        must mean unset. The model's config is restored, and saved with checkpoints."""
        from transformers import GenerationConfig

        inner = _unwrap(self.policy)
        saved = inner.generation_config
        inner.generation_config = GenerationConfig()
        try:
            yield
        finally:
            inner.generation_config = saved

    def _generate(self, enc: dict[str, "torch.Tensor"], **kwargs: Any) -> Any:
        self.policy.eval()
        with self._neutral_generation_config():
            return self.policy.generate(**enc, generation_config=self.sampling_config(), **kwargs)

    def rollout(self, prompts: list[Any]) -> tuple[Rollout, dict[str, float]]:
        """Sample, score and evaluate one batch of prompts (no gradients)."""
        import torch
        from bakeoff.train.ppo_core import truncate_after_eos

        timing: dict[str, float] = {}
        texts = [self._prompt_text(p) for p in prompts]
        enc = self._encode(texts)
        Q = enc["input_ids"].shape[1]
        with torch.no_grad():
            t = time.perf_counter()
            seq = self._generate(enc)
            timing["time/generate"] = time.perf_counter() - t

            t = time.perf_counter()
            responses, mask, has_eos = truncate_after_eos(seq[:, Q:], self.eos_ids, self.pad_id)
            input_ids = torch.cat([enc["input_ids"], responses], dim=1)
            attention_mask = torch.cat([enc["attention_mask"], mask.to(enc["attention_mask"].dtype)], dim=1)
            logprobs, ref_logprobs, values = [], [], []
            fb = self.config.forward_batch_size
            for i in range(0, input_ids.shape[0], fb):
                ids, am = input_ids[i:i + fb], attention_mask[i:i + fb]
                logprobs.append(self._policy_logprobs(ids, am, Q)[0])
                if self.ref_model is not None:
                    ref_logprobs.append(self._policy_logprobs(ids, am, Q, model=self.ref_model)[0])
                else:
                    with self.policy.disable_adapter():
                        ref_logprobs.append(self._policy_logprobs(ids, am, Q)[0])
                values.append(token_values(self.value_model, ids, am)[:, Q - 1:-1])
            logprobs_t = torch.cat(logprobs)
            ref_t = torch.cat(ref_logprobs)
            values_t = torch.cat(values)
            timing["time/forward"] = time.perf_counter() - t
            timing["time/rollout"] = timing["time/generate"] + timing["time/forward"]

            t = time.perf_counter()
            completion_ids = [r[m.bool()].tolist() for r, m in zip(responses.cpu(), mask.cpu())]
            completions = self.tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
            if self.reward_fn is not None:
                raw = torch.as_tensor(list(self.reward_fn(texts, completions, completion_ids)),
                                      dtype=torch.float32, device=self.device)
                if raw.shape != (len(prompts),):
                    raise BakeoffError(f"reward_fn returned {tuple(raw.shape)} scores for {len(prompts)} completions")
            else:
                raw = torch.as_tensor(self.reward_scores(prompts, completions), dtype=torch.float32,
                                      device=self.device)
            scores = self.normalise_scores(raw, has_eos)
            timing["time/scoring"] = time.perf_counter() - t

        ro = Rollout(input_ids=input_ids, attention_mask=attention_mask, query_len=Q, mask=mask,
                     logprobs=logprobs_t, ref_logprobs=ref_t, values=values_t, scores=scores,
                     raw_scores=raw, has_eos=has_eos, completions=completions)
        return ro, timing

    def reward_scores(self, prompts: list[Any], completions: list[str]) -> list[float]:
        """The reward model's raw scores, read where it was trained to be read
        (:func:`bakeoff.train.chat.score_responses`)."""
        from bakeoff.train.chat import score_responses

        ctx = self.reward_model.disable_adapter() if self.reward_model is self.value_model else nullcontext()
        with ctx:
            return score_responses(self.reward_model, self.reward_tokenizer, prompts, completions,
                                   self.config.forward_batch_size)

    def normalise_scores(self, raw: "torch.Tensor", has_eos: "torch.Tensor") -> "torch.Tensor":
        """(score - mean) / std from reward_stats.json, then the missing-EOS penalty."""
        scores = raw.float().clone()
        if self.reward_stats:
            scores = (scores - self.reward_stats["mean"]) / self.reward_stats["std"]
        if self.config.missing_eos_penalty is not None:
            scores = scores - self.config.missing_eos_penalty * (~has_eos).to(scores.dtype)
        return scores

    # -- update --

    def train_step(self) -> dict[str, float]:
        """One PPO iteration: rollout, advantages, ``ppo_epochs`` of minibatch updates."""
        import torch
        from bakeoff.train import ppo_core as core

        c = self.config
        t0 = time.perf_counter()
        ro, timing = self.rollout(self._next_prompts())

        with torch.no_grad():
            rw = core.compute_rewards(ro.scores, ro.logprobs, ro.ref_logprobs, ro.mask, c.kl_coef, c.kl_estimator)
            rewards = rw.rewards
            if c.whiten_rewards:
                rewards = core.masked_whiten(rewards, ro.mask, shift_mean=False)
            advantages, returns = core.gae(rewards, ro.values, ro.mask, c.gamma, c.lam)
            advantages = core.masked_whiten(advantages, ro.mask)

        lr = self.optimizer.param_groups[0]["lr"]  # the LR this step's first update uses
        t = time.perf_counter()
        self.policy.train()
        self.value_model.train()
        B = ro.input_ids.shape[0]
        stats: dict[str, list[float]] = {k: [] for k in
                                         ("policy_loss", "value_loss", "clipfrac", "value_clipfrac",
                                          "approx_kl", "ratio", "entropy")}
        for _ in range(c.ppo_epochs):
            perm = torch.randperm(B, device=self.device)
            for i in range(0, B, c.mini_batch_size):
                idx = perm[i:i + c.mini_batch_size]
                ids, am, m = ro.input_ids[idx], ro.attention_mask[idx], ro.mask[idx]
                new_logprobs, entropy = self._policy_logprobs(ids, am, ro.query_len, with_entropy=True)
                vpred = token_values(self.value_model, ids, am)[:, ro.query_len - 1:-1]
                pl = core.clipped_policy_loss(new_logprobs, ro.logprobs[idx], advantages[idx], m, c.cliprange)
                vl = core.clipped_value_loss(vpred, ro.values[idx], returns[idx], m, c.cliprange_value)
                loss = pl.loss + c.vf_coef * vl.loss
                if not torch.isfinite(loss):
                    raise BakeoffError(f"PPO loss became {loss.item()} at step {self.step}: lower the "
                                       "learning rate or kl_coef")
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self._params, c.max_grad_norm)
                self.optimizer.step()
                self.scheduler.step()
                stats["policy_loss"].append(pl.loss.item())
                stats["value_loss"].append(vl.loss.item())
                stats["clipfrac"].append(pl.clipfrac.item())
                stats["value_clipfrac"].append(vl.clipfrac.item())
                stats["approx_kl"].append(pl.approx_kl.item())
                stats["ratio"].append(pl.ratio.item())
                stats["entropy"].append(core.masked_mean(entropy, m).item())
        timing["time/update"] = time.perf_counter() - t
        timing["time/step"] = time.perf_counter() - t0

        lengths = ro.mask.sum(1).float()
        kl_sum = rw.kl.sum(1)
        out = {k: float(sum(v) / len(v)) for k, v in stats.items()}
        out.update({
            "reward": ro.scores.mean().item(),            # what PPO optimises (normalised, penalised)
            "reward_raw": ro.raw_scores.mean().item(),
            "reward_std": ro.scores.std().item() if B > 1 else 0.0,
            "kl": kl_sum.mean().item(),                   # per sequence, summed over tokens
            "non_score_reward": rw.non_score.sum(1).mean().item(),
            "rlhf_reward": (ro.scores + rw.non_score.sum(1)).mean().item(),
            "response_length": lengths.mean().item(),
            "eos_rate": ro.has_eos.float().mean().item(),
            "learning_rate": lr,
            **timing,
        })
        self.step += 1
        self.history.append(out)
        if self.log_fn is not None:
            self.log_fn(out, self.step)
        self.last_completions = ro.completions
        return out

    def train(self, on_checkpoint: Callable[[int], None] | None = None,
              progress: Callable[[int, dict[str, float]], None] | None = None) -> list[dict[str, float]]:
        """Run iterations up to ``config.steps`` (from ``self.step``: a resumed
        trainer continues); ``on_checkpoint(step)`` every ``save_steps`` and at the end."""
        while self.step < self.config.steps:
            stats = self.train_step()
            if progress is not None:
                progress(self.step, stats)
            if on_checkpoint and self.config.save_steps and self.step % self.config.save_steps == 0 \
                    and self.step != self.config.steps:
                on_checkpoint(self.step)
        if on_checkpoint:
            on_checkpoint(self.step)
        return self.history

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue exactly: the trained
        weights (policy adapter, value head), optimizer and schedule, the step,
        the prompt order and every random generator."""
        import torch

        def trainable(model: Any) -> dict[str, Any]:
            return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}

        return {"step": self.step, "policy": trainable(self.policy), "value": trainable(self.value_model),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "history": self.history, "order": list(self._order), "rng": self._rng.getstate(),
                "torch_rng": torch.random.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        import torch

        for model, saved in ((self.policy, state["policy"]), (self.value_model, state["value"])):
            params = dict(model.named_parameters())
            missing = set(saved) - set(params)
            if missing:
                raise BakeoffError(f"--resume: the checkpoint's PPO state does not fit this model "
                                   f"({len(missing)} unknown parameters, e.g. {sorted(missing)[0]})")
            with torch.no_grad():
                for name, value in saved.items():
                    params[name].copy_(value.to(params[name].device))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.history, self._order = state["step"], list(state["history"]), list(state["order"])
        self._rng.setstate(state["rng"])
        torch.random.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])

    def save(self, path: str | os.PathLike) -> Path:
        """The policy with its adapter merged (full weights + tokenizer), so the
        checkpoint loads on its own whatever the SFT checkpoint was; plus the
        trainer state ``--resume`` continues from."""
        import torch

        from bakeoff.train.checkpoints import PPO_STATE_FILE

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        base = self.policy.get_base_model()
        base.save_pretrained(path, state_dict=merged_state_dict(self.policy))
        self.tokenizer.save_pretrained(path)
        (path / "ppo_config.json").write_text(json.dumps(asdict(self.config), indent=2, default=str))
        tmp = path / f".{PPO_STATE_FILE}.tmp"
        torch.save(self.state_dict(), tmp)
        os.replace(tmp, path / PPO_STATE_FILE)  # last: its presence marks the checkpoint complete
        return path


# --- the API behind `bakeoff train ppo` ------------------------------------------------

def load_prompts(ws: "Workspace", ref: str, limit: int | None = None) -> list[list[dict]]:
    """Prompt turns of every row of a dataset version (prompt, sft or preference rows)."""
    from bakeoff.schema import prompt_messages

    df = ws.load(ref, columns=["kind", "messages"])
    prompts = []
    for row in df.iter_rows(named=True):  # messages are nested lists of structs: per-row is the natural form
        msgs = [{"role": m["role"], "content": m["content"]} for m in prompt_messages(row)]
        if msgs:
            prompts.append(msgs)
    if not prompts:
        raise BakeoffError(f"{ref} has no prompts (rows with at least one non-assistant turn)")
    return prompts[:limit] if limit else prompts


def train_ppo(ws: "Workspace", cfg: PPOConfig, resume_run_id: str | None = None) -> "TrainResult":
    """Run PPO as an MLflow run in ``cfg.experiment_name``: the policy
    ``cfg.model`` (an SFT checkpoint) against ``cfg.reward_model`` on the
    prompts of ``cfg.dataset``. Checkpoints under
    ``ws.runs_dir()/<experiment>/<run_id>/checkpoint-<step>/`` carry
    ``bakeoff_checkpoint.json`` (kind 'ppo', the whole lineage) and the
    trainer state; ``cfg.resume`` continues the latest PPO run of the
    experiment (or ``resume_run_id``) from its last checkpoint."""
    import mlflow

    from bakeoff.console import log, progress
    from bakeoff.train.checkpoints import write_checkpoint_meta
    from bakeoff.train.common import (TrainResult, collect_checkpoints, lineage_params, plan_run,
                                      prompt_length_losses, rl_inputs)
    from bakeoff.train.models import load_causal_lm, load_reward_model, pick_device
    from bakeoff.train.tracking import training_run

    cfg.validate()
    # A resumed run brings its own config; a new run is created only once its inputs check out.
    plan = plan_run(ws, cfg, "ppo", resume_run_id) if cfg.resume else None
    cfg = plan.cfg if plan else cfg
    inputs = rl_inputs(ws, cfg, "ppo")
    plan = plan or plan_run(ws, cfg, "ppo")
    device = pick_device(cfg.device)
    cfg.device = device
    model, tokenizer = load_causal_lm(inputs.policy_path, device=device)
    reward_model, reward_tok = load_reward_model(inputs.reward_path, device=device)
    if device == "cpu":  # bf16 only on GPUs (load_*'s default); PPO's ratios want fp32 on CPU
        model, reward_model = model.float(), reward_model.float()
    length_metrics, warnings = prompt_length_losses(tokenizer, inputs.prompts, cfg.max_prompt_length, "PPO")

    params = {**cfg.to_params(), "algorithm": "ppo", "policy": inputs.policy_path,
              "reward_model": str(inputs.reward_path), "prompts": inputs.prompts_ref,
              "n_prompts": len(inputs.prompts), **lineage_params(inputs.lineage)}
    if inputs.stats:
        params.update(reward_mean=inputs.stats["mean"], reward_std=inputs.stats["std"])
    tags = {"bakeoff.kind": "ppo", "bakeoff.algorithm": "ppo", "bakeoff.output_dir": str(plan.output_dir),
            "bakeoff.parent_run_id": str(inputs.checkpoint_meta(plan, "ppo")["parent_run_id"]),
            "bakeoff.parent_checkpoint": inputs.policy_path, "bakeoff.reward_model": str(inputs.reward_path),
            **cfg.run_tags()}
    meta = inputs.checkpoint_meta(plan, "ppo")
    with training_run(ws, cfg.experiment_name, run_id=plan.run_id, params=params, tags=tags,
                      datasets=[(inputs.prompts_ref, "training")], hypothesis=cfg.hypothesis,
                      resume=plan.resume_from is not None):
        client = mlflow.MlflowClient()

        def log_metrics(s: dict[str, float], step: int) -> None:
            from mlflow.entities import Metric

            ts = int(time.time() * 1000)
            client.log_batch(plan.run_id, metrics=[Metric(k, float(v), ts, step) for k, v in s.items()],
                             synchronous=False)

        trainer = PPOTrainer(cfg, model, tokenizer, inputs.prompts, reward_model=reward_model,
                             reward_stats=inputs.stats, log_fn=log_metrics, reward_tokenizer=reward_tok)
        if plan.resume_from is not None:
            import torch

            from bakeoff.train.checkpoints import PPO_STATE_FILE

            trainer.load_state_dict(torch.load(plan.resume_from / PPO_STATE_FILE, weights_only=False))
            log(f"PPO resumes at iteration {trainer.step} of {cfg.steps}")

        def save(step: int) -> None:
            path = trainer.save(plan.output_dir / f"checkpoint-{step}")
            write_checkpoint_meta(path, {**meta, "step": step})
            log(f"checkpoint {path}")

        with progress() as bar:
            task = bar.add_task("PPO", total=cfg.steps, completed=trainer.step)

            def tick(step: int, s: dict[str, float]) -> None:
                bar.update(task, advance=1,
                           description=f"PPO reward {s['reward']:+.3f} kl {s['kl']:.3f} eos {s['eos_rate']:.0%}")
            with contextlib.redirect_stdout(sys.stderr):  # --json owns stdout
                trainer.train(on_checkpoint=save, progress=tick)
        mlflow.flush_async_logging()
        mlflow.log_metrics(length_metrics)
        checkpoints = collect_checkpoints(plan.output_dir)
        mlflow.set_tag("bakeoff.checkpoints", json.dumps(checkpoints))
        tracking_uri = mlflow.get_tracking_uri()
    final = trainer.history[-1] if trainer.history else {}
    return TrainResult(run_id=plan.run_id, tracking_uri=tracking_uri, experiment_name=cfg.experiment_name,
                       checkpoints=checkpoints, output_dir=str(plan.output_dir), kind="ppo",
                       metrics={k: v for k, v in final.items() if not k.startswith("time/")},
                       warnings=warnings,
                       extra={"algorithm": "ppo", "dataset": inputs.prompts_ref, "length": length_metrics,
                              "lineage": inputs.lineage, "round": cfg.round})

