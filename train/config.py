"""Config dataclasses for the trainers, with defaults from fine-tuning practice.

One base, :class:`RunConfig`, holds what every run shares (dataset, model,
experiment, hypothesis, LoRA, device, seed, round, run name); each algorithm
adds its own settings in a config beside its trainer (TRL's layout):
:class:`SFTRunConfig` and :class:`RewardRunConfig` here (they share the
Trainer-based settings of :class:`TrainRunConfig`), ``PPOConfig`` in ppo.py,
``GroupRLConfig`` in rl.py. Every field carries its help text in its metadata;
the CLI options are generated from it (:mod:`bakeoff.train.options`), so a
default and its help exist once. ``sft.py`` and ``reward.py`` translate these
into TRL's ``SFTConfig``/``RewardConfig``; every field is logged as an MLflow
param, so two runs can be compared field by field.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from bakeoff.train.schedule import DEFAULT_LR


def opt(default: Any = None, help: str = "", *, factory: Any = None, cli: bool = True,  # noqa: A002
        flags: tuple[str, ...] = (), choices: tuple[str, ...] = (), param: str | None = None) -> Any:
    """A config field with its CLI help (``cli=False``: not a command-line option;
    ``flags``: extra spellings; ``choices``: allowed values; ``param``: read from
    another field's option, e.g. GRPO's ``beta`` from ``--kl-coef``)."""
    meta = {"help": help, "cli": cli, "flags": flags, "choices": choices}
    if param:
        meta["param"] = param
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class LoraSettings:
    """LoRA on every linear layer: with a small rank this matches full fine-tuning
    closely on narrow domains at a fraction of the memory."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: str | list[str] = "all-linear"


@dataclass
class RunConfig:
    """What every training run shares, whatever the algorithm."""

    dataset: str = opt("", "Dataset version NAME@vN (NAME = latest).")
    model: str = opt("smollm2", "'tiny', 'smollm2', a local directory (or checkpoint) or a hub id.")
    experiment_name: str = opt("default", "MLflow experiment (and folder under runs/).",
                               flags=("--experiment", "--experiment-name", "--experiment_name"))
    hypothesis: str | None = opt(None, "What this run tests (MLflow tag).")
    lora: bool = opt(True, "LoRA adapter (--lora) or full fine-tuning (--full).", flags=("--lora/--full",))
    lora_settings: LoraSettings = opt(factory=LoraSettings, cli=False)
    device: str | None = opt(None, "None: cuda when available, else cpu.", cli=False)
    seed: int = opt(0, "Random seed (set before the model loads: fresh heads and adapters are seeded).")
    resume: bool = opt(False, "Continue the latest run of this kind in the experiment from its last checkpoint.")
    round: int | None = opt(None, "The iteration round this run belongs to (checkpoint metadata, MLflow tag).",
                            cli=False)
    run_name: str | None = opt(None, "MLflow run name.", cli=False)
    extra_tags: dict[str, str] = opt(factory=dict, cli=False)

    @property
    def mode(self) -> str:
        return "lora" if self.lora else "full"

    def to_params(self) -> dict[str, Any]:
        """Flat params for MLflow (nested LoRA settings as ``lora.r`` etc.)."""
        d = asdict(self)
        lora = d.pop("lora_settings")
        d.pop("extra_tags")
        if self.lora:
            d.update({f"lora.{k}": v for k, v in lora.items()})
        return d

    def run_tags(self) -> dict[str, str]:
        """Tags every run gets from its config: the round, and the caller's extras."""
        return {**({"bakeoff.round": str(self.round)} if self.round is not None else {}), **self.extra_tags}


@dataclass
class TrainRunConfig(RunConfig):
    """What the Trainer-based runs (SFT, reward model) share."""

    lr: float | None = opt(None, "Peak LR [default: 2e-4 LoRA, 1e-5 full].")
    epochs: float = opt(1.0, "Passes over the data (more than one triggers a warning).")
    max_steps: int = opt(-1, "Stop after N optimizer steps (> 0 overrides --epochs).")
    warmup: float = opt(0.05, "Warm-up: a fraction of the steps (3-10 %), or a step count when >= 1.")
    hold: float = opt(0.0, "Fraction of steps held at the peak after warm-up.", cli=False)
    lr_floor: float = opt(0.45, "Final LR as a multiple of the peak (linear step-down, not to zero).")
    max_grad_norm: float = opt(1.0, "Gradient clipping.", cli=False)
    weight_decay: float = opt(0.0, "", cli=False)
    batch_size: int = opt(8, "Per-device batch size.")
    grad_accum: int = opt(1, "Gradient accumulation steps.", cli=False)
    max_length: int = opt(1024, "Max tokens per sequence (longer rows are counted and cut or dropped).")
    save_steps: float = opt(0.1, "Checkpoint every N steps (a fraction < 1: of the run); all kept.")
    logging_steps: int = opt(1, "", cli=False)
    subset: float | None = opt(None, "Train on this fraction of the rows first (start small).")

    def peak_lr(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.mode]

    def to_params(self) -> dict[str, Any]:
        return {**super().to_params(), "lr": self.peak_lr()}


@dataclass
class SFTRunConfig(TrainRunConfig):
    """Supervised fine-tuning: loss on assistant tokens only, packed samples kept apart."""

    assistant_only_loss: bool = opt(True, "Loss on the assistant's tokens only (mask from the chat template).",
                                    flags=("--assistant-only-loss/--no-assistant-only-loss",))
    packing: bool = opt(True, "Pack samples (kept apart by position ids; on CPU one pack per forward pass).",
                        flags=("--packing/--no-packing",))


@dataclass
class RewardRunConfig(TrainRunConfig):
    """Reward model: sequence classification with one output, Bradley-Terry loss."""

    eval_fraction: float = opt(0.1, "Share of prompts held out for pairwise accuracy.")
    center_rewards_coefficient: float | None = opt(0.01, "Keeps rewards near zero (TRL's auxiliary loss).",
                                                   cli=False)
    max_length: int = opt(1024, "Max tokens per prompt + answer (longer pairs are counted and dropped).")
    save_steps: float = opt(0.25, "Checkpoint every N steps (a fraction < 1: of the run); all kept.")


@dataclass
class RLRunConfig(RunConfig):
    """What PPO, GRPO and RLOO share: the policy is ``model`` (an SFT
    checkpoint), the prompts are ``dataset``, scored by ``reward_model``."""

    reward_model: str = opt("", "Reward model checkpoint directory.", flags=("--reward", "--reward-model"))
    force: bool = opt(False, "Run even when the policy has no SFT run behind it.")
    max_prompt_length: int = opt(512, "Longest prompt in tokens (longer prompts lose their start; counted).")
    learning_rate: float = opt(5e-5, "Peak learning rate (LoRA policy; PPO: and value head).", flags=("--lr",))
    warmup_steps: float = opt(0.05, "Warm-up (< 1: a fraction of the optimizer steps).", flags=("--warmup",))
    lr_floor: float = opt(0.45, "Final LR as a multiple of the peak (linear step-down, not to zero).")
    max_grad_norm: float = opt(1.0, "", cli=False)
    temperature: float = opt(0.7, "Sampling temperature (plain: the model's generation config is not used).")
    max_new_tokens: int = opt(64, "Longest response.")
    missing_eos_penalty: float | None = opt(1.0, "Subtracted from the score of a response that never emits EOS.")
    normalize_scores: bool = opt(True, "", cli=False)  # with the reward checkpoint's reward_stats.json
    lora_settings: LoraSettings = opt(factory=lambda: LoraSettings(dropout=0.0), cli=False)

    def validate_run(self) -> None:
        from bakeoff.workspace import BakeoffError

        if not self.lora:
            raise BakeoffError("RL here trains a LoRA adapter (the reference is the model without it); "
                               "--full is not supported")
