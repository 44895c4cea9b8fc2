"""Ingest: input files -> one immutable dataset version, nothing lost.

``ingest(ws, paths, name)`` reads every file (``readers``), detects or applies its
format (``formats``), stamps ``--meta`` labels on rows that lack them, gives each
row its content id and commits one version (operation ``ingest``) with the
records it could not accept in the version's quarantine table. The balance
``rows_in = accepted + quarantined`` is checked for every file and overall.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import polars as pl

from bakeoff.console import log, progress, warn
from bakeoff.curate import formats, readers
from bakeoff.schema import META_FIELDS, conform, with_ids
from bakeoff.workspace import QUARANTINE_SCHEMA, BakeoffError, Version, Workspace, validate_name

INPUT_SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv", ".tsv", ".parquet", ".pq")


@dataclass
class IngestResult:
    version: Version
    rows_in: int
    accepted: int
    quarantined: int
    detected: dict[str, str]
    files: list[dict[str, Any]] = field(default_factory=list)
    reasons: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version.ref, "digest": self.version.digest,
            "rows_in": self.rows_in, "accepted": self.accepted, "quarantined": self.quarantined,
            "detected": self.detected, "files": self.files, "quarantine_reasons": self.reasons,
        }


def parse_pairs(items: Iterable[str], what: str) -> dict[str, str]:
    """``["a=b", ...]`` -> ``{"a": "b"}`` with a one-line error for a bad item."""
    out: dict[str, str] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise BakeoffError(f"{what} expects KEY=VALUE, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def expand_paths(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Files as given; a directory stands for the input files directly inside it."""
    out: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and
                           any(f.name.lower().endswith(s) or f.name.lower().endswith(s + ".gz")
                               for s in INPUT_SUFFIXES))
            if not found:
                raise BakeoffError(f"{p}: directory has no input files ({', '.join(INPUT_SUFFIXES)}, .gz)")
            out += found
        else:
            out.append(p)
    if not out:
        raise BakeoffError("no input files given")
    return out


def _reason_key(reason: str) -> str:
    """Group quarantine reasons for the summary: drop the positional detail."""
    key = re.sub(r"\s*\([^)]*\)", "", reason)
    key = re.sub(r" at (line|column) \d+.*$", "", key)
    return re.sub(r"(?<=\s)\d+", "N", key).strip()


def ingest(ws: Workspace, paths: Iterable[str | os.PathLike], name: str, fmt: str = "auto",
           mapping: dict[str, str] | None = None, meta: dict[str, Any] | None = None,
           strict: bool = False) -> IngestResult:
    """Read ``paths`` into a new version ``name@vN``.

    ``fmt``: ``auto`` or one of ``formats.FORMAT_NAMES``. ``mapping``: canonical
    field -> input column (``{"output": "answer"}``). ``meta``: labels stamped on
    rows that lack them (``{"domain": "finance", "tags": "a,b"}``). ``strict``:
    refuse to write a version if any record was quarantined.
    """
    validate_name(name)  # before reading anything
    if fmt not in ("auto", *formats.FORMAT_NAMES):
        raise BakeoffError(f"unknown format {fmt!r}; expected auto or one of {', '.join(formats.FORMAT_NAMES)}")
    mapping = dict(mapping or {})
    bad = sorted(set(mapping) - set(formats.MAPPABLE))
    if bad:
        raise BakeoffError(f"--map: unknown field {bad[0]!r}; fields are {', '.join(formats.MAPPABLE)}")
    meta = dict(meta or {})
    bad = sorted(set(meta) - set(META_FIELDS))
    if bad:
        raise BakeoffError(f"--meta: unknown label {bad[0]!r}; labels are {', '.join(META_FIELDS)}")
    files = expand_paths(paths)

    frames: list[pl.DataFrame] = []
    quarantines: list[pl.DataFrame] = []
    detected: dict[str, str] = {}
    per_file: list[dict[str, Any]] = []
    with progress() as bar:
        task = bar.add_task("ingest", total=len(files))
        for path in files:
            bar.update(task, description=f"ingest {path.name}")
            source = os.path.abspath(path)
            recs = readers.read_records(source)
            con = readers.connect()
            try:
                con.register("recs", recs.table)
                n, stats = formats.key_stats(con)
                file_fmt = formats.detect(str(path), mapping, n, stats) if fmt == "auto" else fmt
                plan = formats.plan_for(con, file_fmt, mapping, n, stats)
                good, rejected = formats.convert(con, plan)
            finally:
                con.close()
            label = file_fmt + ("-preference" if plan.preference else "")
            detected[str(path)] = label
            q = pl.concat([
                recs.quarantine,
                rejected.select(pl.lit(source).alias("source_file"), "source_line", "reason",
                                pl.col("raw").str.strip_chars_end("\r\n").str.slice(0, readers.RAW_LIMIT)),
            ], how="vertical_relaxed").cast(QUARANTINE_SCHEMA).sort("source_line")  # type: ignore[arg-type]
            good = good.with_columns(pl.lit(source).alias("source_file"))
            n_in = recs.rows_in
            # Nothing disappears: every record of the file is a row or a quarantine entry.
            if n_in != good.height + q.height:
                raise AssertionError(f"{path}: {n_in} records in != {good.height} accepted + {q.height} quarantined")
            frames.append(good)
            quarantines.append(q)
            per_file.append({"path": str(path), "file_type": recs.file_type, "format": label,
                             "rows_in": n_in, "accepted": good.height, "quarantined": q.height})
            log(f"{path}: {recs.file_type}, {'detected ' if fmt == 'auto' else ''}format {label}; "
                f"{good.height} accepted, {q.height} quarantined")
            bar.advance(task)

    rows = pl.concat([conform(f) for f in frames], how="vertical_relaxed") if frames else conform(pl.DataFrame())
    quarantine = pl.concat(quarantines) if quarantines else pl.DataFrame(schema=QUARANTINE_SCHEMA)
    rows = _stamp_meta(rows, meta)
    rows = with_ids(rows)

    rows_in = sum(f["rows_in"] for f in per_file)
    accepted, quarantined = rows.height, quarantine.height
    if rows_in != accepted + quarantined:
        raise AssertionError(f"{rows_in} records in != {accepted} accepted + {quarantined} quarantined")
    reasons = dict(Counter(_reason_key(r) for r in quarantine["reason"].to_list()).most_common())

    if strict and quarantined:
        first = quarantine.row(0, named=True)
        raise BakeoffError(
            f"--strict: {quarantined} of {rows_in} records quarantined, no version written "
            f"(first: {first['source_file']}:{first['source_line']}: {first['reason']}; "
            f"by reason: {', '.join(f'{k} ({v})' for k, v in list(reasons.items())[:3])})")
    if quarantined:
        warn(f"{quarantined} of {rows_in} records quarantined (see: bakeoff data quarantine {name})")
    if not rows_in:
        warn("the input holds no records; writing an empty version")

    params = {"paths": [str(p) for p in files], "format": fmt, "detected": detected,
              "map": mapping, "meta": meta, "strict": strict}
    version = ws.commit_version(
        name, rows, operation="ingest", params=params, parents=[], quarantine=quarantine,
        report={"files": per_file, "quarantine_reasons": reasons},
        counts={"rows_in": rows_in, "accepted": accepted, "quarantined": quarantined},
    )
    return IngestResult(version=version, rows_in=rows_in, accepted=accepted, quarantined=quarantined,
                        detected=detected, files=per_file, reasons=reasons)


def _stamp_meta(rows: pl.DataFrame, meta: dict[str, Any]) -> pl.DataFrame:
    """``--meta`` values fill labels a row lacks; labels the row has win."""
    exprs = []
    for key, value in meta.items():
        if key == "tags":
            tags = [t.strip() for t in value.split(",") if t.strip()] if isinstance(value, str) else list(value)
            exprs.append(
                pl.when(pl.col("tags").is_null() | (pl.col("tags").list.len() == 0))
                .then(pl.lit(tags, dtype=pl.List(pl.String)))
                .otherwise(pl.col("tags")).alias("tags"))
        else:
            exprs.append(pl.col(key).fill_null(pl.lit(str(value))).alias(key))
    return rows.with_columns(exprs) if exprs else rows
