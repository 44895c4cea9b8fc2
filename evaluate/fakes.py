"""Stand-ins for tests and benchmarks: a scripted generator that answers from a
table, and tiny randomly initialised Llama checkpoints built offline.

The scripted generator implements the same :class:`~bakeoff.evaluate.generate.Generator`
protocol as the real backend, so the whole evaluate pipeline (cache, resume,
scoring, ranking) runs in milliseconds without a model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from bakeoff.evaluate.generate import Messages


class GeneratorInterrupted(RuntimeError):
    """Raised by :class:`ScriptedGenerator` after ``fail_after`` batches."""


def last_user(messages: Messages) -> str:
    users = [m["content"] for m in messages if m["role"] == "user"]
    return users[-1] if users else ""


class ScriptedGenerator:
    """Answers each prompt from ``answers`` (keyed by the last user message),
    ``default`` otherwise. Counts calls and generated prompts; raises
    :class:`GeneratorInterrupted` on batch number ``fail_after + 1``."""

    def __init__(self, answers: Mapping[str, str] | Callable[[str], str], default: str = "",
                 template_id: str = "scripted-v1", fail_after: int | None = None,
                 loglik_fn: Callable[[str, str], float] | None = None):
        self.answers = answers
        self.default = default
        self.template_id = template_id
        self.fail_after = fail_after
        self.loglik_fn = loglik_fn
        self.batches = 0
        self.generated: list[str] = []

    def _answer(self, question: str) -> str:
        if callable(self.answers):
            return self.answers(question)
        return self.answers.get(question, self.default)

    def generate(self, prompts: Sequence[Messages]) -> list[str]:
        if self.fail_after is not None and self.batches >= self.fail_after:
            raise GeneratorInterrupted(f"scripted failure after {self.batches} batches")
        self.batches += 1
        questions = [last_user(p) for p in prompts]
        self.generated.extend(questions)
        return [self._answer(q) for q in questions]

    def loglik(self, prompts: Sequence[Messages], refs: Sequence[str]) -> list[tuple[float, int]]:
        out = []
        for p, r in zip(prompts, refs):
            n = max(1, len((r or "").split()))
            if self.loglik_fn is not None:
                out.append((float(self.loglik_fn(last_user(p), r)), n))
            else:  # a model that would say the reference gets a higher likelihood
                out.append((0.0 if self._answer(last_user(p)) == r else -2.0 * n, n))
        return out


# --- tiny real models ---------------------------------------------------------------

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_tokenizer() -> Any:
    """A byte-level tokenizer (256 byte tokens + specials) with a ChatML template,
    built offline with the `tokenizers` library."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {ch: i for i, ch in enumerate(bytes_to_unicode().values())}
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tk.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|bos|>", eos_token="<|eos|>",
                                  pad_token="<|pad|>",
                                  additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    tok.chat_template = CHAT_TEMPLATE
    tok.padding_side = "left"
    return tok


def save_tiny_causal_lm(path: str | Path, seed: int = 0, hidden: int = 32, layers: int = 2,
                        checkpoint: Mapping[str, Any] | None = None) -> Path:
    """Save a randomly initialised tiny Llama (+ tokenizer) to ``path``; models with
    different ``seed`` have identical configs and different weights. With
    ``checkpoint``, also write ``bakeoff_checkpoint.json``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    path = Path(path)
    tok = tiny_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=1024, pad_token_id=tok.pad_token_id,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    if checkpoint is not None:
        (path / "bakeoff_checkpoint.json").write_text(json.dumps(dict(checkpoint), indent=2))
    return path


def commit_testset(ws: Any, name: str, items: Sequence[Mapping[str, Any]], with_columns: bool = True) -> Any:
    """Commit a small test set: each item has ``question``, ``reference`` and
    optionally ``slice``, ``task``, ``domain``, ``scoring`` (dict). With
    ``with_columns=False`` the test-set columns are left out (a hand-made set)."""
    import polars as pl

    from bakeoff.schema import conform, with_ids

    rows = {
        "kind": ["sft"] * len(items),
        "messages": [[{"role": "user", "content": it["question"]},
                      {"role": "assistant", "content": it["reference"]}] for it in items],
        "domain": [it.get("domain", "") for it in items],
        "task": [it.get("task", "qa") for it in items],
    }
    if with_columns:
        rows["slice"] = [it.get("slice", "in-domain") for it in items]
        rows["reference"] = [it["reference"] for it in items]
        rows["scoring"] = [json.dumps(it.get("scoring", {"method": "exact"})) for it in items]
    return ws.commit_version(name, with_ids(conform(pl.DataFrame(rows))), operation="test-fixture")
