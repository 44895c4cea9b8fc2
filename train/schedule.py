"""Learning-rate practice: warm-up, (optional hold), linear step-down to a floor.

Why this shape: a short warm-up (3-10 % of the steps) keeps the first updates
from wrecking the pre-trained weights while Adam's moment estimates are still
noise; decaying linearly to a *floor* (about 0.4-0.5x the peak) rather than to
zero keeps the last part of the run learning instead of spending it at an LR too
small to move anything. ``warmup_schedule`` is a plain function of the step, so
the same numbers drive the Trainer (``LambdaLR``), the tests and the monitor's
notion of "the LR is at its peak".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from bakeoff.console import warn

#: The usual peak-LR ranges (AdamW): full fine-tuning about 1e-5; LoRA about 1e-4-2e-4.
LR_RANGES: dict[str, tuple[float, float]] = {"full": (3e-6, 5e-5), "lora": (5e-5, 5e-4)}
DEFAULT_LR: dict[str, float] = {"full": 1e-5, "lora": 2e-4}


@dataclass(frozen=True)
class Schedule:
    """Multiplier of the peak LR as a function of the optimizer step (0-based)."""

    total_steps: int
    warmup_steps: int
    hold_steps: int = 0
    floor: float = 0.45

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps  # reaches the peak on the last warm-up step
        s = step - self.warmup_steps
        if s < self.hold_steps:
            return 1.0
        decay_steps = self.total_steps - self.warmup_steps - self.hold_steps
        if decay_steps <= 0:
            return 1.0
        # the first step after warm-up/hold is already one decrement below the
        # peak; the last step lands exactly on the floor
        progress = min(1.0, (s - self.hold_steps + 1) / decay_steps)
        return 1.0 - (1.0 - self.floor) * progress

    def at_peak(self, step: int, ratio: float = 0.8) -> bool:
        """Whether the LR at ``step`` is within ``ratio`` of the peak (the end of
        warm-up, any hold, and the start of the step-down)."""
        return self(step) >= ratio


def make_schedule(total_steps: int, warmup: float = 0.05, hold: float = 0.0,
                  floor: float = 0.45) -> Schedule:
    """``warmup``/``hold``: fractions of ``total_steps`` (or step counts when >= 1)."""
    total_steps = max(1, int(total_steps))

    def steps(x: float) -> int:
        return int(x) if x >= 1 else int(math.ceil(x * total_steps))

    w = min(total_steps, max(1 if warmup > 0 else 0, steps(warmup)))
    return Schedule(total_steps=total_steps, warmup_steps=w, hold_steps=steps(hold), floor=floor)


def lambda_lr(optimizer: Any, schedule: Schedule) -> Any:
    """A ``torch.optim.lr_scheduler.LambdaLR`` following ``schedule``."""
    from torch.optim.lr_scheduler import LambdaLR

    return LambdaLR(optimizer, schedule)


def check_lr_practice(lr: float, mode: str, epochs: float, warmup: float, floor: float) -> list[str]:
    """Warnings (printed and returned) when settings stray from usual practice."""
    msgs: list[str] = []
    lo, hi = LR_RANGES[mode]
    if not lo <= lr <= hi:
        msgs.append(f"peak LR {lr:g} is outside the usual range for {mode} fine-tuning "
                    f"({lo:g}-{hi:g}; about {DEFAULT_LR[mode]:g} is typical)")
    if epochs > 1:
        msgs.append(f"{epochs:g} epochs: more than one pass usually means the data set is too small "
                    "for the objective (and invites memorisation); consider more data instead")
    if 0 < warmup < 1 and not 0.03 <= warmup <= 0.10:
        msgs.append(f"warm-up {warmup:.0%} of the steps: 3-10% is usual")
    if not 0.3 <= floor <= 0.6:
        msgs.append(f"LR floor {floor:g}x peak: about 0.4-0.5x is usual (decaying to zero wastes the tail)")
    for m in msgs:
        warn(m)
    return msgs
