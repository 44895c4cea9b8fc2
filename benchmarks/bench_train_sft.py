"""SFT throughput: tokens/s with packing vs without, on short samples.

Both modes train one epoch over the same conversations with the same batch
size; "tokens" are real (non-padding) tokens, so the figure is useful work per
second. Without packing every batch is padded to its longest sample; with BFD
packing samples are laid end to end (padding-free, per-sample position ids), so
each step carries up to ``batch_size x max_length`` real tokens and there are far
fewer steps. TRL's padding-free collator joins a whole batch of packs into one
row, and attention over that row is quadratic in its length unless a
variable-length kernel (flash-attention) skips the blocks between samples; so
the third variant runs one pack per forward pass and accumulates gradients to
the same batch. Ratios are against no packing, measured side by side.

    .venv/bin/python benchmarks/bench_train_sft.py                # tiny model, CPU
    .venv/bin/python benchmarks/bench_train_sft.py --model smollm2 --rows 400
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from contextlib import redirect_stdout

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def short_conversations(n: int, seed: int = 0) -> list[dict]:
    """Short chat samples of uneven length (most short, a few longer): the case
    where padding wastes most of a batch."""
    rng = random.Random(seed)
    words = ("revenue profit invoice total cost balance account price quantity customer the of and "
             "is for in table row column year growth rate net income").split()
    out = []
    for _ in range(n):
        q_len = rng.choice([4, 6, 8, 10, 12, 40])
        a_len = rng.choice([1, 2, 3, 5, 8, 60])
        q = " ".join(rng.choice(words) for _ in range(q_len)) + "?"
        a = " ".join(rng.choice(words) for _ in range(a_len)) + "."
        out.append({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
    return out


def run(model_path: str, rows: list[dict], packing: bool, batch_size: int, max_length: int,
        device: str, packs_per_forward: int | None = None) -> dict[str, float]:
    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from bakeoff.train.models import load_causal_lm

    model, tok = load_causal_lm(model_path, device=device)
    model.train()
    counted = {"tokens": 0, "padded": 0}


    # packs_per_forward: packed rows concatenated into one forward pass (TRL's
    # padding-free collator joins the whole batch); the rest of the batch goes
    # through gradient accumulation, so each optimizer step sees the same samples.
    per_forward = packs_per_forward or batch_size
    args = SFTConfig(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=per_forward,
                     gradient_accumulation_steps=max(1, batch_size // per_forward), num_train_epochs=1, learning_rate=1e-4, max_length=max_length, packing=packing,
                     packing_strategy="bfd", padding_free=packing, assistant_only_loss=True,
                     save_strategy="no", logging_steps=10_000, report_to="none", seed=0,
                     use_cpu=device == "cpu", disable_tqdm=True, dataloader_num_workers=0,
                     bf16=device.startswith("cuda") and torch.cuda.is_bf16_supported())
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=tok)
    # Count real and padded tokens from the exact batches the trainer will see.
    for batch in trainer.get_train_dataloader():
        ids = batch["input_ids"]
        counted["padded"] += ids.numel()
        counted["tokens"] += int(batch["attention_mask"].sum()) if "attention_mask" in batch else ids.numel()
    with redirect_stdout(sys.stderr):
        t0 = time.perf_counter()
        out = trainer.train()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
    return {"seconds": dt, "steps": out.global_step, "tokens": counted["tokens"],
            "padded": counted["padded"], "tokens_per_s": counted["tokens"] / dt}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--rows", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--device", default=None)
    a = ap.parse_args()

    from bakeoff.train.models import pick_device, resolve_model

    os.environ.setdefault("BAKEOFF_MODEL_CACHE", os.path.expanduser("~/.cache/bakeoff/models"))
    path = resolve_model(a.model)
    device = pick_device(a.device)
    rows = short_conversations(a.rows)
    print(f"SFT throughput: model={a.model} device={device} rows={a.rows} batch={a.batch_size} "
          f"max_length={a.max_length}")
    variants = {"no packing": dict(packing=False),
                f"packing, {a.batch_size} packs/forward": dict(packing=True),
                "packing, 1 pack/forward": dict(packing=True, packs_per_forward=1)}
    res = {name: run(path, rows, batch_size=a.batch_size, max_length=a.max_length, device=device, **kw)
           for name, kw in variants.items()}
    names = list(res)
    print(f"{'':<22}" + "".join(f"{n:>28}" for n in names))
    for key, fmt in (("steps", "{:>28}"), ("tokens", "{:>28}"), ("padded", "{:>28}"), ("seconds", "{:>28.2f}"),
                     ("tokens_per_s", "{:>28.0f}")):
        print(f"{key:<22}" + "".join(fmt.format(res[n][key]) for n in names))
    base = res["no packing"]["tokens_per_s"]
    for n in names[1:]:
        print(f"{n}: {res[n]['tokens_per_s'] / base:.2f}x the tokens/s of no packing")


if __name__ == "__main__":
    main()
