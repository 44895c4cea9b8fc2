"""Runs and checkpoints on disk.

Every checkpoint is ``ws.runs_dir()/<experiment>/<run_id>/checkpoint-<step>/`` and
carries ``bakeoff_checkpoint.json`` (the contract read by evaluation and PPO):
{"run_id", "experiment_name", "step", "kind", "base_model", "datasets",
"parent_run_id", "parent_checkpoint"}. Discovery reads these files, so it needs
neither MLflow nor the process that wrote them.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bakeoff.workspace import validate_name

if TYPE_CHECKING:
    from bakeoff.workspace import Workspace

META_FILE = "bakeoff_checkpoint.json"
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
    """The newest complete checkpoint (has trainer state) of a run directory."""
    for p in reversed(checkpoint_dirs(output_dir)):
        if (p / "trainer_state.json").exists():
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
