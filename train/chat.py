"""Chat templates as users' models ship them: the assistant-only loss mask for
any template, templates without a system role, and the exact token sequence a
reward model reads.

Why bakeoff computes the assistant mask itself: TRL masks assistant turns with
``{% generation %}`` markers, which almost no released template has; for the
rest it swaps in a patched copy, but only for templates it recognises by exact
string (``trl.chat_template_utils.get_training_chat_template``). Of the
templates our fixtures carry, TRL patches Llama 3 (``llama3.jinja``), Qwen2.5
(``qwen2_5.jinja``) and Gemma (``gemma.jinja``); SmolLM2's own template (from
its GGUF), Mistral-Instruct v0.1 and any edited template raise "not
training-compatible … patching is not supported". The method here needs no
markers: render the conversation's growing prefixes and take the characters
each assistant turn adds after its generation prompt (its content and its
end-of-turn token, not the whitespace the template writes after that), then
map the characters to tokens with the tokenizer's offsets. Where TRL has a
patched template, tests check that both masks agree token for token.

A template whose prefixes are not preserved (a later turn re-renders an
earlier one), or that writes no end-of-turn token after the assistant's
content, cannot give a trustworthy mask: that is a one-line error saying what
to do.
"""

from __future__ import annotations

from typing import Any, Sequence

from bakeoff.workspace import BakeoffError

Messages = Sequence[dict[str, Any]]


class ChatTemplateError(BakeoffError):
    """The template can't give an assistant mask (or can't render the conversation)."""


def _plain(messages: Messages) -> list[dict[str, str]]:
    return [{"role": str(m["role"]), "content": str(m.get("content") or "")} for m in messages]


_SYSTEM_OK: dict[str, bool] = {}  # template text -> accepts a system turn


def supports_system_role(tok: Any) -> bool:
    """Whether the tokenizer's chat template accepts a system turn (Gemma's and
    Mistral-Instruct v0.1's raise on one)."""
    key = str(tok.chat_template)
    if key not in _SYSTEM_OK:
        probe = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
        try:
            tok.apply_chat_template(probe, tokenize=False)
            _SYSTEM_OK[key] = True
        except Exception:  # jinja's TemplateError from raise_exception(), or whatever the template trips on
            _SYSTEM_OK[key] = False
    return _SYSTEM_OK[key]


def conform_messages(tok: Any, messages: Messages) -> list[dict[str, str]]:
    """The conversation as this template can render it. A template without a
    system role gets the system text prepended to the first user turn (what
    the model's authors recommend for Gemma and Mistral)."""
    msgs = _plain(messages)
    if not msgs or msgs[0]["role"] != "system" or supports_system_role(tok):
        return msgs
    system, rest = msgs[0]["content"], msgs[1:]
    if rest and rest[0]["role"] == "user":
        rest[0] = {"role": "user", "content": f"{system}\n\n{rest[0]['content']}" if system else rest[0]["content"]}
        return rest
    return [{"role": "user", "content": system}, *rest] if system else rest


def render(tok: Any, messages: Messages, add_generation_prompt: bool = False) -> str:
    """The template's text for ``messages`` (conformed), or a one-line error."""
    try:
        return tok.apply_chat_template(conform_messages(tok, messages), tokenize=False,
                                       add_generation_prompt=add_generation_prompt)
    except BakeoffError:
        raise
    except Exception as exc:  # a template's raise_exception() or a jinja error
        raise ChatTemplateError(f"the chat template cannot render this conversation: {exc}") from None


def _end_tokens(tok: Any) -> list[str]:
    """Strings that can close an assistant turn: EOS and the tokenizer's added tokens."""
    ends = set(getattr(tok, "all_special_tokens", []) or [])
    ends.update(tok.get_added_vocab().keys())
    if tok.eos_token:
        ends.add(tok.eos_token)
    return sorted((e for e in ends if e), key=len, reverse=True)


def assistant_char_spans(tok: Any, messages: Messages) -> tuple[str, list[tuple[int, int]]]:
    """(full text, [(start, end)] character spans of each assistant turn's output)."""
    msgs = conform_messages(tok, messages)
    full = tok.apply_chat_template(msgs, tokenize=False)
    ends = _end_tokens(tok)
    spans = []
    for i, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        before = tok.apply_chat_template(msgs[:i], tokenize=False, add_generation_prompt=True) if i else ""
        upto = tok.apply_chat_template(msgs[:i + 1], tokenize=False)
        if not (full.startswith(upto) and upto.startswith(before)):
            raise ChatTemplateError(
                "the chat template is not prefix-preserving (rendering a conversation changes its earlier turns), "
                "so the assistant tokens can't be located: use a template that renders earlier turns "
                "identically, add {% generation %} markers to it, or pass --no-assistant-only-loss")
        start, end = len(before), len(upto.rstrip())
        turn = upto[start:end]
        if not any(turn.endswith(e) for e in ends):
            raise ChatTemplateError(
                "the chat template writes no end-of-turn token after the assistant's answer, so the model "
                "would never learn to stop: use a template that closes assistant turns with EOS or an "
                "end-of-turn token, or pass --no-assistant-only-loss")
        if m["content"].strip() and m["content"].strip() not in turn:
            raise ChatTemplateError(
                "the chat template does not render the assistant's content after its generation prompt: "
                "add {% generation %} markers to the template, or pass --no-assistant-only-loss")
        spans.append((start, end))
    return full, spans


def tokenize_with_assistant_mask(tok: Any, messages: Messages) -> tuple[list[int], list[int]]:
    """(input_ids, assistant_mask): the conversation tokenized as the template
    renders it, 1 on every token the assistant writes (its end-of-turn token
    included)."""
    full, spans = assistant_char_spans(tok, messages)
    if not getattr(tok, "is_fast", False):
        raise ChatTemplateError("the assistant mask needs a fast tokenizer (character offsets); "
                                "save the model's tokenizer.json or pass --no-assistant-only-loss")
    enc = tok(full, add_special_tokens=False, return_offsets_mapping=True)
    mask = [0] * len(enc["input_ids"])
    for j, (s, e) in enumerate(enc["offset_mapping"]):
        if e > s and any(a <= s < b for a, b in spans):
            mask[j] = 1
    return list(enc["input_ids"]), mask


def prompt_ids(tok: Any, prompt: Messages) -> list[int]:
    """The prompt with the generation prompt, as the policy sees it when sampling."""
    return list(tok(render(tok, prompt, add_generation_prompt=True), add_special_tokens=False)["input_ids"])


def reward_sequence(tok: Any, prompt: Messages | str, response: str | Messages) -> list[int]:
    """Exactly the token sequence a reward model was trained on for (prompt,
    response): TRL's RewardTrainer tokenizes ``apply_chat_template(prompt +
    [assistant answer])``, and a sequence classifier scores its last token (for
    ChatML the template's ``\\n`` after ``<|im_end|>``). Reward statistics,
    evaluation, PPO, GRPO and RLOO all score through this one function."""
    if isinstance(prompt, str):
        text = response if isinstance(response, str) else "".join(m["content"] for m in response)
        return list(tok(prompt + text, add_special_tokens=False)["input_ids"])
    answer = [{"role": "assistant", "content": response}] if isinstance(response, str) else _plain(response)
    conv = [*_plain(prompt), *answer]
    if not getattr(tok, "chat_template", None):
        text = "\n".join(f"{m['role']}: {m['content']}" for m in conv)
        return list(tok(text, add_special_tokens=True)["input_ids"])
    return list(tok(render(tok, conv), add_special_tokens=False)["input_ids"])


def score_sequences(model: Any, tok: Any, sequences: Sequence[list[int]], batch_size: int = 16,
                    max_length: int | None = None) -> list[float]:
    """The reward model's score at the last token of each sequence (left padded
    in batches; sequences longer than ``max_length`` keep their end)."""
    import torch

    from bakeoff.train.ppo import scores_at

    device = next(model.parameters()).device
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    was_training = model.training
    model.eval()
    out: list[float] = []
    try:
        with torch.no_grad():
            for i in range(0, len(sequences), batch_size):
                chunk = [list(s)[-max_length:] if max_length else list(s) for s in sequences[i:i + batch_size]]
                width = max(len(s) for s in chunk)
                ids = torch.full((len(chunk), width), pad, dtype=torch.long)
                am = torch.zeros((len(chunk), width), dtype=torch.long)
                for r, s in enumerate(chunk):
                    if s:
                        ids[r, width - len(s):] = torch.tensor(s)
                        am[r, width - len(s):] = 1
                last = torch.full((len(chunk),), width - 1, device=device)
                out.extend(scores_at(model, ids.to(device), am.to(device), last).tolist())
    finally:
        model.train(was_training)
    return out


def score_responses(model: Any, tok: Any, prompts: Sequence[Messages | str], responses: Sequence[str | Messages],
                    batch_size: int = 16, max_length: int | None = None) -> list[float]:
    """Raw reward-model scores of (prompt, response) pairs through :func:`reward_sequence`."""
    seqs = [reward_sequence(tok, p, r) for p, r in zip(prompts, responses)]
    return score_sequences(model, tok, seqs, batch_size, max_length)
