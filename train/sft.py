"""Supervised fine-tuning: TRL's SFTTrainer with LoRA (default) or full weights.

Choices, and why:

- The model's own chat template renders each conversation; the loss covers the
  assistant's tokens and their end-of-turn token only, so the model learns to
  answer (and stop), not to predict the user's questions. The mask comes from
  the template itself (:mod:`bakeoff.train.chat`), so any template trains, not
  only those with ``{% generation %}`` markers or a TRL patch.
- Packing is TRL's best-fit-decreasing packing in padding-free form: samples are
  concatenated without padding and carry their own position ids, from which the
  attention mask is made block-diagonal, so packed samples never attend to each
  other. On CPU one pack goes through each forward pass (see ``packing_layout``).
- The LR follows warm-up -> linear step-down to a floor (schedule.py); a monitor
  watches the loss at the peak LR (monitor.py).
- A checkpoint every ``save_steps`` (10 % of the run by default), all kept:
  evaluation ranks every one of them, and ``--resume`` continues from the last.
"""

from __future__ import annotations

import contextlib

from pathlib import Path
from typing import TYPE_CHECKING, Any

from bakeoff.console import log, warn
from bakeoff.train.common import (ScheduleMixin, ScheduleRef, TrainResult, collect_checkpoints,
                                  length_losses, load_rows, log_effective_params, parent_of, plan_run,
                                  trainer_precision)
from bakeoff.train.config import SFTRunConfig
from bakeoff.train.models import adapter_base, fix_tokenizer, match_vocab, pick_device, resolve_model
from bakeoff.train.schedule import check_lr_practice

if TYPE_CHECKING:
    from bakeoff.workspace import Workspace


def sft_dataset(rows: Any, tok: Any, max_length: int, assistant_only_loss: bool = True
                ) -> tuple[Any, dict[str, int]]:
    """(dataset, length counts): a HF ``datasets.Dataset`` already tokenized by
    the model's own chat template, with ``assistant_masks`` (1 on what the
    assistant writes, end-of-turn included; see :mod:`bakeoff.train.chat`) when
    ``assistant_only_loss``; TRL turns the mask into labels.

    Rows longer than ``max_length`` are cut to it (keep the start, as TRL does)
    and counted as truncated; rows left without an assistant token by the cut
    carry no loss and are dropped and counted. Rows whose conversation has no
    assistant turn are dropped with a count too."""
    import polars as pl
    from datasets import Dataset

    from bakeoff.train.chat import render, tokenize_with_assistant_mask
    from bakeoff.workspace import BakeoffError

    has_answer = pl.col("messages").list.eval(pl.element().struct.field("role") == "assistant").list.any()
    kept = rows.filter(has_answer)
    if kept.height < rows.height:
        warn(f"{rows.height - kept.height} rows have no assistant turn and contribute no loss; skipped")
    ids_col: list[list[int]] = []
    mask_col: list[list[int]] = []
    truncated = dropped = 0
    # One conversation at a time: rendering prefixes is per conversation by nature.
    for messages in kept["messages"].to_list():
        if assistant_only_loss:
            ids, mask = tokenize_with_assistant_mask(tok, messages)
        else:  # the whole conversation is trained on; the template needs no mask
            ids = list(tok(render(tok, messages), add_special_tokens=False)["input_ids"])
            mask = [1] * len(ids)
        if len(ids) > max_length:
            ids, mask = ids[:max_length], mask[:max_length]
            if not any(mask):
                dropped += 1
                continue
            truncated += 1
        ids_col.append(ids)
        mask_col.append(mask)
    if not ids_col:
        raise BakeoffError("no rows with an assistant turn to train on"
                           + (f" within max_length={max_length} tokens; raise --max-length" if dropped else ""))
    data = {"input_ids": ids_col, **({"assistant_masks": mask_col} if assistant_only_loss else {})}
    counts = {"rows": rows.height, "no_assistant_turn": rows.height - kept.height,
              "truncated_for_length": truncated, "dropped_for_length": dropped}
    return Dataset.from_dict(data), counts


def load_trainable_causal_lm(model_path: str, lora: bool, device: str) -> tuple[Any, Any, str, bool]:
    """(model, tokenizer, base_model, adapter_continues).

    Starting from a LoRA checkpoint: with ``lora`` the same adapter keeps
    training on its base (so checkpoints stay small adapters on that base);
    without, the adapter is merged and the result fully fine-tuned.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = adapter_base(model_path)
    tok_src = model_path if (Path(model_path) / "tokenizer_config.json").exists() or base is None else base
    tok = fix_tokenizer(AutoTokenizer.from_pretrained(tok_src))
    dtype = torch.bfloat16 if trainer_precision(device) else torch.float32
    if base is None:
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
        match_vocab(model, tok)
        return model, tok, model_path, False
    from peft import PeftModel

    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
    match_vocab(model, tok)
    if lora:
        return PeftModel.from_pretrained(model, model_path, is_trainable=True), tok, base, True
    return PeftModel.from_pretrained(model, model_path).merge_and_unload(), tok, model_path, False


def packing_layout(cfg: SFTRunConfig, device: str) -> tuple[int, str]:
    """(packs per forward pass, why). TRL's padding-free collator joins the
    whole batch of packs into one row; without a variable-length attention
    kernel (CPU, or a GPU without flash-attention) attention over that row is
    dense, so it costs (batch x max_length)^2, not the sum of the samples'
    squares. Measured with SmolLM2-135M on CPU, that made packing slower than
    no packing (benchmarks/bench_train_sft.py). On CPU one pack goes through
    each forward pass and gradients accumulate to the batch: the same samples
    per optimizer step, attention over max_length at most."""
    if not cfg.packing:
        return cfg.batch_size, "off (--no-packing)"
    if device.startswith("cuda"):
        return cfg.batch_size, f"on: {cfg.batch_size} packs per forward pass (GPU)"
    return 1, (f"on: 1 pack per forward pass, gradients accumulated over {cfg.batch_size} (CPU: attention "
               f"over {cfg.batch_size} joined packs would be dense and quadratic in their length)")


def lora_config(cfg: SFTRunConfig, task_type: str = "CAUSAL_LM", modules_to_save: list[str] | None = None) -> Any:
    from peft import LoraConfig

    s = cfg.lora_settings
    return LoraConfig(r=s.r, lora_alpha=s.alpha, lora_dropout=s.dropout, target_modules=s.target_modules,
                      task_type=task_type, modules_to_save=modules_to_save)


def train_sft(ws: "Workspace", cfg: SFTRunConfig, callbacks: list[Any] | None = None,
              resume_run_id: str | None = None) -> TrainResult:
    """Run SFT on a dataset version; returns the run id and checkpoints."""
    import mlflow
    from transformers import set_seed
    from trl import SFTConfig, SFTTrainer

    from bakeoff.train.monitor import make_monitor_callback
    from bakeoff.train.checkpoints import make_checkpoint_callback
    from bakeoff.train.tracking import is_main_process, make_mlflow_callback, training_run

    plan = plan_run(ws, cfg, "sft", resume_run_id)
    cfg = plan.cfg
    device = pick_device(cfg.device)
    warnings = check_lr_practice(cfg.peak_lr(), cfg.mode, cfg.epochs if cfg.max_steps <= 0 else 1,
                                 cfg.warmup, cfg.lr_floor)

    rows, version, counts = load_rows(ws, cfg.dataset, "sft", cfg.subset, cfg.seed)
    model_path = resolve_model(cfg.model, ws)
    parent = parent_of(model_path)
    set_seed(cfg.seed)  # before loading: anything initialised fresh (LoRA, new embeddings) is seeded
    model, tok, base_model, continues = load_trainable_causal_lm(model_path, cfg.lora, device)
    dataset, lengths = sft_dataset(rows, tok, cfg.max_length, cfg.assistant_only_loss)
    length_metrics, length_warnings = length_losses("SFT", lengths["rows"] - lengths["no_assistant_turn"],
                                                    lengths["truncated_for_length"],
                                                    lengths["dropped_for_length"], cfg.max_length)
    warnings += length_warnings
    log(f"SFT {'LoRA' if cfg.lora else 'full'} on {len(dataset)} conversations from {version.ref}; "
        f"model {model_path}; device {device}")

    per_forward, packing_reason = packing_layout(cfg, device)
    log(f"packing {packing_reason}")
    args = SFTConfig(
        output_dir=str(plan.output_dir),
        per_device_train_batch_size=per_forward,
        gradient_accumulation_steps=cfg.grad_accum * (cfg.batch_size // per_forward),
        learning_rate=cfg.peak_lr(),
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        max_grad_norm=cfg.max_grad_norm,
        weight_decay=cfg.weight_decay,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=None,
        logging_steps=cfg.logging_steps,
        report_to="none",
        seed=cfg.seed,
        max_length=cfg.max_length,
        packing=cfg.packing,
        packing_strategy="bfd",
        padding_free=cfg.packing,
        # The dataset is tokenized here with its assistant mask (any template);
        # TRL's own flag would demand {% generation %} markers.
        assistant_only_loss=False,
        use_cpu=device == "cpu",
        dataloader_num_workers=0,
        disable_tqdm=not is_main_process(),
        **trainer_precision(device),
    )

    class Trainer(ScheduleMixin, SFTTrainer):
        bakeoff_warmup, bakeoff_hold, bakeoff_floor = cfg.warmup, cfg.hold, cfg.lr_floor

    ref = ScheduleRef()
    monitor_cb = make_monitor_callback(ref)
    ckpt_meta = {"run_id": plan.run_id, "run_name": cfg.run_name, "experiment_name": cfg.experiment_name, "kind": "sft",
                 "base_model": base_model, "datasets": [version.ref],
                 "parent_run_id": parent.run_id if parent else None,
                 "parent_checkpoint": parent.path if parent else None, "round": cfg.round}
    trainer = Trainer(model=model, args=args, train_dataset=dataset, processing_class=tok,
                      peft_config=lora_config(cfg) if cfg.lora and not continues else None,
                      callbacks=[make_checkpoint_callback(ckpt_meta), make_mlflow_callback(),
                                 monitor_cb, *(callbacks or [])])
    ref.trainer = trainer
    trainer.add_callback(log_effective_params(trainer, plan))

    tags = {"bakeoff.kind": "sft", "bakeoff.base_model": base_model, "bakeoff.model": str(cfg.model),
            "bakeoff.output_dir": str(plan.output_dir), "bakeoff.mode": cfg.mode, "bakeoff.device": device,
            **({"bakeoff.parent_run_id": parent.run_id, "bakeoff.parent_checkpoint": parent.path}
               if parent else {}),
            **({"bakeoff.practice_warnings": " | ".join(warnings)[:5000]} if warnings else {}),
            **cfg.run_tags()}
    params = {**cfg.to_params(), "base_model": base_model, "device": device,
              "packing_strategy": "bfd" if cfg.packing else "none", "packs_per_forward": per_forward,
              **{f"data.{k}": v for k, v in counts.items()},
              "data.conversations": len(dataset),
              **{f"data.{k}": v for k, v in lengths.items()}}
    # Under data-parallel launch only rank 0 talks to MLflow (the others train).
    main = is_main_process()
    run_ctx = training_run(ws, cfg.experiment_name, run_id=plan.run_id, params=params, tags=tags,
                           datasets=[(version.ref, "training")], hypothesis=cfg.hypothesis,
                           resume=plan.resume_from is not None) if main else contextlib.nullcontext()
    with run_ctx:
        out = trainer.train(resume_from_checkpoint=str(plan.resume_from) if plan.resume_from else None)
        metrics = {k: float(v) for k, v in out.metrics.items() if isinstance(v, (int, float))}
        checkpoints = collect_checkpoints(plan.output_dir)
        alerts = monitor_cb.monitor.alerts
        if main:
            mlflow.set_tags({"bakeoff.checkpoints": str(len(checkpoints)),
                             "bakeoff.lr_monitor": "warned" if alerts else "ok"})
            mlflow.log_metrics({f"final_{k}": v for k, v in metrics.items()})
            mlflow.log_metrics(length_metrics)
        uri = mlflow.get_tracking_uri() if main else ws.tracking_uri
    return TrainResult(run_id=plan.run_id, tracking_uri=uri, experiment_name=cfg.experiment_name,
                       checkpoints=checkpoints, output_dir=str(plan.output_dir), kind="sft",
                       metrics=metrics, warnings=warnings, lr_alerts=list(alerts),
                       extra={"dataset": version.ref, "base_model": base_model, "length": length_metrics,
                              "packing": cfg.packing, "packing_reason": packing_reason, "round": cfg.round})
