"""Why SFT of the tiny model is ~10x slower a step on TAT-QA than in the quick demo (CPU).

    .venv/bin/python benchmarks/bench_sft_packing_cpu.py

One forward + backward of the tiny model (LoRA on every linear layer, as SFT
trains it) on the token layouts SFT feeds it, in CPU seconds (process time, one
thread, each layout three times interleaved, the minimum kept), printed as
ratios to the quick demo's layout:

- quick demo: batch 8 rows of 256 tokens, packed padding-free (one sequence of
  2,048 tokens whose position ids restart at each row: TRL's BFD packing);
- TAT-QA: 8 rows that fill ``max_length`` 1024 (its rows average 1,318 tokens of
  the tiny tokenizer), packed padding-free as above, and not packed (a padded
  8 x 1024 batch).

On a CPU, attention over the padding-free sequence runs as SDPA with a dense
block-diagonal mask over the whole packed batch, so its cost grows with the
square of the batch's tokens; the padded batch costs 8 x 1024^2. The README
("Why SFT on long rows is slow on a CPU") has the figures and the profile.
"""

from __future__ import annotations

import json
import tempfile
import time

import torch


def main() -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from bakeoff.train.models import resolve_model
    from bakeoff.workspace import Workspace

    torch.set_num_threads(1)
    torch.manual_seed(0)
    ws = Workspace(tempfile.mkdtemp(prefix="bench-packing-"))
    model = AutoModelForCausalLM.from_pretrained(resolve_model("tiny", ws))
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear",
                                             task_type="CAUSAL_LM"))
    vocab = model.config.vocab_size

    def packed(rows: int, length: int) -> dict[str, torch.Tensor]:
        ids = torch.randint(0, vocab, (1, rows * length))
        return {"input_ids": ids, "position_ids": torch.arange(length).repeat(rows)[None], "labels": ids}

    def padded(rows: int, length: int) -> dict[str, torch.Tensor]:
        ids = torch.randint(0, vocab, (rows, length))
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}

    layouts = {
        "quick demo: packed padding-free, 8 x 256": packed(8, 256),
        "TAT-QA: packed padding-free, 8 x 1024": packed(8, 1024),
        "TAT-QA: not packed, 8 x 1024": padded(8, 1024),
    }
    seconds: dict[str, list[float]] = {k: [] for k in layouts}
    for _ in range(3):
        for name, batch in layouts.items():
            t0 = time.process_time()
            model(**batch).loss.backward()
            seconds[name].append(time.process_time() - t0)
    base = min(seconds["quick demo: packed padding-free, 8 x 256"])
    print(f"attention: {model.config._attn_implementation}; torch threads: {torch.get_num_threads()}")
    for name, s in seconds.items():
        print(json.dumps({"layout": name, "cpu_s": round(min(s), 3), "x_quick_demo": round(min(s) / base, 1)}))


if __name__ == "__main__":
    main()
