"""The shared row schema: one polars table layout for every dataset version.

Three kinds of row share one layout so that every stage (curate, testsets, train,
evaluate) reads the same columns:

- ``sft``        ``messages`` is the whole conversation (system/user/assistant turns).
- ``preference`` ``messages`` is the prompt; ``chosen`` and ``rejected`` are the two
                 candidate continuations (lists of assistant turns), as TRL's
                 conversational preference format has them.
- ``prompt``     ``messages`` is the prompt only (PPO rollouts start from it).

Every row carries a stable ``id`` (a hash of its content), where it came from
(``source_file``/``source_line``), its labels (``domain``, ``doctype``, ``task``,
``tags``) and ``extra``: a JSON object of the input columns bakeoff does not know,
kept so nothing the user had is dropped.

Stages may add columns (a test set adds ``slice``, ``reference`` and ``scoring``);
the core columns below are always present.
"""

from __future__ import annotations

import hashlib
import io
import json
from typing import Any, Iterable

import polars as pl

KINDS = ("sft", "preference", "prompt")
ROLES = ("system", "user", "assistant", "tool")

MESSAGE = pl.Struct({"role": pl.String, "content": pl.String})
MESSAGES = pl.List(MESSAGE)

#: The core columns of every version, in order.
SCHEMA: dict[str, pl.DataType] = {
    "id": pl.String,
    "kind": pl.String,
    "messages": MESSAGES,
    "chosen": MESSAGES,
    "rejected": MESSAGES,
    "domain": pl.String,
    "doctype": pl.String,
    "task": pl.String,
    "tags": pl.List(pl.String),
    "source_file": pl.String,
    "source_line": pl.Int64,
    "extra": pl.String,
}
META_FIELDS = ("domain", "doctype", "task", "tags")

#: Columns that make up a row's content: the id hashes these and nothing else, so
#: relabelling a row or ingesting it from another file keeps its id.
CONTENT_FIELDS = ("kind", "messages", "chosen", "rejected")

#: Columns a test set adds (see bakeoff.testsets).
TESTSET_COLUMNS: dict[str, pl.DataType] = {
    "slice": pl.String,
    "reference": pl.String,
    "scoring": pl.String,  # JSON: {"method": ..., options}
}


def empty_frame(extra_columns: dict[str, pl.DataType] | None = None) -> pl.DataFrame:
    """An empty table with the core schema (plus ``extra_columns``)."""
    return pl.DataFrame(schema={**SCHEMA, **(extra_columns or {})})


def conform(df: pl.DataFrame) -> pl.DataFrame:
    """Add missing core columns as nulls, cast core columns to their types and put
    them first; columns a stage added are kept after them."""
    missing = [pl.lit(None, dtype=t).alias(c) for c, t in SCHEMA.items() if c not in df.columns]
    if missing:
        df = df.with_columns(missing)
    df = df.with_columns([pl.col(c).cast(t) for c, t in SCHEMA.items()])
    others = [c for c in df.columns if c not in SCHEMA]
    return df.select([*SCHEMA, *others])


# --- content ids -------------------------------------------------------------

def _canonical_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def content_hash(kind: str, messages: list | None, chosen: list | None = None,
                 rejected: list | None = None) -> str:
    """BLAKE2b-128 (hex) of a row's canonical content: the id ``with_ids`` gives a
    row with this content (its first occurrence)."""
    df = pl.DataFrame({"kind": [kind], "messages": [messages], "chosen": [chosen], "rejected": [rejected]},
                      schema={c: SCHEMA[c] for c in CONTENT_FIELDS})
    return with_ids(df)["id"][0]


def with_ids(df: pl.DataFrame) -> pl.DataFrame:
    """Set ``id`` from each row's content.

    Two rows with the same content would share an id; the second and later
    occurrences get ``<hash>~2``, ``<hash>~3``... so ids stay unique within a
    version while still saying "this is a copy of that content".
    """
    # Canonical content per row: JSON serialised by polars (vectorized; struct
    # fields in CONTENT_FIELDS order, message fields in MESSAGE order, so identical
    # content gives identical bytes whatever file format it came from).
    # Hashed with hashlib's BLAKE2b-128 in a loop rather than DuckDB's vectorized
    # sha256: on this hardware (no SHA extensions) DuckDB hashes ~150 MB/s and
    # BLAKE2b ~2x that even with the per-row call, and hashing is the cost here.
    # A numba BLAKE2b kernel over the column's Arrow buffers was tried (bit-identical,
    # no Python call per row): ~480 MB/s against hashlib's ~780 MB/s (SIMD), so
    # 0.9 s per million chat rows against 1.15 s here, but loading numba and the
    # kernel costs ~0.6 s per process: a loss below ~2.5M rows.
    # Hashed 2048 rows at a time: each slice's Python bytes and str objects are
    # freed before the next is made, so they reuse the same memory instead of
    # faulting in fresh pages for the whole frame (100k chat rows: ~60 page
    # faults against ~13,000, 16 % less time for this loop).
    canon = df.select(pl.struct(list(CONTENT_FIELDS)).struct.json_encode().cast(pl.Binary))
    blake2b = hashlib.blake2b
    hashes = [pl.Series("id", [blake2b(c, digest_size=16).hexdigest() for c in part.to_series().to_list()],
                        dtype=pl.String) for part in canon.iter_slices(2048)]
    df = df.with_columns(pl.concat(hashes) if hashes else pl.Series("id", [], dtype=pl.String))
    if not df["id"].is_duplicated().any():  # the common case; the window below is costly
        return df
    occurrence = pl.int_range(pl.len()).over("id") + 1
    return df.with_columns(
        pl.when(occurrence > 1)
        .then(pl.col("id") + "~" + occurrence.cast(pl.String))
        .otherwise(pl.col("id"))
        .alias("id")
    )


def version_digest(df: pl.DataFrame) -> str:
    """SHA-256 (hex) over the canonical rows of a version: rows sorted by id,
    every column but the source location, serialised as NDJSON.

    The content columns (messages, chosen, rejected) are left out of the
    serialisation because the id already is a hash of them: the digest still
    changes with any change of content, at a fraction of the cost of re-encoding
    every conversation.
    """
    skip = {"source_file", "source_line", *CONTENT_FIELDS} - {"kind"}
    cols = [c for c in df.columns if c not in skip]
    canon = df.select(sorted(cols))
    if canon.height and canon["id"].str.contains("^[0-9a-f]{16}").all():
        # Content ids start with 16 lowercase hex digits, whose numeric order is
        # their text order: sorting on that integer (ties broken by the whole id)
        # gives exactly the id order at a quarter of the cost of a string sort.
        key = pl.col("id").str.slice(0, 16).str.to_integer(base=16, dtype=pl.UInt64)
        canon = canon.sort(key, "id")
    else:
        canon = canon.sort("id")
    buf = io.BytesIO()  # bytes straight from polars: no str round trip
    canon.write_ndjson(buf)
    return hashlib.sha256(buf.getbuffer()).hexdigest()


# --- text views of a row (shared by filters, dedup, embeddings, test sets) -----

def _join_contents(col: str, roles: Iterable[str] | None) -> pl.Expr:
    msgs = pl.col(col)
    if roles is not None:
        msgs = msgs.list.eval(pl.element().filter(pl.element().struct.field("role").is_in(list(roles))))
    return msgs.list.eval(pl.element().struct.field("content")).list.join("\n").fill_null("")


def prompt_text() -> pl.Expr:
    """The prompt side of a row as one string: every non-assistant turn of an
    ``sft`` conversation, or the prompt messages of a preference/prompt row."""
    return (
        pl.when(pl.col("kind") == "sft")
        .then(_join_contents("messages", ("system", "user", "tool")))
        .otherwise(_join_contents("messages", None))
        .alias("prompt_text")
    )


def response_text() -> pl.Expr:
    """The response side: assistant turns of an ``sft`` row, the chosen answer of a
    preference row, empty for a prompt row."""
    return (
        pl.when(pl.col("kind") == "sft")
        .then(_join_contents("messages", ("assistant",)))
        .when(pl.col("kind") == "preference")
        .then(_join_contents("chosen", None))
        .otherwise(pl.lit(""))
        .alias("response_text")
    )


def conversation_text() -> pl.Expr:
    """Prompt and response joined: the whole row as one string."""
    return pl.concat_str([prompt_text(), response_text()], separator="\n").alias("text")


def text_for_scope(scope: str) -> pl.Expr:
    """``scope`` is ``prompt``, ``response`` or ``all``."""
    exprs = {"prompt": prompt_text, "response": response_text, "all": conversation_text}
    if scope not in exprs:
        raise ValueError(f"unknown text scope {scope!r}; expected one of {sorted(exprs)}")
    return exprs[scope]().alias("text")


def prompt_messages(row: dict) -> list[dict]:
    """Messages to send to a model for one row: for an ``sft`` row, the
    conversation up to (not including) its last assistant turn."""
    msgs = list(row["messages"] or [])
    if row["kind"] == "sft":
        while msgs and msgs[-1]["role"] == "assistant":
            msgs.pop()
    return msgs


def reference_answer(row: dict) -> str:
    """The last assistant turn of an ``sft`` row, or the chosen answer."""
    if row.get("kind") == "preference":
        return "\n".join(m["content"] for m in row.get("chosen") or [])
    msgs = row.get("messages") or []
    return msgs[-1]["content"] if msgs and msgs[-1]["role"] == "assistant" else ""
