"""Reward model: TRL's RewardTrainer on a sequence-classification head (one output).

The model reads the whole conversation rendered by the chat template (prompt +
answer, ending with the answer's end-of-turn) and scores its last token. It is
trained on preference pairs with the Bradley-Terry loss. What it reports, and why:

- held-out pairwise accuracy: the share of unseen pairs where chosen outscores
  rejected (0.5 = chance);
- the reward mean and spread (std) on reference samples (both sides of the
  held-out pairs): PPO normalises rewards with these to mean 0, std 1, so every
  checkpoint gets ``reward_stats.json`` = {"mean", "std"}; a tiny spread relative
  to the margin, or one that drifts between checkpoints, says the signal is unstable.
"""

from __future__ import annotations

import contextlib

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from bakeoff.console import log, warn
from bakeoff.train.common import (ScheduleMixin, ScheduleRef, TrainResult, collect_checkpoints,
                                  length_losses, load_rows, log_effective_params, parent_of, plan_run,
                                  trainer_precision)
from bakeoff.train.config import RewardRunConfig
from bakeoff.train.models import adapter_base, fix_tokenizer, match_vocab, pick_device, resolve_model
from bakeoff.train.schedule import check_lr_practice

if TYPE_CHECKING:
    from bakeoff.workspace import Workspace

def preference_datasets(rows: Any, eval_fraction: float, seed: int, tok: Any = None
                        ) -> tuple[Any, Any]:
    """(train, eval) HF datasets with TRL's conversational columns prompt/chosen/rejected.

    The split is by prompt, not by row: pairs sharing a prompt all land on one
    side, so the held-out accuracy is measured on prompts the model never saw.
    Rows with an empty chosen or rejected side carry no preference and are
    skipped. With ``tok``, conversations are conformed to its template (a
    system turn folded into the first user turn where the template has no
    system role)."""
    import polars as pl
    from datasets import Dataset

    ok = rows.filter((pl.col("chosen").list.len() > 0) & (pl.col("rejected").list.len() > 0))
    if ok.height < rows.height:
        warn(f"{rows.height - ok.height} preference rows lack a chosen or rejected answer; skipped")
    if ok.height < 2:
        from bakeoff.workspace import BakeoffError

        raise BakeoffError(f"need at least 2 preference pairs, got {ok.height}")
    ok = ok.with_columns(pl.col("messages").list.eval(pl.element().struct.json_encode())
                         .list.join("\x1f").alias("_prompt_key"))
    prompts = ok.select("_prompt_key").unique(maintain_order=True).sample(fraction=1.0, shuffle=True, seed=seed)
    n_prompts = prompts.height
    n_eval = min(n_prompts - 1, max(1, int(round(n_prompts * eval_fraction)))) if eval_fraction > 0 else 0
    held_keys = prompts.slice(0, n_eval)["_prompt_key"]
    table = ok.sample(fraction=1.0, shuffle=True, seed=seed).select(
        "_prompt_key", pl.col("messages").alias("prompt"), "chosen", "rejected")
    is_held = pl.col("_prompt_key").is_in(held_keys.implode())
    train_t, held_t = table.filter(~is_held).drop("_prompt_key"), table.filter(is_held).drop("_prompt_key")
    if tok is not None:
        from bakeoff.train.chat import conform_messages

        def conform(t: Any) -> Any:
            return {c: [conform_messages(tok, m) if c == "prompt" else m for m in t[c].to_list()]
                    for c in ("prompt", "chosen", "rejected")}
        return Dataset.from_dict(conform(train_t)), (Dataset.from_dict(conform(held_t)) if n_eval else None)
    return Dataset(train_t.to_arrow()), (Dataset(held_t.to_arrow()) if n_eval else None)


def score_conversations(model: Any, tok: Any, conversations: Sequence[list[dict]],
                        batch_size: int = 16) -> list[float]:
    """Rewards for full conversations (chat template applied, no generation
    prompt), read at the last token as the reward model was trained."""
    from bakeoff.train.chat import render, score_sequences

    seqs = [list(tok(render(tok, c), add_special_tokens=False)["input_ids"]) for c in conversations]
    return score_sequences(model, tok, seqs, batch_size)


def pair_stats(model: Any, tok: Any, pairs: Any, batch_size: int = 16) -> dict[str, float]:
    """Pairwise accuracy, mean margin, and reward mean/std over both sides of ``pairs``."""
    from bakeoff.train.chat import score_responses

    rc = score_responses(model, tok, pairs["prompt"], pairs["chosen"], batch_size)
    rr = score_responses(model, tok, pairs["prompt"], pairs["rejected"], batch_size)
    allr = rc + rr
    mean = sum(allr) / len(allr)
    std = math.sqrt(sum((x - mean) ** 2 for x in allr) / max(1, len(allr) - 1))
    return {"accuracy": sum(a > b for a, b in zip(rc, rr)) / len(rc),
            "margin": sum(a - b for a, b in zip(rc, rr)) / len(rc),
            "mean": mean, "std": std, "n_pairs": len(rc)}


def pairs_over_length(tok: Any, pairs: Any, max_length: int) -> int:
    """How many pairs RewardTrainer will drop: either side longer than ``max_length``."""
    from bakeoff.train.chat import reward_sequence

    return sum(max(len(reward_sequence(tok, p, c)), len(reward_sequence(tok, p, r))) > max_length
               for p, c, r in zip(pairs["prompt"], pairs["chosen"], pairs["rejected"]))


def load_trainable_reward_model(model_path: str, device: str, workdir: Path) -> tuple[Any, Any, str]:
    """(model, tokenizer, base_model) with a fresh one-output score head.

    Starting from a LoRA checkpoint (e.g. the SFT policy), the adapter is merged
    and the merged backbone saved once under ``workdir/merged-base``: a reward
    LoRA must sit on the weights it was trained on, and checkpoints name that
    directory as their ``base_model``."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from bakeoff.train.models import load_causal_lm

    dtype = torch.bfloat16 if trainer_precision(device) else torch.float32
    src = model_path
    if adapter_base(model_path) is not None:
        merged_dir = workdir / "merged-base"
        if not (merged_dir / "config.json").exists():
            lm, lm_tok = load_causal_lm(model_path, device="cpu", merge=True, dtype=dtype)
            lm.save_pretrained(merged_dir)
            lm_tok.save_pretrained(merged_dir)
            del lm
        src = str(merged_dir)
    from transformers import AutoTokenizer

    tok = fix_tokenizer(AutoTokenizer.from_pretrained(src))
    model = AutoModelForSequenceClassification.from_pretrained(src, num_labels=1, dtype=dtype)
    match_vocab(model, tok)  # a pad added to the tokenizer needs an embedding row
    return model, tok, src


def train_reward(ws: "Workspace", cfg: RewardRunConfig, callbacks: list[Any] | None = None,
                 resume_run_id: str | None = None) -> TrainResult:
    """Train a reward model on a preference version; returns run id, checkpoints, stats."""
    import mlflow
    from transformers import TrainerCallback, set_seed
    from trl import RewardConfig, RewardTrainer

    from bakeoff.train.monitor import make_monitor_callback
    from bakeoff.train.checkpoints import make_checkpoint_callback, write_reward_stats
    from bakeoff.train.sft import lora_config
    from bakeoff.train.tracking import is_main_process, make_mlflow_callback, training_run

    plan = plan_run(ws, cfg, "reward", resume_run_id)
    cfg = plan.cfg
    device = pick_device(cfg.device)
    warnings = check_lr_practice(cfg.peak_lr(), cfg.mode, cfg.epochs if cfg.max_steps <= 0 else 1,
                                 cfg.warmup, cfg.lr_floor)
    rows, version, counts = load_rows(ws, cfg.dataset, "preference", cfg.subset, cfg.seed)
    model_path = resolve_model(cfg.model, ws)
    parent = parent_of(model_path)
    set_seed(cfg.seed)  # before loading: the fresh score head (and LoRA) are seeded, so reruns match
    model, tok, base_model = load_trainable_reward_model(model_path, device, plan.output_dir)
    train_ds, held = preference_datasets(rows, cfg.eval_fraction, cfg.seed, tok)
    # Without a held-out split the statistics come from training pairs: say so in their names.
    ref_name = "heldout" if held is not None else "trainpairs"
    if held is None:
        warn("eval_fraction=0: no held-out pairs; accuracy and margin are measured on training pairs "
             "(reported as trainpairs_*), reward_stats.json too")
    ref_pairs = held if held is not None else train_ds.select(range(min(64, len(train_ds))))
    over = pairs_over_length(tok, train_ds, cfg.max_length)
    length_metrics, length_warnings = length_losses("reward", len(train_ds), 0, over, cfg.max_length, "pairs")
    warnings += length_warnings
    log(f"reward model ({cfg.mode}) on {len(train_ds) - over} pairs from {version.ref} "
        f"({over} over max_length={cfg.max_length} dropped, {0 if held is None else len(held)} held out); "
        f"model {model_path}; device {device}")

    args = RewardConfig(
        output_dir=str(plan.output_dir),
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.peak_lr(),
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        max_grad_norm=cfg.max_grad_norm,
        weight_decay=cfg.weight_decay,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=None,
        logging_steps=cfg.logging_steps,
        eval_strategy="no",
        report_to="none",
        seed=cfg.seed,
        max_length=cfg.max_length,
        center_rewards_coefficient=cfg.center_rewards_coefficient,
        use_cpu=device == "cpu",
        dataloader_num_workers=0,
        disable_tqdm=not is_main_process(),
        **trainer_precision(device),
    )

    class Trainer(ScheduleMixin, RewardTrainer):
        bakeoff_warmup, bakeoff_hold, bakeoff_floor = cfg.warmup, cfg.hold, cfg.lr_floor

    history: list[dict[str, Any]] = []

    class RewardStatsCallback(TrainerCallback):
        """Every checkpoint gets the reward mean/std PPO normalises with."""

        def on_save(self, args, state, control, model=None, **kwargs):  # noqa: ANN001
            if not state.is_world_process_zero:
                return control
            d = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            stats = {**pair_stats(model, tok, ref_pairs, cfg.batch_size), "measured_on": ref_name}
            write_reward_stats(d, stats)
            history.append({"step": state.global_step, **stats})
            if mlflow.active_run():
                mlflow.log_metrics({f"{ref_name}_{k}": float(v) for k, v in stats.items()
                                    if k not in ("n_pairs", "measured_on")},
                                   step=state.global_step)
            return control

    sched = ScheduleRef()
    monitor_cb = make_monitor_callback(sched)
    ckpt_meta = {"run_id": plan.run_id, "run_name": cfg.run_name, "experiment_name": cfg.experiment_name, "kind": "reward",
                 "base_model": base_model, "datasets": [version.ref],
                 "parent_run_id": parent.run_id if parent else None,
                 "parent_checkpoint": parent.path if parent else None, "round": cfg.round}
    trainer = Trainer(model=model, args=args, train_dataset=train_ds, processing_class=tok,
                      peft_config=lora_config(cfg, task_type="SEQ_CLS") if cfg.lora else None,
                      callbacks=[make_checkpoint_callback(ckpt_meta), RewardStatsCallback(),
                                 make_mlflow_callback(), monitor_cb, *(callbacks or [])])
    sched.trainer = trainer
    trainer.add_callback(log_effective_params(trainer, plan))
    if len(trainer.train_dataset) == 0:  # RewardTrainer drops pairs longer than max_length
        from bakeoff.workspace import BakeoffError

        raise BakeoffError(f"no preference pair of {version.ref} fits in max_length={cfg.max_length} "
                           "tokens; raise --max-length")

    tags = {"bakeoff.kind": "reward", "bakeoff.base_model": base_model, "bakeoff.model": str(cfg.model),
            "bakeoff.output_dir": str(plan.output_dir), "bakeoff.mode": cfg.mode, "bakeoff.device": device,
            **({"bakeoff.parent_run_id": parent.run_id, "bakeoff.parent_checkpoint": parent.path}
               if parent else {}),
            **({"bakeoff.practice_warnings": " | ".join(warnings)[:5000]} if warnings else {}),
            **cfg.run_tags()}
    params = {**cfg.to_params(), "base_model": base_model, "device": device,
              **{f"data.{k}": v for k, v in counts.items()}, "data.train_pairs": len(train_ds) - over,
              "data.pairs_over_max_length": over,
              "data.heldout_pairs": 0 if held is None else len(held)}
    # Under data-parallel launch only rank 0 talks to MLflow (the others train).
    main = is_main_process()
    run_ctx = training_run(ws, cfg.experiment_name, run_id=plan.run_id, params=params, tags=tags,
                           datasets=[(version.ref, "training")], hypothesis=cfg.hypothesis,
                           resume=plan.resume_from is not None) if main else contextlib.nullcontext()
    with run_ctx:
        out = trainer.train(resume_from_checkpoint=str(plan.resume_from) if plan.resume_from else None)
        metrics = {k: float(v) for k, v in out.metrics.items() if isinstance(v, (int, float))}
        final = history[-1] if history else pair_stats(trainer.model, tok, ref_pairs, cfg.batch_size)
        checkpoints = collect_checkpoints(plan.output_dir)
        metrics.update({f"{ref_name}_accuracy": final["accuracy"], f"{ref_name}_margin": final["margin"],
                        "reward_mean": final["mean"], "reward_std": final["std"]})
        if final["std"] < 1e-3:
            warn("reward spread on reference samples is ~0: the reward signal can't rank answers")
        if main:
            mlflow.log_metrics({f"final_{k}": v for k, v in metrics.items()})
            mlflow.log_metrics(length_metrics)
            mlflow.set_tags({"bakeoff.checkpoints": str(len(checkpoints)),
                             "bakeoff.lr_monitor": "warned" if monitor_cb.monitor.alerts else "ok"})
        uri = mlflow.get_tracking_uri() if main else ws.tracking_uri
    return TrainResult(run_id=plan.run_id, tracking_uri=uri, experiment_name=cfg.experiment_name,
                       checkpoints=checkpoints, output_dir=str(plan.output_dir), kind="reward",
                       metrics=metrics, warnings=warnings, lr_alerts=list(monitor_cb.monitor.alerts),
                       extra={"dataset": version.ref, "base_model": base_model, ref_name: final,
                              "stats_by_checkpoint": history, "length": length_metrics})
