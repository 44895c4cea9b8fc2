"""Generation backends: answer test prompts and score reference log-likelihoods.

The evaluator talks to a :class:`Generator` (a protocol), so tests and
benchmarks can plug a scripted fake (:class:`bakeoff.evaluate.fakes.ScriptedGenerator`)
in place of a model. :class:`HFGenerator` is the real one: prompts rendered with
the tokenizer's chat template, batched with left padding (so every row's last
prompt token sits at the same position and generation appends to all rows at
once), KV cache on, greedy unless the settings ask for sampling.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any, Protocol, Sequence, runtime_checkable


Messages = list[dict[str, str]]

#: Used when a tokenizer has no chat template (a base model): plain role-tagged turns.
FALLBACK_TEMPLATE = "fallback-plain-v1"


@dataclass(frozen=True)
class GenerationSettings:
    """How answers are generated. Part of the cache key (except ``batch_size``,
    which changes speed, not the answers of greedy decoding)."""

    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    batch_size: int = 8

    def key_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("batch_size")
        if not self.do_sample:  # sampling knobs are irrelevant to greedy decoding
            d.pop("temperature"), d.pop("top_p"), d.pop("seed")
        return d

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.key_dict(), sort_keys=True).encode()).hexdigest()[:16]


@runtime_checkable
class Generator(Protocol):
    """What the evaluator needs from a model."""

    #: Identifies how messages become prompt text (e.g. a digest of the chat template).
    template_id: str

    def generate(self, prompts: Sequence[Messages]) -> list[str]:
        """One answer per prompt (a list of chat messages)."""
        ...

    def loglik(self, prompts: Sequence[Messages], refs: Sequence[str]) -> list[tuple[float, int]]:
        """(sum of log-probabilities of ``ref`` tokens given the prompt, token count)."""
        ...


def template_digest(tokenizer: Any) -> str:
    tpl = getattr(tokenizer, "chat_template", None)
    if not tpl:
        return FALLBACK_TEMPLATE
    if isinstance(tpl, dict):
        tpl = json.dumps(tpl, sort_keys=True)
    return "chat-" + hashlib.sha256(tpl.encode()).hexdigest()[:16]


def render_prompt(tokenizer: Any, messages: Messages) -> str:
    """Messages -> prompt text, ending where the assistant's answer starts."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    text = "".join(f"{m['role']}: {m['content']}\n" for m in messages)
    return text + "assistant: "


def resolve_device(device: str | None) -> str:
    if device in (None, "", "auto"):
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def load_causal(path: str, device: str | None = None) -> tuple[Any, Any]:
    """(model, tokenizer) ready for batched generation via the train stage's
    loader (PEFT adapters merged; pad token distinct from EOS; left padding)."""
    from bakeoff.train.models import load_causal_lm

    model, tok = load_causal_lm(str(path), device=resolve_device(device))
    _prepare_tokenizer(tok, model)
    return model.eval(), tok


def load_reward(path: str, device: str | None = None) -> tuple[Any, Any]:
    from bakeoff.train.models import load_reward_model

    model, tok = load_reward_model(str(path), device=resolve_device(device))
    _prepare_tokenizer(tok, model)
    return model.eval(), tok


def load_template_id(path: str) -> str:
    """The template id of a checkpoint from its tokenizer alone (no weights
    loaded), so the cache can be consulted before paying for a model load."""
    from pathlib import Path

    from transformers import AutoTokenizer

    from bakeoff.train.models import adapter_base

    src = str(path)
    if not (Path(src) / "tokenizer_config.json").exists():
        src = adapter_base(src) or src
    return template_digest(AutoTokenizer.from_pretrained(src))


def _prepare_tokenizer(tok: Any, model: Any) -> None:
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tok.pad_token_id


class HFGenerator:
    """A transformers causal LM behind the :class:`Generator` protocol."""

    def __init__(self, model: Any, tokenizer: Any, settings: GenerationSettings | None = None):
        self.model = model
        self.tok = tokenizer
        self.settings = settings or GenerationSettings()
        self.template_id = template_digest(tokenizer)
        _prepare_tokenizer(tokenizer, model)

    @classmethod
    def from_path(cls, path: str, settings: GenerationSettings | None = None,
                  device: str | None = None) -> "HFGenerator":
        model, tok = load_causal(path, device)
        return cls(model, tok, settings)

    @property
    def device(self) -> Any:
        return self.model.device

    def environment(self) -> dict[str, Any]:
        """Backend, dtype, device type and library versions (see runner.generation_env)."""
        import torch
        import transformers

        return {"backend": "transformers", "dtype": str(self.model.dtype).replace("torch.", ""),
                "device": self.device.type, "torch": torch.__version__, "transformers": transformers.__version__}

    def _stop_ids(self) -> list[int]:
        """EOS plus the chat template's end-of-turn token, if it has one."""
        ids = set()
        for cand in (self.tok.eos_token_id, getattr(self.model.generation_config, "eos_token_id", None)):
            if isinstance(cand, int):
                ids.add(cand)
            elif isinstance(cand, (list, tuple)):
                ids.update(cand)
        for token in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>"):
            tid = self.tok.convert_tokens_to_ids(token) if token in self.tok.get_vocab() else None
            if isinstance(tid, int):
                ids.add(tid)
        return sorted(ids)

    def context_limit(self) -> int:
        """Prompt tokens that fit: the model's context (``max_position_embeddings``,
        else the tokenizer's limit) minus the tokens to generate."""
        from bakeoff.train.models import max_input_length

        ctx = getattr(self.model.config, "max_position_embeddings", None) or max_input_length(self.tok)
        return max(1, int(ctx) - self.settings.max_new_tokens)

    def generate(self, prompts: Sequence[Messages]) -> list[str]:
        """One answer per prompt. A prompt longer than :meth:`context_limit` is cut
        from the left (the question, at the end, is kept) and flagged in
        ``last_truncated``, so the evaluation can count it instead of a
        transformers warning being the only sign."""
        import torch

        texts = [render_prompt(self.tok, m) for m in prompts]
        limit = self.context_limit()
        lengths = [len(ids) for ids in self.tok(texts, add_special_tokens=False)["input_ids"]]
        self.last_truncated = [n > limit for n in lengths]
        # Batches of similar length waste less compute on padding; answers go back
        # in the caller's order.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        answers: list[str] = [""] * len(texts)
        s = self.settings
        for start in range(0, len(order), s.batch_size):
            idx = order[start:start + s.batch_size]
            side = self.tok.truncation_side
            self.tok.truncation_side = "left"
            try:
                enc = self.tok([texts[i] for i in idx], return_tensors="pt", padding=True, truncation=True,
                               max_length=limit, add_special_tokens=False).to(self.device)
            finally:
                self.tok.truncation_side = side
            kwargs: dict[str, Any] = dict(max_new_tokens=s.max_new_tokens, do_sample=s.do_sample,
                                          use_cache=True, pad_token_id=self.tok.pad_token_id,
                                          eos_token_id=self._stop_ids())
            if s.do_sample:
                torch.manual_seed(s.seed)
                kwargs.update(temperature=s.temperature, top_p=s.top_p)
            else:  # silence "temperature is set but do_sample=False" from model configs
                kwargs.update(temperature=None, top_p=None, top_k=None)
            with torch.inference_mode():
                out = self.model.generate(**enc, **kwargs)
            new = out[:, enc["input_ids"].shape[1]:]
            for i, row in zip(idx, self.tok.batch_decode(new, skip_special_tokens=True)):
                answers[i] = row.strip()
        return answers

    def loglik(self, prompts: Sequence[Messages], refs: Sequence[str]) -> list[tuple[float, int]]:
        import torch

        pad = self.tok.pad_token_id
        seqs = []
        for msgs, ref in zip(prompts, refs):
            p_ids = self.tok(render_prompt(self.tok, msgs), add_special_tokens=False)["input_ids"]
            r_ids = self.tok(ref or "", add_special_tokens=False)["input_ids"]
            seqs.append((p_ids, r_ids))
        results: list[tuple[float, int]] = [(0.0, 0)] * len(seqs)
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i][0]) + len(seqs[i][1]))
        for start in range(0, len(order), self.settings.batch_size):
            idx = order[start:start + self.settings.batch_size]
            width = max(len(seqs[i][0]) + len(seqs[i][1]) for i in idx)
            ids = torch.full((len(idx), width), pad, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            target = torch.zeros((len(idx), width), dtype=torch.bool)
            for row, i in enumerate(idx):  # left padding, as for generation
                p_ids, r_ids = seqs[i]
                full = p_ids + r_ids
                ids[row, width - len(full):] = torch.tensor(full)
                mask[row, width - len(full):] = 1
                target[row, width - len(r_ids):] = True
            ids, mask, target = ids.to(self.device), mask.to(self.device), target.to(self.device)
            # References sit at the end (left padding): only the last k + 1 positions'
            # logits are needed, and the vocabulary-wide softmax over every prompt
            # position was most of the cost of a short reference.
            k = min(width - 1, max(1, max(len(seqs[i][1]) for i in idx)))
            with torch.inference_mode():
                logits = self.model(input_ids=ids, attention_mask=mask, logits_to_keep=k + 1).logits.float()
            logp = torch.log_softmax(logits[:, -(k + 1):-1], dim=-1).gather(-1, ids[:, -k:, None])[..., 0]
            tgt = target[:, -k:]
            sums = (logp * tgt).sum(dim=1).cpu().tolist()
            counts = tgt.sum(dim=1).cpu().tolist()
            for row, i in enumerate(idx):
                results[i] = (float(sums[row]), int(counts[row]))
        return results
