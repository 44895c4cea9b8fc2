"""Import a test set made elsewhere as a test-set version.

The file (JSONL or Parquet) has one item per row:

- ``messages`` (a chat: list of {role, content}) or ``prompt`` (a string, the
  user turn; ``system`` optional);
- ``reference``: the expected answer (or the last assistant turn of ``messages``);
- optional ``slice`` (in-domain, adjacent, far or any name), ``scoring`` (a
  method name or {"method": ..., options}), ``task`` and ``domain`` (also read
  from a ``meta`` or ``labels`` object), ``id`` (kept as ``source_id``:
  predictions may be keyed by it).

It is checked like a built test set: every row has a prompt and a reference,
every scoring spec names a known method with valid JSON, every slice is named
(a file without slices is one "unsliced" slice). Rows without ``scoring`` get the
builder's default for their task and reference. The version it becomes can be
decontaminated against a training version with ``bakeoff testsets check``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl

from bakeoff.workspace import BakeoffError, Version, Workspace

UNSLICED = "unsliced"


def read_rows(path: str | Path) -> list[tuple[str, dict[str, Any]]]:
    """(where, row) pairs of a JSONL or Parquet file ("line 3", "row 3"); a line
    that is not a JSON object is a one-line error naming it."""
    path = Path(path)
    if path.suffix == ".parquet":
        return [(f"row {i + 1}", r) for i, r in enumerate(pl.read_parquet(path).to_dicts())]
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise BakeoffError(f"{path}:{n}: not valid JSON ({exc})") from exc
        if not isinstance(obj, dict):
            raise BakeoffError(f"{path}:{n}: expected a JSON object")
        out.append((f"line {n}", obj))
    return out


def _item(path: Path, where: str, obj: dict[str, Any]) -> dict[str, Any]:
    """One row as a test item (messages ending with the reference), or a clear error."""
    from bakeoff.evaluate.scorers import parse_scoring

    msgs = obj.get("messages")
    reference = obj.get("reference")
    if msgs:
        if not isinstance(msgs, list) or not all(isinstance(m, dict) and "role" in m and "content" in m
                                                 for m in msgs):
            raise BakeoffError(f"{path}:{where}: messages must be a list of {{role, content}}")
        msgs = [{"role": str(m["role"]), "content": "" if m["content"] is None else str(m["content"])} for m in msgs]
        if msgs[-1]["role"] == "assistant":
            if reference is None:
                reference = msgs[-1]["content"]
            msgs = msgs[:-1]
    elif obj.get("prompt"):
        msgs = ([{"role": "system", "content": str(obj["system"])}] if obj.get("system") else []) + \
            [{"role": "user", "content": str(obj["prompt"])}]
    else:
        raise BakeoffError(f"{path}:{where}: needs 'messages' or 'prompt'")
    if not msgs or msgs[-1]["role"] != "user":
        raise BakeoffError(f"{path}:{where}: the prompt must end with a user turn")
    if reference is None or str(reference).strip() == "":
        raise BakeoffError(f"{path}:{where}: no reference answer")
    reference = str(reference)
    slice_ = obj.get("slice", UNSLICED)
    if not isinstance(slice_, str) or not slice_.strip():
        raise BakeoffError(f"{path}:{where}: slice must be a non-empty name, got {slice_!r}")
    scoring = obj.get("scoring")
    if isinstance(scoring, str) and scoring.strip() and scoring.strip()[0] not in "{\"":
        scoring = {"method": scoring.strip()}  # a bare method name
    if scoring not in (None, ""):
        try:
            scoring = json.dumps(parse_scoring(scoring), sort_keys=True)
        except BakeoffError as exc:
            raise BakeoffError(f"{path}:{where}: {exc}") from exc
    else:
        scoring = None
    labels = {**(obj.get("meta") if isinstance(obj.get("meta"), dict) else {}),
              **(obj.get("labels") if isinstance(obj.get("labels"), dict) else {})}
    return {"messages": [*msgs, {"role": "assistant", "content": reference}], "reference": reference,
            "slice": slice_.strip(), "scoring": scoring, "task": str(obj.get("task") or labels.get("task") or ""),
            "domain": str(obj.get("domain") or labels.get("domain") or ""), "source_id": None if obj.get("id") is None else str(obj["id"]),
            "source_line": int(where.split()[-1])}


def import_testset(ws: Workspace, path: str | Path, name: str) -> Version:
    """Check the file and commit it as a new version of test set ``name``."""
    from bakeoff.schema import conform, with_ids
    from bakeoff.testsets.scoring import assign_scoring, label_sets, method_counts

    path = Path(path)
    if not path.exists():
        raise BakeoffError(f"{path}: no such file")
    items = [_item(path, where, obj) for where, obj in read_rows(path)]
    if not items:
        raise BakeoffError(f"{path}: no items")
    ids = [i["source_id"] for i in items if i["source_id"] is not None]
    dup = sorted({i for i in ids if ids.count(i) > 1}) if len(set(ids)) != len(ids) else []
    if dup:
        raise BakeoffError(f"{path}: ids appear more than once: {', '.join(dup[:10])}")
    df = pl.DataFrame({
        "kind": ["sft"] * len(items),
        "messages": [i["messages"] for i in items],
        "domain": [i["domain"] for i in items],
        "task": [i["task"] for i in items],
        "source_file": [str(path.resolve())] * len(items),
        "source_line": [i["source_line"] for i in items],
        "slice": [i["slice"] for i in items],
        "reference": [i["reference"] for i in items],
        "scoring": pl.Series([i["scoring"] for i in items], dtype=pl.String),
        "source_id": pl.Series([i["source_id"] for i in items], dtype=pl.String),
    })
    # Rows without a scoring spec get the builder's default for their task and reference.
    todo = df.filter(pl.col("scoring").is_null())
    if todo.height:
        prompt_text = pl.col("messages").list.eval(pl.element().struct.field("content")).list.join("\n")
        todo = todo.with_columns(prompt_text.alias("prompt_text")).drop("scoring")
        filled = assign_scoring(todo, label_sets([df.select("task", "reference")])).drop("prompt_text")
        df = pl.concat([df.filter(pl.col("scoring").is_not_null()), filled.select(df.columns)])
    rows = with_ids(conform(df))
    sizes = dict(rows.group_by("slice").len().sort("slice").iter_rows())
    return ws.commit_version(name, rows, operation="testsets.import",
                             params={"file": str(path.resolve())},
                             counts={"slices": sizes, "scoring": method_counts(rows)},
                             report={"imported_from": str(path.resolve()), "slices": sizes})
