"""Predictions made elsewhere (vLLM, TGI, an API model) as a leaderboard entry.

A predictions file has one row per test item: ``id`` (the item's id in the test
set) and ``prediction`` (``output``, ``response`` and ``answer`` are accepted
too). The predictions are checked against the test set (every item present,
none unknown, none twice), stored in the evaluation cache exactly like
generated outputs (template ``imported``), scored with the test set's scorers
and recorded as a completed evaluation, so ``evaluate rank`` ranks them with
everything else.

The model's identity is a digest of the predictions themselves: importing the
same file twice is a no-op, and the same predictions under two labels are one
leaderboard row naming both.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import polars as pl

from bakeoff.evaluate import cache
from bakeoff.evaluate.items import load_items
from bakeoff.evaluate.rank import IMPORTED
from bakeoff.evaluate.runner import EvalResult, score_items
from bakeoff.workspace import BakeoffError, Workspace

PREDICTION_COLUMNS = ("prediction", "output", "response", "answer")


def read_predictions(path: str | Path) -> pl.DataFrame:
    """(id, prediction) rows of a JSONL or Parquet file; bad input is a one-line
    error naming the line."""
    from bakeoff.testsets.importer import read_rows

    path = Path(path)
    ids, preds = [], []
    for w, obj in read_rows(path):
        col = next((c for c in PREDICTION_COLUMNS if c in obj), None)
        if obj.get("id") in (None, "") or col is None:
            raise BakeoffError(f"{path}:{w}: needs 'id' and one of {', '.join(PREDICTION_COLUMNS)}")
        ids.append(str(obj["id"]))
        preds.append("" if obj[col] is None else str(obj[col]))
    if not ids:
        raise BakeoffError(f"{path}: no predictions")
    return pl.DataFrame({"id": ids, "prediction": preds}, schema={"id": pl.String, "prediction": pl.String})


def _names(ids: list[str], limit: int = 10) -> str:
    shown = ", ".join(ids[:limit])
    return shown + (f" … (+{len(ids) - limit} more)" if len(ids) > limit else "")


def import_predictions(ws: Workspace, testset: str, label: str, path: str | Path,
                       settings: dict[str, Any] | None = None, reward: Any = None) -> EvalResult:
    """Check, store, score and record predictions of ``label`` on ``testset``."""
    t0 = time.perf_counter()
    version, items = load_items(ws, testset, reward.digest if reward is not None else None)
    preds = read_predictions(path)
    dup = preds.filter(pl.col("id").is_duplicated())["id"].unique().sort().to_list()
    if dup:
        raise BakeoffError(f"{path}: {len(dup)} item ids appear more than once: {_names(dup)}")
    # Predictions may be keyed by the test set's item ids or, for an imported test
    # set, by the ids of the file it came from.
    by_source = {sid: i for i, sid in zip(items["id"].to_list(), items["source_id"].to_list()) if sid is not None}
    if by_source:
        preds = preds.with_columns(pl.col("id").replace(by_source))
    known = set(items["id"].to_list())
    unknown = sorted(set(preds["id"].to_list()) - known)
    if unknown:
        raise BakeoffError(f"{path}: {len(unknown)} ids are not items of {version.ref}: {_names(unknown)}")
    missing = sorted(known - set(preds["id"].to_list()))
    to_source = {i: sid for sid, i in by_source.items()}
    missing = [to_source.get(i, i) for i in missing]
    if missing:
        raise BakeoffError(f"{path}: {len(missing)} of {len(known)} items of {version.ref} have no prediction: "
                           f"{_names(missing)}")
    joined = items.select("id", "prompt_digest").join(preds, on="id", how="inner")
    per_prompt = joined.group_by("prompt_digest").agg(pl.col("prediction").n_unique().alias("k"), pl.col("id"))
    clash = per_prompt.filter(pl.col("k") > 1)
    if clash.height:
        ids = [i for group in clash["id"].to_list() for i in group]
        raise BakeoffError(f"{path}: items with the same prompt have different predictions: {_names(ids)}")

    canon = json.dumps(sorted(zip(joined["id"].to_list(), joined["prediction"].to_list())), ensure_ascii=False)
    digest = "import:" + hashlib.sha256(canon.encode()).hexdigest()
    env = {"backend": "imported", "source": Path(path).name, **(settings or {})}
    meta = {"kind": "imported", "source": str(Path(path).resolve()), "settings": settings or {}}
    outputs = joined.unique("prompt_digest", keep="first")
    with cache.connect(ws):
        cache.register_model(ws, digest, label, str(Path(path).resolve()), meta, False, IMPORTED)
        cache.record_start(ws, version.ref, digest, IMPORTED, IMPORTED, label)
        cache.write_outputs(ws, digest, IMPORTED, IMPORTED, outputs["prompt_digest"].to_list(),
                            outputs["prediction"].to_list(), env)
        scored, n_scored = score_items(ws, items, digest, IMPORTED, IMPORTED, reward)
        if scored.height != items["item_digest"].n_unique():
            raise BakeoffError(f"{label}: {items.height - scored.height} items could not be scored")
        seconds = time.perf_counter() - t0
        cache.record_run(ws, version.ref, version.digest, digest, IMPORTED, IMPORTED,
                         {"imported": True, **env, "reward_digest": reward.digest if reward is not None else None},
                         items.height, seconds, 0)
    mean = float(items.join(scored, on="item_digest", how="inner")["score"].mean())
    return EvalResult(label, digest, items.height, outputs.height, 0, n_scored, seconds, mean, False)
