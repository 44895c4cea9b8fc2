"""Small synthetic datasets for the training tests (not a test module)."""

from __future__ import annotations

import random

import polars as pl

from bakeoff.schema import conform, with_ids


def _msg(role: str, content: str) -> dict:
    return {"role": role, "content": content}


def sft_rows(n: int = 64, seed: int = 0) -> pl.DataFrame:
    """Short Q/A conversations with a learnable pattern (copy a word, add numbers)."""
    rng = random.Random(seed)
    words = ["revenue", "profit", "invoice", "total", "cost", "balance", "account", "price"]
    rows = []
    for i in range(n):
        if i % 2:
            a, b = rng.randint(1, 9), rng.randint(1, 9)
            q, ans = f"What is {a} + {b}?", f"The answer is {a + b}."
        else:
            w = rng.choice(words)
            q, ans = f"Repeat the word {w}.", f"{w} {w}"
        rows.append({"kind": "sft", "messages": [_msg("user", q), _msg("assistant", ans)],
                     "domain": "finance-tables", "task": "qa"})
    return with_ids(conform(pl.DataFrame(rows)))


def pref_rows(n: int = 80, seed: int = 0) -> pl.DataFrame:
    """Separable preference pairs: chosen answers talk about the table, rejected refuse."""
    rng = random.Random(seed)
    words = ["revenue", "profit", "invoice", "total", "cost", "balance"]
    rows = []
    for i in range(n):
        w = rng.choice(words)
        rows.append({"kind": "preference", "messages": [_msg("user", f"What is the {w} in row {i}?")],
                     "chosen": [_msg("assistant", f"The {w} is {rng.randint(10, 999)}.")],
                     "rejected": [_msg("assistant", "no no no no no no")],
                     "domain": "finance-tables"})
    return with_ids(conform(pl.DataFrame(rows)))


def commit(ws, name: str, df: pl.DataFrame) -> str:
    v = ws.commit_version(name, df, operation="test")
    return v.ref


def lora(r: int, alpha: int, dropout: float = 0.0):
    """LoRA settings for the RL tests' small adapters."""
    from bakeoff.train.config import LoraSettings

    return LoraSettings(r=r, alpha=alpha, dropout=dropout)
