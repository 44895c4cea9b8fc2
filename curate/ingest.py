"""Ingest: input files -> one immutable dataset version, nothing lost.

``ingest(ws, paths, name)`` reads every file (``readers``), detects or applies its
format (``formats``), stamps ``--meta`` labels on rows that lack them, gives each
row its content id and commits one version (operation ``ingest``) with the
records it could not accept in the version's quarantine table. The balance
``rows_in = accepted + quarantined`` is checked for every file and overall.
"""

from __future__ import annotations

import json
import os
import queue
import re
import threading
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Generator, Iterable, Iterator

import polars as pl

from bakeoff.console import escape, log, progress, warn
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

    detected: dict[str, str] = {}
    per_file: list[dict[str, Any]] = []
    reasons: Counter[str] = Counter()
    first_bad: dict[str, Any] | None = None
    nan_rows = 0
    # The files' content digests (params, for reuse), taken by the reader as it reads.
    digests: dict[str, str] = {}
    with ws.version_writer(name) as writer, progress() as bar:
        task = bar.add_task("ingest", total=len(files))
        for path in files:
            source = os.path.abspath(path)
            n_in = accepted = quarantined = 0
            plan = None
            file_type = readers.file_type_of(path)[0] if path.is_file() else "?"
            # A pipeline of four threads, each one batch ahead of the next: reading
            # (file, line split, JSON validity, key census), converting (DuckDB's
            # fast tier, most of the work), judging (the exact tier, for the
            # records the fast tier did not accept) with numbering (content ids),
            # and this one, writing. Most of the work releases the GIL, so on two
            # cores the stages overlap instead of waiting.
            batches = _convert_batches(source, path, fmt, mapping,
                                       on_digest=lambda d, key=str(path): digests.update({key: d}))
            for file_type, batch_in, good, q, plan in _prefetch(batches, name="ingest-judge"):
                rows, n_nan = _nan_to_null(good)
                nan_rows += n_nan
                rows = _stamp_meta(rows, meta)  # labels only: the content ids stay
                writer.write_rows(rows)
                writer.write_quarantine(q)
                reasons.update(_reason_key(r) for r in q["reason"].to_list())
                if q.height and first_bad is None:
                    first_bad = q.row(0, named=True)
                n_in += batch_in
                accepted += rows.height
                quarantined += q.height
                bar.update(task, description=f"ingest {path.name}: {n_in:,} records")
            label = (plan.fmt + ("-preference" if plan.preference else "")) if plan else \
                (fmt if fmt != "auto" else "none (no records)")
            detected[str(path)] = label
            per_file.append({"path": str(path), "file_type": file_type, "format": label,
                             "rows_in": n_in, "accepted": accepted, "quarantined": quarantined})
            log(escape(f"{path}: {file_type}, {'detected ' if fmt == 'auto' else ''}format {label}; "
                       f"{accepted} accepted, {quarantined} quarantined"))
            bar.advance(task)

        rows_in = sum(f["rows_in"] for f in per_file)
        accepted, quarantined = writer.rows, writer.quarantined
        if rows_in != accepted + quarantined:
            raise AssertionError(f"{rows_in} records in != {accepted} accepted + {quarantined} quarantined")
        reasons_by_count = dict(reasons.most_common())

        if strict and quarantined:
            first = first_bad or {}
            raise BakeoffError(
                f"--strict: {quarantined} of {rows_in} records quarantined, no version written "
                f"(first: {first.get('source_file')}:{first.get('source_line')}: {first.get('reason')}; "
                f"by reason: {', '.join(f'{k} ({v})' for k, v in list(reasons_by_count.items())[:3])})")
        if nan_rows:
            warn(f"{nan_rows} rows had NaN or Infinity in columns kept in 'extra'; JSON has no such "
                 "numbers, so they are stored as null")
        if quarantined:
            warn(f"{quarantined} of {rows_in} records quarantined (see: bakeoff data quarantine {name})")
        if not rows_in:
            warn("the input holds no records; writing an empty version")

        params = {"paths": [str(p) for p in files], "format": fmt, "detected": detected,
                  "map": mapping, "meta": meta, "strict": strict,
                  # lets a re-run of the loop reuse this version
                  "file_digests": [digests[str(p)] for p in files]}
        version = writer.commit(
            operation="ingest", params=params, parents=[],
            report={"files": per_file, "quarantine_reasons": reasons_by_count},
            counts={"kind": dict(writer.kinds), "ledger": 0, "quarantined": quarantined,
                    "rows_in": rows_in, "accepted": accepted},
            renumber_repeats=True,
        )
    return IngestResult(version=version, rows_in=rows_in, accepted=accepted, quarantined=quarantined,
                        detected=detected, files=per_file, reasons=reasons_by_count)


def _convert_batches(source: str, path: Path, fmt: str, mapping: dict[str, str],
                     on_digest: Callable[[str], None] | None = None,
                     ) -> Iterator[tuple[str, int, pl.DataFrame, pl.DataFrame, formats.Plan | None]]:
    """Each batch of one file as (file type, records in, converted rows with their
    content ids, quarantine, the file's plan). The records the fast tier did not accept
    are judged here by the exact tier (``formats.exact_tier``, a DuckDB
    connection of its own), while the fast tier works on the next batch."""
    con = readers.connect(threads=1)
    batches = _prefetch(_fast_batches(source, path, fmt, mapping, on_digest), name="ingest-convert")
    try:
        for file_type, rows_in, first, redo, quarantined, plan, batch_plan in batches:
            if batch_plan is not None:
                good, rejected = formats.exact_tier(con, batch_plan, first, redo)
            else:
                good, rejected = pl.DataFrame(), pl.DataFrame(
                    schema={"source_line": pl.Int64, "reason": pl.String, "raw": pl.String})
            q = pl.concat([
                *quarantined,
                rejected.select(pl.lit(source).alias("source_file"), "source_line", "reason",
                                pl.col("raw").str.strip_chars_end("\r\n").str.slice(0, readers.RAW_LIMIT)),
            ], how="vertical_relaxed").cast(QUARANTINE_SCHEMA).sort("source_line")  # type: ignore[arg-type]
            # Nothing disappears: every record of the batch is a row or a quarantine entry.
            if rows_in != good.height + q.height:
                raise AssertionError(f"{path}: {rows_in} records in != {good.height} accepted "
                                     f"+ {q.height} quarantined")
            # Content ids here rather than in the writing thread, which had the
            # more work: numbered within the batch; content repeated in another
            # batch is renumbered at commit (VersionWriter, renumber_repeats).
            rows = with_ids(conform(good.with_columns(pl.lit(source).alias("source_file")) if good.width
                                    else pl.DataFrame()))
            yield file_type, rows_in, rows, q, plan
    finally:
        batches.close()  # stops the converting thread now, not at garbage collection
        con.close()


def _fast_batches(source: str, path: Path, fmt: str, mapping: dict[str, str],
                  on_digest: Callable[[str], None] | None = None) -> Iterator[tuple[
        str, int, pl.DataFrame, pl.DataFrame | None, list[pl.DataFrame], formats.Plan | None, formats.Plan | None]]:
    """Each batch of one file through the fast tier: (file type, records in, the
    rows it accepted, the records to judge again, the quarantine so far, the
    file's plan, the batch's plan: None for a batch without records). The
    batch's text is dropped here. One DuckDB connection serves every batch."""
    plan = None
    con = readers.connect()
    batches = _prefetch(_with_census(readers.iter_records(source, on_digest=on_digest)), name="ingest-read")
    try:
        for recs, (n, stats, n_dup) in batches:
            table = recs.table
            con.register("recs", table)
            quarantined = [recs.quarantine]
            if n_dup:
                dup_q, rest = formats.split_bad_keys(con, mapping.get("meta", "meta"))
                if dup_q.height:
                    table = rest
                    con.register("recs", table)
                    n -= dup_q.height
                del rest
                quarantined.append(dup_q.select(
                    pl.lit(source).alias("source_file"), "source_line", "reason",
                    pl.col("raw").str.strip_chars_end("\r\n").str.slice(0, readers.RAW_LIMIT)))
            if plan is None and n:
                # The format is decided on the first batch with records
                # (BATCH_BYTES of input); later batches only add their keys.
                file_fmt = formats.detect(str(path), mapping, n, stats) if fmt == "auto" else fmt
                plan = formats.plan_for(con, file_fmt, mapping, n, stats)
            batch_plan = replace(plan, keys=sorted(stats)) if n else None  # type: ignore[arg-type]
            first, redo = (formats.fast_tier(con, batch_plan, table) if batch_plan is not None
                           else (pl.DataFrame(), None))
            con.unregister("recs")  # the batch's Arrow table is not kept alive
            file_type, rows_in = recs.file_type, recs.rows_in
            del recs, table  # not held while this batch waits in the queue
            yield file_type, rows_in, first, redo, quarantined, plan, batch_plan
    finally:
        batches.close()  # stops the reading thread now, not at garbage collection
        con.close()


Census = tuple[int, dict[str, int], int]  # formats.key_census: records, {key: records}, bad keys


def _with_census(batches: Iterator[readers.Records]) -> Iterator[tuple[readers.Records, Census]]:
    """Each batch with its key census (``formats.key_census``), taken in the
    reading thread with a connection of its own: converting is the pipeline's
    slowest stage, and the census was a sixth of its time."""
    con = readers.connect(threads=1)
    try:
        for recs in batches:
            con.register("recs", recs.table)
            census = formats.key_census(con)
            con.unregister("recs")
            yield recs, census
    finally:
        close = getattr(batches, "close", None)
        if close is not None:
            close()
        con.close()


_DONE = object()


def _prefetch(items: Iterable[Any], depth: int = 1,
              name: str = "ingest-convert") -> Generator[Any, None, None]:
    """``items`` produced in a background thread, at most ``depth`` ahead of the
    consumer (so memory holds ``depth + 2`` items at most); an exception there
    is raised here, and leaving the loop early stops the thread."""
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    return
            put((_DONE, None))
        except BaseException as exc:  # handed to the consumer, raised there
            put((None, exc))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()  # a generator's own clean-up runs here, not at garbage collection

    worker = threading.Thread(target=produce, name=name, daemon=True)
    worker.start()
    try:
        while True:
            item, exc = slots.get()
            if exc is not None:
                raise exc
            if item is _DONE:
                return
            yield item
    finally:
        stop.set()
        worker.join()


_NON_FINITE = re.compile(r"NaN|Infinity")


def _nan_to_null(rows: pl.DataFrame) -> tuple[pl.DataFrame, int]:
    """``extra`` as valid JSON: DuckDB reads NaN/Infinity literals (and Parquet
    floats) and writes them back as-is, which no strict JSON reader accepts. The
    few rows that may hold one are re-serialised in Python with those numbers as
    null (the count is reported)."""
    if "extra" not in rows.columns or not rows.height:
        return rows, 0
    maybe = rows["extra"].str.contains(_NON_FINITE.pattern).fill_null(False)
    if not maybe.any():
        return rows, 0
    changed = 0

    def clean(value: Any) -> Any:
        if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    def fix(text: str) -> str:
        nonlocal changed
        new = json.dumps(clean(json.loads(text)), ensure_ascii=False, separators=(",", ":"))
        if new != json.dumps(json.loads(text), ensure_ascii=False, separators=(",", ":")):
            changed += 1
            return new
        return text

    idx = maybe.arg_true()
    fixed = [fix(t) for t in rows["extra"].gather(idx).to_list()]
    extra = rows["extra"].scatter(idx, pl.Series(fixed, dtype=pl.String))
    return rows.with_columns(extra.alias("extra")), changed


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
