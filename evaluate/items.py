"""Test items as the evaluator sees them: prompt, reference, scoring spec, slice,
and the digests the cache keys on.

A test set row (see the test-set contract) is an ``sft`` conversation whose last
assistant turn is the reference, with ``slice``, ``reference`` and ``scoring``
columns. A hand-made test set without those columns works too: the reference is
the last assistant turn, scoring is token F1 and the slice is unknown.

Two digests per item:

- ``prompt_digest`` = sha256 of the prompt messages: what a model's *output*
  depends on (outputs are shared by every test set version containing the prompt).
- ``item_digest`` = sha256 of prompt, reference and scoring spec: what a *score*
  depends on.
"""

from __future__ import annotations

import json

import duckdb
import polars as pl

from bakeoff.evaluate.scorers import parse_scoring, scorer_version
from bakeoff.workspace import BakeoffError, Version, Workspace

UNSLICED = "unsliced"


def load_items(ws: Workspace, testset: str, reward_digest: str | None = None) -> tuple[Version, pl.DataFrame]:
    """(version, items): one row per test item with columns ``id, prompt,
    reference, scoring, method, scorer, slice, task, domain, prompt_digest,
    item_digest`` (``prompt`` is a list of {role, content})."""
    version = ws.resolve(testset)
    df = ws.load(version)
    if df.height == 0:
        raise BakeoffError(f"test set {version.ref} has no rows")
    bad = df.filter(pl.col("kind") != "sft").height
    if bad:
        raise BakeoffError(f"test set {version.ref} has {bad} rows that are not 'sft' conversations")
    msgs = pl.col("messages")
    last_is_assistant = msgs.list.last().struct.field("role") == "assistant"
    df = df.with_columns(
        # Prompt = messages minus the final assistant turn (the reference).
        pl.when(last_is_assistant).then(msgs.list.head(msgs.list.len() - 1)).otherwise(msgs).alias("prompt"),
        pl.when(last_is_assistant).then(msgs.list.last().struct.field("content")).otherwise(pl.lit(""))
        .alias("_last_answer"),
    )
    if "reference" not in df.columns:
        df = df.with_columns(pl.col("_last_answer").alias("reference"))
    else:
        df = df.with_columns(pl.col("reference").fill_null(pl.col("_last_answer")))
    if "scoring" not in df.columns:
        df = df.with_columns(pl.lit(None, dtype=pl.String).alias("scoring"))
    if "source_id" not in df.columns:  # the item's id in the file it was imported from
        df = df.with_columns(pl.lit(None, dtype=pl.String).alias("source_id"))
    if "slice" not in df.columns:
        df = df.with_columns(pl.lit(UNSLICED).alias("slice"))
    df = df.with_columns(pl.col("slice").fill_null(UNSLICED), pl.col("task").fill_null(""),
                         pl.col("domain").fill_null(""))

    # Scoring specs: parsed once per distinct JSON string, not once per row.
    specs = {}
    for raw in df["scoring"].unique().to_list():
        spec = parse_scoring(raw)
        specs[raw] = (json.dumps(spec, sort_keys=True), spec["method"], scorer_version(spec, reward_digest))
    spec_df = pl.DataFrame({"scoring": list(specs), "scoring_norm": [v[0] for v in specs.values()],
                            "method": [v[1] for v in specs.values()], "scorer": [v[2] for v in specs.values()]},
                           schema={"scoring": pl.String, "scoring_norm": pl.String, "method": pl.String,
                                   "scorer": pl.String})
    df = df.join(spec_df, on="scoring", how="left", nulls_equal=True)

    # Digests: canonical JSON by polars, sha256 by DuckDB (vectorized, as in
    # schema.with_ids); DuckDB reads the local frame `canon` by name.
    canon = df.select(pl.struct("prompt").struct.json_encode().alias("p")).with_columns(  # noqa: F841
        pl.concat_str([pl.col("p"), df["reference"].fill_null(""), df["scoring_norm"]],
                      separator="\u0000").alias("i"))
    digests = duckdb.sql("SELECT left(sha256(p), 32) AS pd, left(sha256(i), 32) AS idg FROM canon").pl()
    items = df.select(
        "id", "prompt", pl.col("reference").fill_null(""), pl.col("scoring_norm").alias("scoring"),
        "method", "scorer", "slice", "task", "domain", "source_id",
    ).with_columns(digests["pd"].alias("prompt_digest"), digests["idg"].alias("item_digest"))
    return version, items
