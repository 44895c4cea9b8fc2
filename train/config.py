"""Config dataclasses for the trainers, with defaults from fine-tuning practice.

These are bakeoff's own settings (what a person chooses); ``sft.py`` and
``reward.py`` translate them into TRL's ``SFTConfig``/``RewardConfig``. Every
field is logged as an MLflow param, so two runs can be compared field by field.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from bakeoff.train.schedule import DEFAULT_LR


@dataclass
class LoraSettings:
    """LoRA on every linear layer: with a small rank this matches full fine-tuning
    closely on narrow domains at a fraction of the memory."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: str | list[str] = "all-linear"


@dataclass
class TrainRunConfig:
    """What every training run shares."""

    dataset: str = ""                 # NAME@vN
    model: str = "smollm2"            # 'tiny', 'smollm2', a local dir or a hub id
    experiment_name: str = "default"
    lora: bool = True                 # False: full fine-tuning
    lora_settings: LoraSettings = field(default_factory=LoraSettings)
    lr: float | None = None           # None: 1e-5 full, 2e-4 LoRA
    epochs: float = 1.0               # one pass; more triggers a warning
    max_steps: int = -1               # > 0 overrides epochs
    warmup: float = 0.05              # fraction of steps (3-10 %), or a step count when >= 1
    hold: float = 0.0                 # fraction of steps held at the peak after warm-up
    lr_floor: float = 0.45            # the LR ends at this multiple of the peak, not zero
    max_grad_norm: float = 1.0        # gradient clipping on
    weight_decay: float = 0.0
    batch_size: int = 8
    grad_accum: int = 1
    max_length: int = 1024
    save_steps: float = 0.1           # a checkpoint every 10 % of the steps (or every N when >= 1); all kept
    logging_steps: int = 1
    subset: float | None = None       # train on this fraction of the rows first ("start small")
    seed: int = 0
    hypothesis: str | None = None
    resume: bool = False
    device: str | None = None         # None: cuda when available, else cpu
    extra_tags: dict[str, str] = field(default_factory=dict)

    @property
    def mode(self) -> str:
        return "lora" if self.lora else "full"

    def peak_lr(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.mode]

    def to_params(self) -> dict[str, Any]:
        """Flat params for MLflow (nested dataclasses as ``lora.r`` etc.)."""
        d = asdict(self)
        lora = d.pop("lora_settings")
        d.pop("extra_tags")
        d["lr"] = self.peak_lr()
        if self.lora:
            d.update({f"lora.{k}": v for k, v in lora.items()})
        return d


@dataclass
class SFTRunConfig(TrainRunConfig):
    """Supervised fine-tuning: loss on assistant tokens only, packed samples kept apart."""

    assistant_only_loss: bool = True
    packing: bool = True              # BFD packing, padding-free with per-sample position ids


@dataclass
class RewardRunConfig(TrainRunConfig):
    """Reward model: sequence classification with one output, Bradley-Terry loss."""

    eval_fraction: float = 0.1        # held out for pairwise accuracy
    center_rewards_coefficient: float | None = 0.01  # keeps rewards near zero (TRL's auxiliary loss)
    max_length: int = 1024
    save_steps: float = 0.25
