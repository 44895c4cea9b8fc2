"""Find the checkpoints to evaluate.

A checkpoint is a directory ``ws.runs_dir()/<experiment>/<run_id>/checkpoint-<step>/``
with a ``bakeoff_checkpoint.json`` (the checkpoint contract). ``--checkpoints``
takes any mix of:

- a checkpoint directory, or a directory holding checkpoints (a run, an experiment);
- a run id or an experiment name (looked up under ``ws.runs_dir()``);
- a plain model directory or a model name (``tiny``, ``smollm2``, a hub id),
  evaluated as a model without training metadata.

The base model of the checkpoints (``base_model`` in their metadata) is added as a
baseline unless ``--base-model none``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from bakeoff.evaluate.runner import ModelSpec
from bakeoff.workspace import BakeoffError, Workspace

META_FILE = "bakeoff_checkpoint.json"


def _read_meta(ckpt: Path) -> dict[str, Any]:
    try:
        meta = json.loads((ckpt / META_FILE).read_text())
    except ValueError as exc:
        raise BakeoffError(f"{ckpt / META_FILE} is not valid JSON: {exc}") from exc
    meta.setdefault("run_id", ckpt.parent.name)
    meta.setdefault("experiment_name", ckpt.parent.parent.name)
    if meta.get("step") is None:
        tail = ckpt.name.rsplit("-", 1)[-1]
        meta["step"] = int(tail) if tail.isdigit() else None
    return meta


def _under(root: Path) -> list[Path]:
    return sorted({f.parent for f in root.rglob(META_FILE)})


def _is_model_dir(p: Path) -> bool:
    return (p / "config.json").exists() or (p / "adapter_config.json").exists()


def label_for(meta: dict[str, Any], path: Path) -> str:
    """What a checkpoint is: round (when the training step recorded one), kind,
    dataset version and step, e.g. ``r2 sft fin-train@v3 step 30``. Metadata
    without a kind falls back to ``<run>@<step>``. (``round`` is optional in the
    checkpoint metadata: read with a default of None.)"""
    run = str(meta.get("run_id") or path.parent.name)
    run = run if len(run) <= 14 else run[:8]
    step = meta.get("step")
    kind, datasets, rnd = meta.get("kind"), meta.get("datasets") or [], meta.get("round")
    if not kind:
        return f"{run}@{step}" if step is not None else f"{run}/{path.name}"
    parts = [f"r{rnd}" if rnd is not None else "", str(kind), str(datasets[0]) if datasets else "",
             f"step {step}" if step is not None else path.name]
    return " ".join(p for p in parts if p)


def find_checkpoints(ws: Workspace, targets: list[str], experiment: str | None = None) -> list[ModelSpec]:
    """Checkpoints named by ``targets`` and/or all checkpoints of ``experiment``."""
    runs = ws.runs_dir()
    found: dict[Path, ModelSpec] = {}

    def add_ckpt(ckpt: Path) -> None:
        meta = _read_meta(ckpt)
        if meta.get("kind") == "reward":  # a scorer, not an answerer: evaluated by its pairwise accuracy
            return
        found.setdefault(ckpt.resolve(), ModelSpec(label=label_for(meta, ckpt), path=str(ckpt.resolve()), meta=meta))

    if experiment:
        ckpts = _under(runs / experiment) if (runs / experiment).is_dir() else []
        if not ckpts:
            raise BakeoffError(f"no checkpoints of experiment {experiment!r} under {runs}")
        for c in ckpts:
            add_ckpt(c)
    for target in targets:
        p = Path(target).expanduser()
        if p.is_dir():
            if (p / META_FILE).exists():
                add_ckpt(p)
            elif ckpts := _under(p):
                for c in ckpts:
                    add_ckpt(c)
            elif _is_model_dir(p):
                found.setdefault(p.resolve(), ModelSpec(label=p.name, path=str(p.resolve()), meta={}))
            else:
                raise BakeoffError(f"{p} holds no checkpoint ({META_FILE}) and no model (config.json)")
            continue
        by_run = sorted({c for run_dir in runs.glob(f"*/{target}") if run_dir.is_dir() for c in _under(run_dir)})
        by_exp = _under(runs / target) if (runs / target).is_dir() else []
        if by_run or by_exp:
            for c in by_run or by_exp:
                add_ckpt(c)
            continue
        if target.lower() in ("tiny", "smollm2"):
            from bakeoff.train.models import resolve_model

            path = Path(resolve_model(target, ws))
            found.setdefault(path, ModelSpec(label=target.lower(), path=str(path), meta={}, is_base=True))
            continue
        raise BakeoffError(f"{target!r} is not a checkpoint directory, run id or experiment under {runs}")
    specs = sorted(found.values(), key=lambda s: (str(s.meta.get("experiment_name") or ""),
                                                  str(s.meta.get("run_id") or ""), s.meta.get("step") or 0,
                                                  s.label))
    _unique_labels(specs)
    return specs


def base_models(ws: Workspace, specs: list[ModelSpec], base_model: str | None = None) -> list[ModelSpec]:
    """Baselines: ``base_model`` if given ('none' for no baseline), else every
    distinct ``base_model`` recorded in the checkpoints."""
    if base_model and base_model.lower() == "none":
        return []
    names = [base_model] if base_model else list(dict.fromkeys(
        str(s.meta["base_model"]) for s in specs if s.meta.get("base_model")))
    have = {Path(s.path).resolve() for s in specs if s.path}
    out = []
    for name in names:
        from bakeoff.train.models import resolve_model

        path = resolve_model(name, ws)
        if Path(path).exists() and Path(path).resolve() in have:
            continue
        label = "base:" + (name if not Path(name).exists() else Path(name).name)
        out.append(ModelSpec(label=label, path=path, meta={"base_model": name, "kind": "base"}, is_base=True))
    return out


def _unique_labels(specs: list[ModelSpec]) -> None:
    """Two runs of one kind on one dataset get their run name in the label when
    the user named the runs apart (``--run-name``, e.g. a control run
    ``...-lr10x``), else their run id; any remaining clash a ``#n`` suffix."""
    counts: dict[str, int] = {}
    for s in specs:
        counts[s.label] = counts.get(s.label, 0) + 1
    names: dict[str, list[str]] = {}
    for s in specs:
        names.setdefault(s.label, []).append(str(s.meta.get("run_name") or ""))
    # the words of each run name after those the clashing names share:
    # r1-sft-fin@v2 and r1-sft-fin@v2-lr10x -> "" and "lr10x"
    shared = {label: len(os.path.commonprefix([n.split("-") for n in ns])) if len(set(ns)) > 1 else None
              for label, ns in names.items()}
    for s in specs:
        run, name = str(s.meta.get("run_id") or ""), str(s.meta.get("run_name") or "")
        cut = shared[s.label]
        own = "-".join(name.split("-")[cut:]) if cut is not None else ""
        if counts[s.label] > 1 and own:
            s.label = f"{s.label} ({own})"
        elif counts[s.label] > 1 and run:
            s.label = f"{s.label} ({run[:8]})"
    seen: dict[str, int] = {}
    for s in specs:
        n = seen.get(s.label, 0)
        seen[s.label] = n + 1
        if n:
            s.label = f"{s.label}#{n + 1}"
