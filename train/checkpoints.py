"""Checkpoints on disk: their metadata, lineage, reward statistics, and lookup.

Every checkpoint is ``ws.runs_dir()/<experiment>/<run_id>/checkpoint-<step>/`` and
carries ``bakeoff_checkpoint.json`` (the contract read by evaluation and RL):
{"run_id", "experiment_name", "step", "kind", "base_model", "datasets",
"parent_run_id", "parent_checkpoint", "round", "lineage", ...}. A reward
checkpoint also carries ``reward_stats.json`` ({"mean", "std", ...}), which RL
and evaluation normalise scores with. Discovery reads these files, so it needs
neither MLflow nor the process that wrote them. This module is the one place
that reads or writes either file.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bakeoff.workspace import BakeoffError, validate_name

if TYPE_CHECKING:
    from bakeoff.workspace import Workspace

META_FILE = "bakeoff_checkpoint.json"
STATS_FILE = "reward_stats.json"
PPO_STATE_FILE = "ppo_state.pt"
#: A checkpoint with one of these can be resumed from (the Trainer's state, or PPO's).
RESUME_FILES = ("trainer_state.json", PPO_STATE_FILE)
_CKPT_RE = re.compile(r"^checkpoint-(\d+)$")


@dataclass
class CheckpointMeta:
    run_id: str
    experiment_name: str
    step: int
    kind: str                                   # sft | reward | ppo | grpo | rloo
    base_model: str
    datasets: list[str] = field(default_factory=list)
    parent_run_id: str | None = None
    parent_checkpoint: str | None = None
    round: int | None = None                    # the iteration round (None: not part of a loop)
    # Where this checkpoint came from, nearest first: for RL the policy's SFT run
    # and dataset, the reward run and dataset, the prompts (see rl_lineage).
    lineage: list[dict[str, Any]] = field(default_factory=list)
    sft_lineage: bool | None = None             # RL: an SFT run is behind the policy
    reward_model: str | None = None             # RL: the reward checkpoint scored against
    path: str = ""                              # where it was read from (not written)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("path")
        return d


def run_dir(ws: "Workspace", experiment_name: str, run_id: str) -> Path:
    return ws.runs_dir() / validate_name(experiment_name, "experiment name") / validate_name(run_id, "run id")


def write_checkpoint_meta(checkpoint_dir: str | os.PathLike, meta: CheckpointMeta | dict) -> Path:
    """Write ``bakeoff_checkpoint.json`` atomically into a checkpoint directory."""
    d = Path(checkpoint_dir)
    payload = meta.to_json() if isinstance(meta, CheckpointMeta) else dict(meta)
    payload.pop("path", None)
    tmp = d / f".{META_FILE}.tmp"
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, d / META_FILE)
    return d / META_FILE


def read_checkpoint_meta(path: str | os.PathLike) -> CheckpointMeta | None:
    """The metadata of a checkpoint directory, or None when it isn't a bakeoff checkpoint."""
    f = Path(path) / META_FILE
    if not f.exists():
        return None
    data = json.loads(f.read_text())
    known = {k: data.get(k) for k in CheckpointMeta.__dataclass_fields__ if k != "path"}
    known["datasets"] = known.get("datasets") or []
    known["lineage"] = known.get("lineage") or []
    return CheckpointMeta(**known, path=str(Path(path).resolve()))


def list_checkpoints(ws: "Workspace", experiment_name: str | None = None,
                     run_id: str | None = None, kind: str | None = None) -> list[CheckpointMeta]:
    """Checkpoints under the workspace, filtered; sorted by experiment, run, step."""
    root = ws.runs_dir()
    pattern = f"{experiment_name or '*'}/{run_id or '*'}/checkpoint-*/{META_FILE}"
    found = []
    for f in root.glob(pattern):
        meta = read_checkpoint_meta(f.parent)
        if meta is None or (kind and meta.kind != kind):
            continue
        found.append(meta)
    return sorted(found, key=lambda m: (m.experiment_name, m.run_id, m.step))


def list_runs(ws: "Workspace", experiment_name: str | None = None,
              kind: str | None = None) -> dict[str, list[CheckpointMeta]]:
    """run_id -> its checkpoints in step order (runs ordered by their newest checkpoint's mtime)."""
    runs: dict[str, list[CheckpointMeta]] = {}
    for m in list_checkpoints(ws, experiment_name, kind=kind):
        runs.setdefault(m.run_id, []).append(m)
    return dict(sorted(runs.items(), key=lambda kv: Path(kv[1][-1].path).stat().st_mtime))


def checkpoint_dirs(output_dir: str | os.PathLike) -> list[Path]:
    """``checkpoint-N`` folders of one run directory, in step order (with or without metadata)."""
    d = Path(output_dir)
    if not d.exists():
        return []
    items = [(int(m.group(1)), p) for p in d.iterdir() if p.is_dir() and (m := _CKPT_RE.match(p.name))]
    return [p for _, p in sorted(items)]


def last_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint (has trainer state: the Trainer's, or PPO's) of a run directory."""
    for p in reversed(checkpoint_dirs(output_dir)):
        if any((p / f).exists() for f in RESUME_FILES):
            return p
    return None


def make_checkpoint_callback(base: dict[str, Any]) -> Any:
    """A ``TrainerCallback`` that writes ``bakeoff_checkpoint.json`` into every
    checkpoint the Trainer saves (``base`` holds everything but the step)."""
    from transformers import TrainerCallback

    class CheckpointMetaCallback(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):  # noqa: ANN001
            if state.is_world_process_zero:
                d = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                if d.exists():
                    write_checkpoint_meta(d, {**base, "step": state.global_step})
            return control

    return CheckpointMetaCallback()


def find_checkpoint_meta(path: str | os.PathLike) -> CheckpointMeta | None:
    """The metadata in ``path`` or the nearest folder above it (a file inside a
    checkpoint, or an adapter sub-folder, belongs to that checkpoint)."""
    p = Path(path)
    if not p.exists():
        return None
    p = p.resolve()
    for d in (p, *p.parents):
        if (d / META_FILE).is_file():
            try:
                return read_checkpoint_meta(d)
            except json.JSONDecodeError as e:
                raise BakeoffError(f"{d / META_FILE}: not valid JSON ({e})") from None
    return None


def check_sft_lineage(policy_path: str | os.PathLike, force: bool = False) -> CheckpointMeta | None:
    """The SFT checkpoint metadata behind ``policy_path``. RL on a model that was
    never fine-tuned on the domain mostly teaches it to game the reward model, so
    without one this refuses unless ``force``. An RL checkpoint whose own chain
    starts at an SFT run counts as well (continuing RL)."""
    meta = find_checkpoint_meta(policy_path)
    ok = meta is not None and (meta.kind == "sft" or meta.sft_lineage is True)
    if not ok and not force:
        what = "no bakeoff_checkpoint.json" if meta is None else f"a checkpoint of kind {meta.kind!r}"
        raise BakeoffError(f"policy {policy_path} has {what} from an SFT run: run `bakeoff train sft` "
                           "first and pass one of its checkpoints (or --force to run RL on it anyway)")
    return meta if ok else None


def lineage_entry(role: str, meta: CheckpointMeta | None, path: str) -> dict[str, Any]:
    """One link of a lineage: which run, of what kind, on which datasets."""
    if meta is None:
        return {"role": role, "kind": None, "run_id": None, "checkpoint": str(path), "datasets": []}
    return {"role": role, "kind": meta.kind, "run_id": meta.run_id, "checkpoint": meta.path or str(path),
            "datasets": list(meta.datasets), "round": meta.round}


def rl_lineage(policy: CheckpointMeta | None, policy_path: str, reward: CheckpointMeta | None,
               reward_path: str | None, prompts: str) -> list[dict[str, Any]]:
    """An RL checkpoint's whole chain: the policy (its SFT run and dataset
    version), the reward run and its dataset version, the prompts; then what
    the policy itself came from (a PPO policy continuing PPO brings its chain)."""
    chain = [lineage_entry("policy", policy, policy_path)]
    if reward_path is not None:
        chain.append(lineage_entry("reward", reward, reward_path))
    chain.append({"role": "prompts", "kind": "dataset", "run_id": None, "checkpoint": None,
                  "datasets": [prompts]})
    if policy is not None:
        chain += [{**link, "role": f"policy.{link['role']}"} for link in policy.lineage]
    return chain


def write_reward_stats(checkpoint_dir: str | os.PathLike, stats: dict[str, Any]) -> Path:
    """``reward_stats.json``: the reward mean/std on reference pairs (and how they were measured)."""
    f = Path(checkpoint_dir) / STATS_FILE
    tmp = f.with_name(f".{STATS_FILE}.tmp")
    tmp.write_text(json.dumps({"mean": stats["mean"], "std": stats["std"] if stats["std"] > 0 else 1.0,
                               "accuracy": stats.get("accuracy"), "margin": stats.get("margin"),
                               "n_pairs": stats.get("n_pairs"), "measured_on": stats.get("measured_on")},
                              indent=2))
    os.replace(tmp, f)
    return f


def load_reward_stats(reward_path: str | os.PathLike) -> dict[str, float] | None:
    """``reward_stats.json`` ({"mean", "std"}) in the reward checkpoint or above
    it (not above its run); None when absent."""
    p = Path(reward_path)
    if not p.exists():
        return None
    p = p.resolve()
    for d in (p, *p.parents):
        f = d / STATS_FILE
        if f.is_file():
            stats = json.loads(f.read_text())
            if not stats.get("std") or not math.isfinite(float(stats["std"])) or float(stats["std"]) <= 0:
                raise BakeoffError(f"{f}: std must be a positive number, got {stats.get('std')!r}")
            return {"mean": float(stats["mean"]), "std": float(stats["std"])}
        if (d / META_FILE).is_file():
            break  # don't wander above the checkpoint's run
    return None
