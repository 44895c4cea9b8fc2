"""Reuse across rounds: what a re-run of the loop does not need to do again.

A step is reused when its inputs are what they were for a step that finished:

- an **ingest** whose files have the same content digests (and the same format,
  mapping and labels) returns the existing version; the digests are recorded in
  the ingest version's params (``file_digests``), so any version ever ingested
  can be matched;
- a **curation** of the same rows (version digest) with the same recipe file
  content and embedder returns the version it made;
- a **training run** (SFT, reward, PPO...) whose dataset digests, starting model
  and settings equal those of a finished run is skipped and its checkpoints are
  reused.

Curation and training steps are recorded, when they finish, in one catalog table
(``finished_steps``) keyed by a digest of their inputs; a record is only used
while what it points to (a version, the checkpoints) still exists. Settings
that do not change what a step computes (the round, run name, hypothesis, the
device) are left out of the key.

Rounds: the round of a loop run is one more than the highest round of the
experiment's finished training steps; reused steps keep the round they ran in.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, is_dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from bakeoff.workspace import Version, Workspace

TABLE = "finished_steps"

#: Config fields that say how or why a step runs, not what it computes.
NOT_INPUTS = frozenset({"round", "run_name", "hypothesis", "extra_tags", "resume", "device",
                        "experiment_name", "dataset", "model", "reward_model"})

#: Ingest options that change the rows (with the files' content).
INGEST_OPTIONS = ("format", "map", "meta", "strict")


@dataclass
class Finished:
    """A finished step: what it computed from which inputs, in which round."""

    key: str
    kind: str
    experiment: str
    round: int
    inputs: dict[str, Any]
    result: dict[str, Any]
    created_at: str


def digest_of(obj: Any) -> str:
    """A stable digest of a JSON-able object (keys sorted)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def file_digest(path: str | os.PathLike) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def file_digests(paths: Iterable[str | os.PathLike]) -> list[str]:
    """Content digests of input files, in order (recorded in an ingest's params)."""
    return [file_digest(p) for p in paths]


def config_inputs(config: Any) -> dict[str, Any]:
    """A run config's settings that change what it computes (see ``NOT_INPUTS``)."""
    d = asdict(config) if is_dataclass(config) else dict(config)
    return {k: v for k, v in d.items() if k not in NOT_INPUTS}


# --- ingest ------------------------------------------------------------------------------

def find_ingest(ws: Workspace, name: str, digests: list[str], options: dict[str, Any]) -> Version | None:
    """The newest version of ``name`` ingested from files with these content
    digests (in this order) and these options, or None."""
    for v in reversed(ws.versions(name)):
        p = v.params
        if v.operation != "ingest" or p.get("file_digests") != digests:
            continue
        if all(_same(p.get(k), options.get(k)) for k in INGEST_OPTIONS):
            return v
    return None


def _same(a: Any, b: Any) -> bool:
    """Recorded option == requested option, where None, {} and False mean "not given"."""
    return (a or None) == (b or None)


# --- finished steps ------------------------------------------------------------------------

def _ensure_table(con: Any) -> None:
    con.execute(f"""CREATE TABLE IF NOT EXISTS {TABLE} (
        key VARCHAR PRIMARY KEY, kind VARCHAR, experiment VARCHAR, round INTEGER,
        inputs VARCHAR, result VARCHAR, created_at VARCHAR)""")


def _rows(ws: Workspace, where: str, params: list[Any]) -> list[Finished]:
    with ws.connect() as con:
        _ensure_table(con)
        rows = con.execute(f"SELECT key, kind, experiment, round, inputs, result, created_at FROM {TABLE} "
                           f"WHERE {where} ORDER BY created_at", params).fetchall()
    return [Finished(key=k, kind=kind, experiment=e, round=r, inputs=json.loads(i), result=json.loads(res),
                     created_at=c) for k, kind, e, r, i, res, c in rows]


def step_key(kind: str, experiment: str, inputs: dict[str, Any]) -> str:
    return digest_of({"kind": kind, "experiment": experiment, "inputs": inputs})


def lookup(ws: Workspace, key: str) -> Finished | None:
    """The finished step with this key, if what it made is still there."""
    found = _rows(ws, "key = ?", [key])
    if not found:
        return None
    step = found[0]
    return step if _still_there(ws, step) else None


def _still_there(ws: Workspace, step: Finished) -> bool:
    """Are the version and the checkpoints a finished step made still in the workspace?"""
    if "checkpoints" in step.result:
        checkpoints = step.result["checkpoints"] or []
        if not checkpoints or not all((Path(c) / "bakeoff_checkpoint.json").exists() for c in checkpoints):
            return False
    ref = step.result.get("version")
    if ref:
        try:
            return ws.resolve(ref).digest == step.result.get("digest")
        except Exception:  # the version is gone (a removed dataset)
            return False
    return True


def record(ws: Workspace, key: str, kind: str, experiment: str, round_number: int,
           inputs: dict[str, Any], result: dict[str, Any]) -> None:
    """Record a finished step (one row, replaced if the key was recorded before)."""
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    with ws.connect() as con:
        _ensure_table(con)
        con.execute(f"INSERT OR REPLACE INTO {TABLE} VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [key, kind, experiment, round_number, json.dumps(inputs, sort_keys=True, default=str),
                     json.dumps(result, default=str), now])


def finished_steps(ws: Workspace, experiment: str | None = None) -> list[Finished]:
    """Every recorded step (of one experiment), oldest first."""
    return _rows(ws, "experiment = ?", [experiment]) if experiment else _rows(ws, "TRUE", [])


TRAINING_KINDS = ("sft", "reward", "ppo", "grpo", "rloo")


def next_round(ws: Workspace, experiment: str) -> int:
    """One more than the highest round of the experiment's finished training steps."""
    rounds = [s.round for s in finished_steps(ws, experiment) if s.kind in TRAINING_KINDS]
    return max(rounds, default=0) + 1
