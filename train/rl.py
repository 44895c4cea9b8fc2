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

from bakeoff.train.config import RLRunConfig, opt
from bakeoff.workspace import BakeoffError

if TYPE_CHECKING:
    from bakeoff.train.common import TrainResult
    from bakeoff.workspace import Workspace

ALGORITHMS = ("ppo", "grpo", "rloo")


@dataclass
class GroupRLConfig(RLRunConfig):
    """GRPO/RLOO settings (TRL's names where they have one), beside the run
    settings every trainer shares."""

    algorithm: Literal["grpo", "rloo"] = opt("grpo", "", cli=False)
    steps: int = opt(100, "Optimizer steps (max_steps).")
    batch_size: int = opt(16, "Completions per step (prompts x num_generations).")
    num_generations: int = opt(4, "Completions per prompt: the group that is the baseline.")
    beta: float = opt(0.05, "KL coefficient (0: no reference pass).", param="kl_coef")
    epsilon: float = opt(0.2, "", cli=False)                 # clip range
    num_iterations: int = opt(1, "", cli=False)
    save_steps: int = opt(0, "Checkpoint every N steps (0: at the end only); all kept.")

    def validate(self) -> None:
        self.validate_run()
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
    from bakeoff.train.checkpoints import write_checkpoint_meta

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


def train_group_rl(ws: "Workspace", cfg: GroupRLConfig,
                   reward_fn: Callable[..., list[float]] | None = None) -> "TrainResult":
    """GRPO or RLOO (``cfg.algorithm``) as an MLflow run; same inputs, lineage
    rules, checkpoint layout and result as :func:`bakeoff.train.ppo.train_ppo`.
    ``reward_fn`` replaces the reward model (tests, scripted objectives)."""
    import mlflow
    from datasets import Dataset
    from peft import LoraConfig

    from bakeoff.train.common import (TrainResult, length_losses, lineage_params, plan_run, rl_inputs)
    from bakeoff.train.chat import prompt_ids
    from bakeoff.train.models import load_causal_lm, load_reward_model, pick_device
    from bakeoff.train.ppo import NEUTRAL_SAMPLING, check_pad_not_eos, eos_token_ids
    from bakeoff.train.schedule import make_schedule
    from bakeoff.train.tracking import make_mlflow_callback, training_run

    cfg.validate()
    algo = cfg.algorithm
    if cfg.resume:
        raise BakeoffError(f"--resume is supported for PPO runs; start a new {algo.upper()} run")
    inputs = rl_inputs(ws, cfg, algo, with_reward_model=reward_fn is None)
    plan = plan_run(ws, cfg, algo)
    device = pick_device(cfg.device)
    model, tokenizer = load_causal_lm(inputs.policy_path, device=device)
    if device == "cpu":
        model = model.float()
    check_pad_not_eos(tokenizer, model)
    if reward_fn is None:
        rm, rtok = load_reward_model(inputs.reward_path, device=device)
        if device == "cpu":
            rm = rm.float()
        reward_fn = RewardModelFunction(rm, rtok, inputs.stats, cfg.missing_eos_penalty,
                                        eos_token_ids(tokenizer, model))
    # TRL 1.16's GRPO/RLOO don't truncate prompts: longer ones are dropped here, and counted.
    prompts = [p for p in inputs.prompts if len(prompt_ids(tokenizer, p)) <= cfg.max_prompt_length]
    length_metrics, warnings = length_losses(algo.upper(), len(inputs.prompts), 0,
                                             len(inputs.prompts) - len(prompts), cfg.max_prompt_length, "prompts")
    if not prompts:
        raise BakeoffError(f"every prompt of {inputs.prompts_ref} is longer than max_prompt_length="
                           f"{cfg.max_prompt_length} tokens; raise --max-prompt-length")

    ls = cfg.lora_settings
    lora = LoraConfig(r=ls.r, lora_alpha=ls.alpha, lora_dropout=ls.dropout, target_modules=ls.target_modules,
                      task_type="CAUSAL_LM")
    common = dict(
        output_dir=str(plan.output_dir), max_steps=cfg.steps, learning_rate=cfg.learning_rate,
        per_device_train_batch_size=cfg.batch_size, num_generations=cfg.num_generations,
        max_completion_length=cfg.max_new_tokens, temperature=cfg.temperature,
        beta=cfg.beta, epsilon=cfg.epsilon, num_iterations=cfg.num_iterations,
        max_grad_norm=cfg.max_grad_norm, logging_steps=1, report_to="none", seed=cfg.seed,
        save_strategy="steps", save_steps=cfg.save_steps or cfg.steps,
        use_cpu=device == "cpu", bf16=device.startswith("cuda") and _bf16_ok(),
        disable_dropout=True, log_completions=False,
        # Plain temperature sampling: nothing from the model's generation config.
        top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0, generation_kwargs=dict(NEUTRAL_SAMPLING))
    if algo == "grpo":
        from trl import GRPOConfig as TRLConfig, GRPOTrainer as TRLTrainer
    else:
        from trl import RLOOConfig as TRLConfig, RLOOTrainer as TRLTrainer
    args = TRLConfig(**common)
    dataset = Dataset.from_dict({"prompt": prompts})

    base_meta = inputs.checkpoint_meta(plan, algo)
    checkpoints: list[str] = []
    params = {**cfg.to_params(), "policy": inputs.policy_path, "reward_model": base_meta["reward_model"],
              "prompts": inputs.prompts_ref, "n_prompts": len(prompts), **lineage_params(inputs.lineage)}
    if inputs.stats:
        params.update(reward_mean=inputs.stats["mean"], reward_std=inputs.stats["std"])
    tags = {"bakeoff.kind": algo, "bakeoff.algorithm": algo, "bakeoff.output_dir": str(plan.output_dir),
            "bakeoff.parent_run_id": str(base_meta["parent_run_id"]),
            "bakeoff.parent_checkpoint": inputs.policy_path, **cfg.run_tags()}
    with training_run(ws, cfg.experiment_name, run_id=plan.run_id, params=params, tags=tags,
                      datasets=[(inputs.prompts_ref, "training")], hypothesis=cfg.hypothesis):
        trainer = TRLTrainer(model=model, reward_funcs=reward_fn, args=args, train_dataset=dataset,
                             processing_class=tokenizer, peft_config=lora,
                             callbacks=[make_mlflow_callback(),
                                        _merged_checkpoint_callback(base_meta, tokenizer, checkpoints)])
        # The project's LR practice (warm-up, linear step-down to a floor).
        import torch

        trainer.create_optimizer()
        schedule = make_schedule(cfg.steps, cfg.warmup_steps, 0.0, cfg.lr_floor)
        trainer.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(trainer.optimizer, schedule)
        # Trainer prints its log dicts on stdout; --json owns stdout.
        with contextlib.redirect_stdout(sys.stderr):
            trainer.train()
        mlflow.flush_async_logging()
        mlflow.log_metrics(length_metrics)
        mlflow.set_tag("bakeoff.checkpoints", json.dumps(checkpoints))
        tracking_uri = mlflow.get_tracking_uri()
        history = [h for h in trainer.state.log_history if "loss" in h or "reward" in h]
    final = history[-1] if history else {}
    return TrainResult(run_id=plan.run_id, tracking_uri=tracking_uri, experiment_name=cfg.experiment_name,
                       checkpoints=checkpoints, output_dir=str(plan.output_dir), kind=algo,
                       metrics={k: v for k, v in final.items() if isinstance(v, (int, float))},
                       warnings=warnings,
                       extra={"algorithm": algo, "dataset": inputs.prompts_ref, "length": length_metrics,
                              "lineage": inputs.lineage, "round": cfg.round, "history": history})


def _bf16_ok() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
