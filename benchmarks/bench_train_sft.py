"""SFT throughput: tokens/s with packing vs without, on short samples.

Both modes train one epoch over the same conversations with the same batch
size; "tokens" are real (non-padding) tokens, so the figure is useful work per
second. Without packing every batch is padded to its longest sample; with BFD
packing samples are laid end to end (padding-free, per-sample position ids), so
each step carries up to ``batch_size x max_length`` real tokens and there are far
fewer steps. Target: packing >= 2x.

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
        device: str) -> dict[str, float]:
    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from bakeoff.train.models import load_causal_lm

    model, tok = load_causal_lm(model_path, device=device)
    model.train()
    counted = {"tokens": 0, "padded": 0}


    args = SFTConfig(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=batch_size,
                     num_train_epochs=1, learning_rate=1e-4, max_length=max_length, packing=packing,
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
    res = {}
    for packing in (False, True):
        res[packing] = run(path, rows, packing, a.batch_size, a.max_length, device)
    nop, pk = res[False], res[True]
    print(f"{'':<22}{'no packing':>14}{'packing (bfd)':>16}")
    print(f"{'steps':<22}{nop['steps']:>14}{pk['steps']:>16}")
    print(f"{'real tokens':<22}{nop['tokens']:>14}{pk['tokens']:>16}")
    print(f"{'padded tensor tokens':<22}{nop['padded']:>14}{pk['padded']:>16}")
    print(f"{'seconds':<22}{nop['seconds']:>14.2f}{pk['seconds']:>16.2f}")
    print(f"{'tokens/s':<22}{nop['tokens_per_s']:>14.0f}{pk['tokens_per_s']:>16.0f}")
    ratio = pk["tokens_per_s"] / nop["tokens_per_s"]
    print(f"packing speed-up: {ratio:.2f}x (target >= 2x) {'OK' if ratio >= 2 else 'BELOW TARGET'}")


if __name__ == "__main__":
    main()
