"""GRPO and RLOO through TRL, with the same reward model PPO uses.

Both sample several completions per prompt and use the group as the baseline
instead of a value head (GRPO: reward minus the group mean, over its std; RLOO:
minus the mean of the *other* completions), so they need no value model and are
the cheaper alternatives to :mod:`bakeoff.train.ppo`. The policy is the SFT model
with a LoRA adapter; with ``beta > 0`` TRL uses the same model with the adapter
disabled as the reference, as PPO here does.

The reward model is wrapped as a reward *function* (not passed to TRL as a
model) so its scores are normalised with the checkpoint's ``reward_stats.json``
and responses that never end (no EOS) lose ``missing_eos_penalty``, exactly as
in PPO: the three algorithms then optimise the same number.

Checkpoints: TRL saves LoRA adapters; each is re-written as merged full weights
(the adapter kept in ``adapter/``) plus ``bakeoff_checkpoint.json``, because the
adapter's base is the merged SFT model, which exists nowhere on disk when the
SFT checkpoint was itself an adapter.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal

from bakeoff.workspace import BakeoffError

if TYPE_CHECKING:
    from bakeoff.workspace import Workspace

ALGORITHMS = ("ppo", "grpo", "rloo")


@dataclass
class GroupRLConfig:
    """Settings shared by GRPO and RLOO (TRL's names where they have one)."""

    algorithm: Literal["grpo", "rloo"] = "grpo"
    steps: int = 100                 # optimizer steps (max_steps)
    batch_size: int = 16             # completions per step (prompts x num_generations)
    num_generations: int = 4         # completions per prompt: the group
    learning_rate: float = 5e-5
    warmup_steps: float = 0.05
    lr_floor: float = 0.45
    max_grad_norm: float = 1.0
    temperature: float = 0.7
    max_new_tokens: int = 64
    beta: float = 0.05               # KL coefficient (0: no reference pass)
    epsilon: float = 0.2             # clip range
    num_iterations: int = 1
    missing_eos_penalty: float | None = 1.0
    normalize_scores: bool = True
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_target_modules: str | list[str] = "all-linear"
    save_steps: int = 0              # 0: at the end only
    seed: int = 0
    device: str | None = None

    def validate(self) -> None:
        if self.algorithm not in ("grpo", "rloo"):
            raise BakeoffError(f"algorithm must be grpo or rloo here, not {self.algorithm!r}")
        if self.num_generations < 2:
            raise BakeoffError("num_generations must be >= 2: the group is the baseline")
        if self.batch_size % self.num_generations:
            raise BakeoffError(f"batch_size ({self.batch_size}) must be a multiple of "
                               f"num_generations ({self.num_generations})")


class RewardModelFunction:
    """A TRL reward function backed by a sequence-classification reward model.

    Scores the chat-templated prompt + completion at its last token, exactly as
    the reward model was trained (:func:`bakeoff.train.chat.reward_sequence`), normalises with
    ``stats`` and subtracts ``missing_eos_penalty`` for completions TRL reports
    as not ending in EOS (truncated at ``max_completion_length``)."""

    def __init__(self, model: Any, tokenizer: Any, stats: dict | None = None,
                 missing_eos_penalty: float | None = None, eos_ids: list[int] | None = None,
                 batch_size: int = 16) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.stats = stats
        self.missing_eos_penalty = missing_eos_penalty
        self.eos_ids = set(eos_ids or [])
        self.batch_size = batch_size
        self.__name__ = "reward_model"  # TRL names the logged metric after the function

    def __call__(self, prompts: list[Any], completions: list[Any],
                 completion_ids: list[list[int]] | None = None, **_: Any) -> list[float]:
        from bakeoff.train.chat import score_responses

        # The same sequence PPO, evaluation and the reward statistics score.
        out = score_responses(self.model, self.tokenizer, prompts, completions, self.batch_size)
        if self.stats:
            out = [(s - self.stats["mean"]) / self.stats["std"] for s in out]
        if self.missing_eos_penalty is not None and completion_ids is not None and self.eos_ids:
            out = [s - (self.missing_eos_penalty if not (ids and ids[-1] in self.eos_ids) else 0.0)
                   for s, ids in zip(out, completion_ids)]
        return out


def _merged_checkpoint_callback(base_meta: dict[str, Any], tokenizer: Any,
                                saved: list[str]) -> Any:
    """Re-write each TRL checkpoint as merged weights + bakeoff metadata."""
    from transformers import TrainerCallback

    from bakeoff.train.ppo import merged_state_dict
    from bakeoff.train.runs import write_checkpoint_meta

    class MergedCheckpoints(TrainerCallback):
        def on_save(self, args, state, control, model=None, **kwargs):  # noqa: ANN001
            d = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if not d.exists() or model is None or not state.is_world_process_zero:
                return control
            adapter = d / "adapter"
            adapter.mkdir(exist_ok=True)
            for name in ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"):
                if (d / name).exists():
                    shutil.move(str(d / name), adapter / name)
            model.get_base_model().save_pretrained(d, state_dict=merged_state_dict(model))
            tokenizer.save_pretrained(d)
            write_checkpoint_meta(d, {**base_meta, "step": state.global_step})
            saved.append(str(d))
            return control

    return MergedCheckpoints()


def train_group_rl(ws: "Workspace", policy: str, reward: str, prompts: str, experiment_name: str,
                   config: GroupRLConfig | None = None, force: bool = False,
                   hypothesis: str | None = None,
                   reward_fn: Callable[..., list[float]] | None = None) -> dict[str, Any]:
    """GRPO or RLOO (``config.algorithm``) as an MLflow run; same lineage rules,
    checkpoint layout and result as :func:`bakeoff.train.ppo.train_ppo`.
    ``reward_fn`` replaces the reward model (tests, scripted objectives)."""
    import mlflow
    from datasets import Dataset
    from peft import LoraConfig

    from bakeoff.console import warn
    from bakeoff.train.models import load_causal_lm, load_reward_model, pick_device, resolve_model
    from bakeoff.train.ppo import (check_pad_not_eos, check_sft_lineage, eos_token_ids,
                                   find_checkpoint_meta, load_prompts, load_reward_stats)
    from bakeoff.train.runs import run_dir
    from bakeoff.train.schedule import make_schedule
    from bakeoff.train.tracking import create_run, make_mlflow_callback, training_run

    config = config or GroupRLConfig()
    config.validate()
    algo = config.algorithm
    policy_path = resolve_model(policy, ws)
    sft_meta = check_sft_lineage(policy_path, force=force)
    if sft_meta is None:
        warn(f"running {algo.upper()} on {policy} without an SFT run behind it (--force)")
    version = ws.resolve(prompts)
    prompt_rows = load_prompts(ws, version.ref)

    device = pick_device(config.device)
    model, tokenizer = load_causal_lm(policy_path, device=device)
    if device == "cpu":
        model = model.float()
    check_pad_not_eos(tokenizer, model)
    stats = None
    reward_path = None
    if reward_fn is None:
        reward_path = resolve_model(reward, ws)
        meta = find_checkpoint_meta(reward_path)
        if meta is None or meta[0].get("kind") != "reward":
            warn(f"{reward} is not a bakeoff reward checkpoint: its scores may mean nothing")
        stats = load_reward_stats(reward_path) if config.normalize_scores else None
        rm, rtok = load_reward_model(reward_path, device=device)
        if device == "cpu":
            rm = rm.float()
        reward_fn = RewardModelFunction(rm, rtok, stats, config.missing_eos_penalty,
                                        eos_token_ids(tokenizer, model))

    run_id = create_run(ws, experiment_name, run_name=f"{algo}-{Path(policy_path).name}")
    out_dir = run_dir(ws, experiment_name, run_id)
    out_dir.mkdir(parents=True, exist_ok=True)
    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=config.lora_target_modules, task_type="CAUSAL_LM")
    common = dict(
        output_dir=str(out_dir), max_steps=config.steps, learning_rate=config.learning_rate,
        per_device_train_batch_size=config.batch_size, num_generations=config.num_generations,
        max_completion_length=config.max_new_tokens, temperature=config.temperature,
        beta=config.beta, epsilon=config.epsilon, num_iterations=config.num_iterations,
        max_grad_norm=config.max_grad_norm, logging_steps=1, report_to="none", seed=config.seed,
        save_strategy="steps", save_steps=config.save_steps or config.steps,
        use_cpu=device == "cpu", bf16=device.startswith("cuda") and _bf16_ok(),
        disable_dropout=True, log_completions=False)
    if algo == "grpo":
        from trl import GRPOConfig as TRLConfig, GRPOTrainer as TRLTrainer
    else:
        from trl import RLOOConfig as TRLConfig, RLOOTrainer as TRLTrainer
    args = TRLConfig(**common)
    dataset = Dataset.from_dict({"prompt": prompt_rows})

    parent_run = (sft_meta or {}).get("run_id")
    base_meta = {"run_id": run_id, "experiment_name": experiment_name, "kind": algo,
                 "base_model": str((sft_meta or {}).get("base_model") or policy_path),
                 "datasets": [version.ref], "parent_run_id": parent_run,
                 "parent_checkpoint": str(policy_path), "sft_lineage": sft_meta is not None,
                 "reward_model": str(reward_path) if reward_path else "reward_fn"}
    checkpoints: list[str] = []
    params = {**asdict(config), "policy": str(policy_path), "reward_model": base_meta["reward_model"],
              "prompts": version.ref, "n_prompts": len(prompt_rows)}
    if stats:
        params.update(reward_mean=stats["mean"], reward_std=stats["std"])
    tags = {"bakeoff.kind": algo, "bakeoff.algorithm": algo, "bakeoff.parent_run_id": str(parent_run),
            "bakeoff.parent_checkpoint": str(policy_path)}
    with training_run(ws, experiment_name, run_id=run_id, params=params, tags=tags,
                      datasets=[(version.ref, "training")], hypothesis=hypothesis):
        trainer = TRLTrainer(model=model, reward_funcs=reward_fn, args=args, train_dataset=dataset,
                             processing_class=tokenizer, peft_config=lora,
                             callbacks=[make_mlflow_callback(),
                                        _merged_checkpoint_callback(base_meta, tokenizer, checkpoints)])
        # The project's LR practice (warm-up, linear step-down to a floor).
        import torch

        trainer.create_optimizer()
        schedule = make_schedule(config.steps, config.warmup_steps, 0.0, config.lr_floor)
        trainer.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(trainer.optimizer, schedule)
        # Trainer prints its log dicts on stdout; --json owns stdout.
        with contextlib.redirect_stdout(sys.stderr):
            trainer.train()
        mlflow.flush_async_logging()
        mlflow.set_tag("bakeoff.checkpoints", json.dumps(checkpoints))
        tracking_uri = mlflow.get_tracking_uri()
        history = [h for h in trainer.state.log_history if "loss" in h or "reward" in h]
    final = history[-1] if history else {}
    return {"run_id": run_id, "tracking_uri": tracking_uri, "experiment_name": experiment_name,
            "checkpoints": checkpoints, "algorithm": algo, "output_dir": str(out_dir),
            "metrics": {k: v for k, v in final.items() if isinstance(v, (int, float))},
            "history": history}


def _bf16_ok() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
