"""What a duplicate check compares: a row as a list of *segments*.

Two rows are duplicates only when **every** segment of one matches its
counterpart in the other -- never on one string of the whole conversation,
where a long shared context (a table that six questions ask about, a system
prompt) dominates the shingles or the embedding and makes different questions
look alike.

The default key, ``turns``, makes a segment of every turn: each prompt turn
(system, user, tool), each assistant turn, and for preference rows each turn of
``chosen`` *and* of ``rejected`` (two preference rows that differ only in the
rejected answer are different rows). A user turn made of several paragraphs is
two segments: its context (all but the last paragraph) and its last paragraph
(usually the question), so "the same table, another question" differs in a
segment of its own, however long the table.

A recipe may name the key when the user knows better (``key: [last_user,
response]``, or a label column such as ``meta.group`` plus ``last_user``).
Key items:

==================  ============================================================
``turns``           every turn, as above (the default)
``prompt``          the prompt turns only (system, user, tool), as above
``response``        the answer turns only (assistant; chosen and rejected)
``last_user``       the last user turn, whole
``system``          the system turns
``chosen``          the chosen turns; ``rejected``: the rejected turns
``<column>``        a label: ``domain``, ``task``, ... or ``meta.group`` /
                    ``extra.<path>`` (a key in the row's ``extra`` JSON); labels
                    must be equal, not similar
==================  ============================================================

``segments(df, key)`` returns the segment texts (one long column), each row's
offsets into it and a *shape* per row (a hash of its segment kinds and of the
numbers in each segment): rows of different shapes are never duplicates, so
"revenue in 2018" and "revenue in 2019", or the answers "$2.5 million" and
"$2.6 million", never are, however alike their words or embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from bakeoff.workspace import BakeoffError

TURN_ITEMS = ("turns", "prompt", "response", "last_user", "system", "chosen", "rejected")
LABEL_COLUMNS = ("domain", "doctype", "task", "kind", "source_file")
#: scope (the older option) -> key
SCOPE_KEYS = {"all": ["turns"], "prompt": ["prompt"], "response": ["response"]}

# a user turn = context + last paragraph, split at the last blank line
_LAST_PARAGRAPH = r"(?s)^(.*\S)\s*\n[ \t]*\n\s*(\S.*)$"


@dataclass
class Segments:
    """``texts[offsets[i]:offsets[i+1]]`` are row i's segments; ``kinds`` names
    each segment (``user``, ``user:context``, ``user:last``, ``assistant``,
    ``rejected``, ``label:meta.group``...); ``shape`` is one int64 per row."""

    texts: pl.Series
    kinds: pl.Series
    offsets: np.ndarray
    shape: np.ndarray

    def of_row(self, i: int) -> list[tuple[str, str]]:
        lo, hi = int(self.offsets[i]), int(self.offsets[i + 1])
        return list(zip(self.kinds[lo:hi].to_list(), self.texts[lo:hi].to_list()))


def check_key(key: list[str] | str | None) -> list[str]:
    """The key as a list of items; an unknown item is a one-line error."""
    if key is None:
        return ["turns"]
    items = [key] if isinstance(key, str) else list(key)
    if not items:
        raise BakeoffError("dedup key: give at least one item, e.g. [turns] or [last_user, response]")
    for item in items:
        if not isinstance(item, str) or not item:
            raise BakeoffError(f"dedup key: items are names, got {item!r}")
        if item in TURN_ITEMS or item in LABEL_COLUMNS or item.startswith(("meta.", "extra.")):
            continue
        raise BakeoffError(f"dedup key: unknown item {item!r}; use {', '.join(TURN_ITEMS)}, a label column "
                           f"({', '.join(LABEL_COLUMNS)}) or meta.<field> / extra.<path>")
    return items


def _turns(col: str, roles: tuple[str, ...] | None, tag: str | None = None) -> pl.Expr:
    """list[struct{k, t}] of the turns of ``col`` whose role is in ``roles``."""
    msgs = pl.col(col).fill_null(pl.lit([], dtype=pl.List(pl.Struct({"role": pl.String, "content": pl.String}))))
    if roles is not None:
        msgs = msgs.list.eval(pl.element().filter(pl.element().struct.field("role").is_in(list(roles))))
    kind = pl.lit(tag) if tag else pl.element().struct.field("role")
    return msgs.list.eval(pl.struct(kind.alias("k"), pl.element().struct.field("content").fill_null("").alias("t")))


def _item(item: str, df: pl.DataFrame) -> pl.Expr:
    is_sft = pl.col("kind") == "sft"
    if item in ("turns", "prompt", "response"):
        parts = []
        if item != "response":
            parts.append(pl.when(is_sft).then(_turns("messages", ("system", "user", "tool")))
                         .otherwise(_turns("messages", None)))
        if item != "prompt":
            parts.append(pl.when(is_sft).then(_turns("messages", ("assistant",)))
                         .otherwise(pl.concat_list([_turns("chosen", None, "chosen"),
                                                    _turns("rejected", None, "rejected")])))
        return pl.concat_list(parts) if len(parts) > 1 else parts[0]
    if item == "last_user":
        return _turns("messages", ("user",)).list.slice(-1, 1).list.eval(
            pl.struct(pl.lit("last_user").alias("k"), pl.element().struct.field("t")))
    if item == "system":
        return _turns("messages", ("system",))
    if item in ("chosen", "rejected"):
        return _turns(item, None, item)
    # a label: exact equality, so its value becomes one opaque word (a hash),
    # which normalises to itself and is a single shingle
    if item.startswith(("meta.", "extra.")):
        path = item.removeprefix("extra.")
        value = pl.col("extra").fill_null("{}").str.json_path_match("$." + path)
    elif item in df.columns:
        value = pl.col(item).cast(pl.String)
    else:
        raise BakeoffError(f"dedup key: no column {item!r} (columns: {', '.join(df.columns)})")
    word = pl.lit("L") + value.fill_null("").hash(seed=17).cast(pl.String)
    return pl.concat_list(pl.struct(pl.lit(f"label:{item}").alias("k"), word.alias("t")))


def segments(df: pl.DataFrame, key: list[str] | str | None = None) -> Segments:
    """The segments of every row of ``df`` under ``key`` (see the module doc)."""
    items = check_key(key)
    if df.height == 0:
        return Segments(pl.Series("text", [], dtype=pl.String), pl.Series("kind", [], dtype=pl.String),
                        np.zeros(1, np.int64), np.zeros(0, np.int64))
    per_row = df.select(pl.concat_list([_item(i, df) for i in items]).alias("s"))
    long = (per_row.with_row_index("row").explode("s").drop_nulls("s").unnest("s")
            .with_columns(pl.col("t").str.extract(_LAST_PARAGRAPH, 1).alias("ctx"),
                          pl.col("t").str.extract(_LAST_PARAGRAPH, 2).alias("last")))
    split = (pl.col("k") == "user") & pl.col("ctx").is_not_null()
    long = long.with_columns(
        pl.when(split).then(pl.concat_list([pl.struct(pl.lit("user:context").alias("k"), pl.col("ctx").alias("t")),
                                            pl.struct(pl.lit("user:last").alias("k"), pl.col("last").alias("t"))]))
        .otherwise(pl.concat_list(pl.struct("k", "t"))).alias("s")
    ).select("row", "s").explode("s").unnest("s")
    counts = long.group_by("row").len()
    n_seg = np.zeros(df.height, np.int64)
    n_seg[counts["row"].to_numpy()] = counts["len"].to_numpy()
    offsets = np.zeros(df.height + 1, np.int64)
    np.cumsum(n_seg, out=offsets[1:])
    shape = np.zeros(df.height, np.int64)
    # the shape: the kinds of the segments and the numbers in each -- "revenue in
    # 2018" and "revenue in 2019" (or "$2.5 million" and "$2.6 million") are
    # different however alike their words or embeddings
    numbers = pl.col("t").str.extract_all(r"\d+(?:[.,]\d+)*").list.join(" ")
    shapes = long.group_by("row", maintain_order=True).agg(
        (pl.col("k") + ":" + numbers).str.join("|").hash(seed=23).alias("h"))
    shape[shapes["row"].to_numpy()] = shapes["h"].to_numpy().view(np.int64)
    return Segments(texts=long["t"].fill_null("").rename("text"), kinds=long["k"].rename("kind"),
                    offsets=offsets, shape=shape)


__all__ = ["Segments", "segments", "check_key", "TURN_ITEMS", "SCOPE_KEYS"]
