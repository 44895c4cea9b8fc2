"""Pieces every bakeoff trainer shares: the LR schedule hook, run set-up
(new or resumed), the result returned to the CLI, data loading from versions."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from bakeoff.console import log, warn
from bakeoff.train.checkpoints import (CheckpointMeta, checkpoint_dirs, last_checkpoint, list_runs,
                                       read_checkpoint_meta, run_dir)
from bakeoff.train.schedule import Schedule, make_schedule
from bakeoff.workspace import BakeoffError

if TYPE_CHECKING:
    from bakeoff.train.config import TrainRunConfig
    from bakeoff.workspace import Version, Workspace

RUN_CONFIG_FILE = "bakeoff_run.json"


@dataclass
class TrainResult:
    """What a training command reports (``--json`` prints ``to_json()``)."""

    run_id: str
    tracking_uri: str
    experiment_name: str
    checkpoints: list[str]
    output_dir: str
    kind: str
    metrics: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    lr_alerts: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(d.pop("extra"))
        return d


class ScheduleMixin:
    """Trainer mixin: bakeoff's warm-up / step-down-to-floor schedule as a LambdaLR.

    Hooked at ``create_scheduler`` because only then is the real number of
    optimizer steps known (packing changes how many batches there are)."""

    bakeoff_warmup: float = 0.05
    bakeoff_hold: float = 0.0
    bakeoff_floor: float = 0.45
    bakeoff_schedule: Schedule | None = None

    def create_scheduler(self, num_training_steps: int, optimizer: Any = None) -> Any:
        from torch.optim.lr_scheduler import LambdaLR

        if self.lr_scheduler is None:  # type: ignore[attr-defined]
            self.bakeoff_schedule = make_schedule(num_training_steps, self.bakeoff_warmup,
                                                  self.bakeoff_hold, self.bakeoff_floor)
            self.lr_scheduler = LambdaLR(optimizer or self.optimizer,  # type: ignore[attr-defined]
                                         self.bakeoff_schedule)
        return self.lr_scheduler


class ScheduleRef:
    """Lets callbacks built before the Trainer ask "is this step at the peak LR?"."""

    def __init__(self) -> None:
        self.trainer: Any = None

    def at_peak(self, step: int, ratio: float = 0.8) -> bool:
        sched = getattr(self.trainer, "bakeoff_schedule", None)
        return True if sched is None else sched.at_peak(step, ratio)


@dataclass
class RunPlan:
    """Where a run writes, and whether it continues an earlier one."""

    run_id: str
    output_dir: Path
    resume_from: Path | None
    cfg: Any


def plan_run(ws: "Workspace", cfg: "TrainRunConfig", kind: str,
             resume_run_id: str | None = None) -> RunPlan:
    """A new MLflow run and output folder, or (``cfg.resume``) the latest run of
    this kind in the experiment, continued from its last checkpoint with the
    config it was started with (so the loss curve continues where it stopped)."""
    import os

    from bakeoff.train.tracking import ENV_RUN_ID, create_run

    if cfg.resume:
        run_id = resume_run_id
        if run_id is None:
            runs = list_runs(ws, cfg.experiment_name, kind=kind)
            if not runs:
                raise BakeoffError(f"--resume: no {kind} run with checkpoints in experiment "
                                   f"{cfg.experiment_name!r}")
            run_id = list(runs)[-1]
        out = run_dir(ws, cfg.experiment_name, run_id)
        ckpt = last_checkpoint(out)
        if ckpt is None:
            raise BakeoffError(f"--resume: run {run_id} has no complete checkpoint in {out}")
        saved = out / RUN_CONFIG_FILE
        if saved.exists():
            cfg = _restore(cfg, json.loads(saved.read_text()))
            cfg.resume = True
        log(f"resuming run {run_id} from {ckpt.name}")
        return RunPlan(run_id=run_id, output_dir=out, resume_from=ckpt, cfg=cfg)
    run_id = os.environ.get(ENV_RUN_ID) or create_run(
        ws, cfg.experiment_name, run_name=cfg.run_name or f"{kind}-{Path(str(cfg.model)).name}",
        tags={"bakeoff.kind": kind, **cfg.run_tags()})
    out = run_dir(ws, cfg.experiment_name, run_id)
    out.mkdir(parents=True, exist_ok=True)
    (out / RUN_CONFIG_FILE).write_text(json.dumps(asdict(cfg), indent=2, default=str))
    return RunPlan(run_id=run_id, output_dir=out, resume_from=None, cfg=cfg)


def _restore(cfg: Any, saved: dict[str, Any]) -> Any:
    """Rebuild a config dataclass from its saved dict (nested LoRA settings included)."""
    from bakeoff.train.config import LoraSettings

    saved = dict(saved)
    if isinstance(saved.get("lora_settings"), dict):
        saved["lora_settings"] = LoraSettings(**saved["lora_settings"])
    known = {k: v for k, v in saved.items() if k in type(cfg).__dataclass_fields__}
    restored = type(cfg)(**known)
    restored.device = cfg.device  # where it runs now is this invocation's choice
    return restored


def load_rows(ws: "Workspace", ref: str, kind: str, subset: float | None, seed: int
              ) -> tuple[pl.DataFrame, "Version", dict[str, int]]:
    """Rows of ``kind`` from a version (optionally a seeded random fraction), with counts."""
    version = ws.resolve(ref)
    df = ws.load(version)
    counts = {"rows": df.height}
    df = df.filter(pl.col("kind") == kind)
    counts["rows_of_kind"] = df.height
    if df.height == 0:
        raise BakeoffError(f"{version.ref} has no {kind!r} rows (kinds: "
                           f"{sorted(set(ws.load(version, columns=['kind'])['kind']))})")
    if subset is not None:
        if not 0 < subset <= 1:
            raise BakeoffError(f"--subset must be in (0, 1], got {subset}")
        n = max(1, int(round(df.height * subset)))
        df = df.sample(n=n, seed=seed, shuffle=True)
        counts["rows_subset"] = df.height
    return df, version, counts


#: Above this share of rows lost or cut for length, a stage warns.
LENGTH_WARN_FRACTION = 0.05


def length_losses(stage: str, total: int, truncated: int, dropped: int, max_length: int,
                  what: str = "rows") -> tuple[dict[str, float], list[str]]:
    """What a stage lost to ``max_length``, as metrics (summary, ``--json``,
    MLflow) and, above 5 % of ``total``, a warning that says what to do."""
    lost = truncated + dropped
    share = lost / total if total else 0.0
    metrics = {"length_truncated": truncated, "length_dropped": dropped, "length_total": total,
               "length_lost_fraction": round(share, 4)}
    warnings = []
    if share > LENGTH_WARN_FRACTION:
        msg = (f"{stage}: {lost} of {total} {what} ({share:.0%}) exceed max_length={max_length} tokens "
               f"({truncated} truncated, {dropped} dropped); raise --max-length or filter long rows first")
        warn(msg)
        warnings.append(msg)
    return metrics, warnings


def collect_checkpoints(output_dir: Path) -> list[str]:
    """Paths of this run's checkpoints that carry bakeoff metadata, in step order."""
    return [str(p) for p in checkpoint_dirs(output_dir) if read_checkpoint_meta(p) is not None]


def parent_of(model_path: str) -> CheckpointMeta | None:
    """When the starting model is a bakeoff checkpoint, its metadata (the parent run)."""
    p = Path(model_path)
    return read_checkpoint_meta(p) if p.is_dir() else None


def trainer_precision(device: str) -> dict[str, bool]:
    """bf16 on GPUs that support it; full precision on CPU."""
    import torch

    if device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return {"bf16": True}
    return {}


def log_effective_params(trainer: Any, plan: RunPlan) -> Any:
    """A callback logging the numbers only known once training starts (steps, warm-up)."""
    from transformers import TrainerCallback

    class _Effective(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001
            import mlflow

            if plan.resume_from is None and state.is_world_process_zero and mlflow.active_run():
                sched = getattr(trainer, "bakeoff_schedule", None)
                params = {"total_steps": state.max_steps,
                          "effective_batch_size": args.per_device_train_batch_size
                          * args.gradient_accumulation_steps * max(1, args.world_size)}
                if sched is not None:
                    params.update(warmup_steps=sched.warmup_steps, hold_steps=sched.hold_steps)
                mlflow.log_params(params)
            return control

    return _Effective()


@dataclass
class RLInputs:
    """What an RL run starts from, checked: the policy and its SFT lineage, the
    reward checkpoint and its statistics, the prompts, and the chain they make."""

    policy_path: str
    policy_meta: CheckpointMeta | None
    reward_path: str | None
    reward_meta: CheckpointMeta | None
    stats: dict[str, float] | None
    prompts_ref: str
    prompts: list[list[dict]]
    lineage: list[dict[str, Any]]

    def base_model(self) -> str:
        return str((self.policy_meta.base_model if self.policy_meta else None) or self.policy_path)

    def checkpoint_meta(self, plan: RunPlan, kind: str) -> dict[str, Any]:
        """Everything of this run's checkpoint metadata but the step."""
        cfg = plan.cfg
        return {"run_id": plan.run_id, "run_name": cfg.run_name, "experiment_name": cfg.experiment_name, "kind": kind,
                "base_model": self.base_model(), "datasets": [self.prompts_ref],
                "parent_run_id": self.policy_meta.run_id if self.policy_meta else None,
                "parent_checkpoint": self.policy_path, "round": cfg.round, "lineage": self.lineage,
                # lets an RL checkpoint be the policy of a further RL run
                "sft_lineage": self.policy_meta is not None,
                "reward_model": self.reward_path or "reward_fn"}


def rl_inputs(ws: "Workspace", cfg: Any, algorithm: str, with_reward_model: bool = True) -> RLInputs:
    """Resolve and check an RL run's inputs (``cfg``: an ``RLRunConfig``)."""
    from bakeoff.train.checkpoints import (check_sft_lineage, find_checkpoint_meta, load_reward_stats,
                                           rl_lineage)
    from bakeoff.train.models import resolve_model

    name = algorithm.upper()
    if not cfg.model or not cfg.dataset or (with_reward_model and not cfg.reward_model):
        raise BakeoffError(f"{name} needs a policy (--policy), prompts (--prompts) and a reward model (--reward)")
    policy_path = resolve_model(cfg.model, ws)
    policy_meta = check_sft_lineage(policy_path, force=cfg.force)
    if policy_meta is None:
        warn(f"running {name} on {cfg.model} without an SFT run behind it (--force)")
    reward_path = reward_meta = stats = None
    if with_reward_model:
        reward_path = resolve_model(cfg.reward_model, ws)
        reward_meta = find_checkpoint_meta(reward_path)
        if reward_meta is None or reward_meta.kind != "reward":
            warn(f"{cfg.reward_model} is not a bakeoff reward checkpoint: its scores may mean nothing")
        if cfg.normalize_scores:
            stats = load_reward_stats(reward_path)
            if stats is None:
                warn(f"no reward_stats.json for {cfg.reward_model}: rewards are used unnormalised, so the "
                     "KL coefficient and missing_eos_penalty are on the reward model's own scale")
    version = ws.resolve(cfg.dataset)
    from bakeoff.train.ppo import load_prompts

    prompts = load_prompts(ws, version.ref)
    return RLInputs(policy_path=policy_path, policy_meta=policy_meta, reward_path=reward_path,
                    reward_meta=reward_meta, stats=stats, prompts_ref=version.ref, prompts=prompts,
                    lineage=rl_lineage(policy_meta, policy_path, reward_meta, reward_path, version.ref))


def prompt_length_losses(tok: Any, prompts: list[list[dict]], max_prompt_length: int,
                         stage: str) -> tuple[dict[str, float], list[str]]:
    """RL prompts longer than ``max_prompt_length`` lose their start: count them."""
    from bakeoff.train.chat import prompt_ids

    over = sum(len(prompt_ids(tok, p)) > max_prompt_length for p in prompts)
    return length_losses(stage, len(prompts), over, 0, max_prompt_length, "prompts")


def lineage_params(lineage: list[dict[str, Any]]) -> dict[str, str]:
    """The chain as MLflow params: ``lineage.reward.run_id`` etc."""
    out: dict[str, str] = {}
    for link in lineage:
        role = link["role"]
        for key in ("kind", "run_id", "checkpoint"):
            if link.get(key):
                out[f"lineage.{role}.{key}"] = str(link[key])
        if link.get("datasets"):
            out[f"lineage.{role}.datasets"] = ",".join(link["datasets"])
    return out
