"""The workspace: one directory with an embedded DuckDB catalog and Parquet files.

Layout::

    bakeoff-workspace/
      catalog.duckdb            versions (and other stages' tables: eval cache...)
      versions/NAME/vN/         rows.parquet, ledger.parquet, quarantine.parquet, report.json
      mlflow.db, mlruns/        MLflow tracking store (SQLite) and artifacts
      cache/                    embeddings, converted models...
      runs/                     training outputs (checkpoints)
      reports/                  HTML reports

A version is immutable. Writing one is atomic: files go to a temporary folder,
are flushed, then renamed into ``versions/NAME/vN`` and the catalog row is
committed in the same DuckDB transaction that picked N. A kill at any point leaves
either no trace or an orphan folder that no catalog row points to; readers only
ever follow catalog rows.

Leftovers of killed writes (temp folders, orphan ``vN`` folders) are swept on
every open and after every commit, always while holding the catalog's write lock
(DuckDB allows one writing process at a time), so a sweep never sees a version
that another process is committing. A temp folder is only removed when no live
process holds the ``flock`` its writer takes on it (released by the kernel when
the writer dies, even on ``kill -9``).
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import re
import shutil
import threading
import time
import uuid
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import duckdb
import polars as pl

from bakeoff import __version__
from bakeoff.schema import conform, version_digest

DEFAULT_WORKSPACE = "bakeoff-workspace"
ENV_WORKSPACE = "BAKEOFF_WORKSPACE"

#: One row per dropped row: which step dropped it and why. Duplicates name the
#: row they duplicate (``kept_row_id``), the similarity and their cluster.
LEDGER_SCHEMA: dict[str, pl.DataType] = {
    "row_id": pl.String,
    "stage": pl.String,       # e.g. "filter", "dedup-exact", "dedup-minhash", "dedup-semantic"
    "rule": pl.String,        # e.g. "refusal", "pii-email", "jaccard>=0.8"
    "score": pl.Float64,
    "kept_row_id": pl.String,
    "similarity": pl.Float64,
    "cluster_id": pl.String,
    "detail": pl.String,
}

#: One row per input record that could not become a row, with where it was.
QUARANTINE_SCHEMA: dict[str, pl.DataType] = {
    "source_file": pl.String,
    "source_line": pl.Int64,
    "reason": pl.String,
    "raw": pl.String,
}

#: The one rule for every name that becomes a path: dataset and test-set names,
#: experiment names, model labels. Checked with ``fullmatch`` (``$`` would let a
#: trailing newline through) and bounded well below the 255-byte file-name limit.
NAME_MAX = 100
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,%d}" % (NAME_MAX - 1))
_REF_RE = re.compile(r"(?P<name>[A-Za-z0-9][A-Za-z0-9_.\-]{0,%d}?)(?:@v(?P<n>[0-9]{1,9}))?" % (NAME_MAX - 1))

#: Seconds a command waits for another process's catalog lock before giving up
#: (env BAKEOFF_LOCK_TIMEOUT).
LOCK_TIMEOUT = 60.0


class BakeoffError(Exception):
    """An error the CLI reports as one line, without a traceback."""


def validate_name(name: str, what: str = "dataset name") -> str:
    """``name`` if it is safe as one path component, else a one-line BakeoffError.
    Letters, digits, '_', '-', '.', starting with a letter or digit (so never
    ``..`` or an absolute path), at most NAME_MAX characters."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        shown = name if not isinstance(name, str) or len(name) <= 60 else name[:60] + "..."
        raise BakeoffError(f"invalid {what} {shown!r}: use letters, digits, '_', '-', '.' "
                           f"(starting with a letter or digit, at most {NAME_MAX} characters)")
    return name


@dataclass(frozen=True)
class Version:
    name: str
    number: int
    digest: str
    rows: int
    parents: list[str]
    operation: str
    params: dict[str, Any]
    bakeoff_version: str
    created_at: str
    counts: dict[str, Any] = field(default_factory=dict)
    path: str = ""

    @property
    def ref(self) -> str:
        return f"{self.name}@v{self.number}"

    def to_dict(self) -> dict[str, Any]:
        return {"ref": self.ref, **asdict(self)}


def parse_ref(ref: str) -> tuple[str, int | None]:
    """``NAME@vN`` -> (NAME, N); ``NAME`` -> (NAME, None) meaning the latest."""
    m = _REF_RE.fullmatch(ref.strip())
    if not m:
        raise BakeoffError(f"not a dataset reference: {ref!r} (expected NAME or NAME@vN)")
    return m["name"], int(m["n"]) if m["n"] else None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_parquet_atomic(df: pl.DataFrame, path: Path) -> None:
    """Write a Parquet file so that readers see the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    df.write_parquet(tmp)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


#: Leaf columns of a version's rows with few distinct values: the only ones worth
#: a dictionary (on ids, texts and line numbers building one is wasted work).
_DICTIONARY_COLUMNS = ("kind", "domain", "doctype", "task", "source_file", "tags.list.element",
                       *(f"{c}.list.element.role" for c in ("messages", "chosen", "rejected")))


def _leaf_paths(name: str, typ: Any) -> list[str]:
    """Parquet leaf column paths of an Arrow field (``messages.list.element.role``)."""
    import pyarrow as pa

    if pa.types.is_list(typ) or pa.types.is_large_list(typ) or pa.types.is_fixed_size_list(typ):
        return _leaf_paths(f"{name}.list.element", typ.value_type)
    if pa.types.is_map(typ):
        return (_leaf_paths(f"{name}.key_value.key", typ.key_type)
                + _leaf_paths(f"{name}.key_value.value", typ.item_type))
    if pa.types.is_struct(typ):
        return [p for f in typ for p in _leaf_paths(f"{name}.{f.name}", f.type)]
    return [name]


def _rows_parquet_options(schema: Any) -> dict[str, Any]:
    """pyarrow writer options for a version's rows: Snappy and no column
    statistics (for 1M chat rows ~1 s of CPU against ~3.5 s for polars' default,
    zstd + statistics on nested columns, the largest single cost of a commit; the
    file reads back identically), no compression of the ids (random hex: nothing
    to gain) and dictionaries only on the low-cardinality columns: ~25 % less CPU
    than LZ4 with default dictionaries, and a smaller file."""
    leaves = [p for f in schema for p in _leaf_paths(f.name, f.type)]
    return {"compression": {p: "none" if p == "id" else "snappy" for p in leaves},
            "use_dictionary": [p for p in leaves if p in _DICTIONARY_COLUMNS],
            "write_statistics": False}


#: Rows per row group of a version written in one piece. A Ray step reads a
#: version in blocks of 50k rows (``curate.on_ray.ROWS_PER_BLOCK``), and a block
#: in the middle of a row group costs decoding the rows before it: with
#: pyarrow's default groups (~1M rows) reading a version block by block decoded
#: 6x its rows (7.5 s against 1.25 s for 1M chat rows).
ROW_GROUP_ROWS = 50_000


def _write_rows_parquet(rows: pl.DataFrame, path: Path) -> None:
    """A version's rows as Parquet (``_rows_parquet_options``)."""
    import pyarrow.parquet as pq

    table = rows.to_arrow()
    pq.write_table(table, path, row_group_size=ROW_GROUP_ROWS, **_rows_parquet_options(table.schema))


class Workspace:
    """A bakeoff workspace directory. Created on first use."""

    def __init__(self, root: str | os.PathLike | None = None):
        root = root or os.environ.get(ENV_WORKSPACE) or DEFAULT_WORKSPACE
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        for sub in ("versions", "cache", "runs", "reports"):
            (self.root / sub).mkdir(exist_ok=True)
        with self.connect() as con:
            con.execute(
                """
                CREATE TABLE IF NOT EXISTS versions (
                    name VARCHAR, number INTEGER, digest VARCHAR, rows BIGINT,
                    parents VARCHAR, operation VARCHAR, params VARCHAR,
                    bakeoff_version VARCHAR, created_at VARCHAR, counts VARCHAR,
                    path VARCHAR, PRIMARY KEY (name, number))
                """
            )
            with _PROCESS_WRITE_LOCK:
                self._sweep(con)

    # --- paths ------------------------------------------------------------------
    @property
    def catalog_path(self) -> Path:
        return self.root / "catalog.duckdb"

    @property
    def tracking_uri(self) -> str:
        """MLflow tracking store: a SQLite file inside the workspace."""
        return f"sqlite:///{self.root / 'mlflow.db'}"

    @property
    def artifact_root(self) -> Path:
        return self.root / "mlruns"

    def cache_dir(self, *parts: str) -> Path:
        path = self.root.joinpath("cache", *parts)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def reports_dir(self) -> Path:
        return self.root / "reports"

    def runs_dir(self) -> Path:
        return self.root / "runs"

    @contextmanager
    def connect(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """A short-lived connection to the catalog. DuckDB allows one writing
        process at a time, so commands open the catalog only while they need it;
        a command that finds it locked waits up to LOCK_TIMEOUT seconds, then
        stops with a one-line error naming the process that holds it."""
        if read_only and not self.catalog_path.exists():
            read_only = False
        timeout = float(os.environ.get("BAKEOFF_LOCK_TIMEOUT", LOCK_TIMEOUT))
        deadline = time.monotonic() + timeout
        while True:
            try:
                con = duckdb.connect(str(self.catalog_path), read_only=read_only)
                break
            except duckdb.IOException as exc:  # another bakeoff process holds the lock
                if "lock" not in str(exc).lower():
                    raise
                if time.monotonic() > deadline:
                    raise BakeoffError(_lock_message(self.catalog_path, str(exc), timeout)) from None
                time.sleep(0.2)
        try:
            yield con
        finally:
            con.close()

    # --- reading ------------------------------------------------------------------
    def _row_to_version(self, row: tuple) -> Version:
        (name, number, digest, rows, parents, operation, params, bv, created, counts, path) = row
        return Version(name=name, number=number, digest=digest, rows=rows,
                       parents=json.loads(parents), operation=operation,
                       params=json.loads(params), bakeoff_version=bv, created_at=created,
                       counts=json.loads(counts or "{}"), path=path)

    _COLUMNS = ("name, number, digest, rows, parents, operation, params, bakeoff_version, "
                "created_at, counts, path")

    def versions(self, name: str | None = None) -> list[Version]:
        """All versions (of one dataset, if ``name``), oldest first."""
        with self.connect(read_only=True) as con:
            if name is None:
                rows = con.execute(f"SELECT {self._COLUMNS} FROM versions ORDER BY name, number").fetchall()
            else:
                rows = con.execute(f"SELECT {self._COLUMNS} FROM versions WHERE name = ? ORDER BY number",
                                   [name]).fetchall()
        return [self._row_to_version(r) for r in rows]

    def names(self) -> list[str]:
        return sorted({v.name for v in self.versions()})

    def resolve(self, ref: str) -> Version:
        """``NAME@vN`` or ``NAME`` (latest) -> the catalog entry."""
        name, number = parse_ref(ref)
        found = self.versions(name)
        if not found:
            known = ", ".join(self.names()) or "none yet"
            raise BakeoffError(f"no dataset named {name!r} in {self.root} (known: {known})")
        if number is None:
            return found[-1]
        for v in found:
            if v.number == number:
                return v
        raise BakeoffError(f"{name} has no version v{number} (latest is v{found[-1].number})")

    def version_dir(self, ref: str | Version) -> Path:
        v = ref if isinstance(ref, Version) else self.resolve(ref)
        return self.root / v.path

    def load(self, ref: str | Version, columns: list[str] | None = None) -> pl.DataFrame:
        """The rows of a version."""
        return pl.read_parquet(self.version_dir(ref) / "rows.parquet", columns=columns)

    def scan(self, ref: str | Version) -> pl.LazyFrame:
        return pl.scan_parquet(self.version_dir(ref) / "rows.parquet")

    def ledger(self, ref: str | Version) -> pl.DataFrame:
        """The rows a version's step dropped (empty if it dropped none)."""
        path = self.version_dir(ref) / "ledger.parquet"
        return pl.read_parquet(path) if path.exists() else pl.DataFrame(schema=LEDGER_SCHEMA)

    def quarantine(self, ref: str | Version) -> pl.DataFrame:
        """Input records a version's ingest could not accept, with their reasons."""
        path = self.version_dir(ref) / "quarantine.parquet"
        return pl.read_parquet(path) if path.exists() else pl.DataFrame(schema=QUARANTINE_SCHEMA)

    def report(self, ref: str | Version) -> dict[str, Any]:
        path = self.version_dir(ref) / "report.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def lineage(self, ref: str | Version) -> list[Version]:
        """The version and all its ancestors, nearest first."""
        start = ref if isinstance(ref, Version) else self.resolve(ref)
        seen, order, queue = set(), [], [start]
        while queue:
            v = queue.pop(0)
            if v.ref in seen:
                continue
            seen.add(v.ref)
            order.append(v)
            queue.extend(self.resolve(p) for p in v.parents)
        return order

    # --- writing ------------------------------------------------------------------
    def commit_version(
        self,
        name: str,
        rows: pl.DataFrame,
        *,
        operation: str,
        params: dict[str, Any] | None = None,
        parents: list[str] | None = None,
        ledger: pl.DataFrame | None = None,
        quarantine: pl.DataFrame | None = None,
        report: dict[str, Any] | None = None,
        counts: dict[str, Any] | None = None,
    ) -> Version:
        """Write a new immutable version ``name@v(N+1)`` atomically.

        ``rows`` must carry the core columns (``bakeoff.schema.SCHEMA``); extra
        columns are kept. ``ledger`` lists the rows of the parent(s) this step
        dropped (``LEDGER_SCHEMA``), ``quarantine`` the input records it could not
        accept (``QUARANTINE_SCHEMA``).
        """
        validate_name(name)
        rows = conform(rows)
        if rows["id"].null_count():
            raise ValueError("every row needs an id (bakeoff.schema.with_ids)")
        if rows["id"].n_unique() != rows.height:
            raise ValueError("row ids must be unique within a version")
        digest = version_digest(rows)
        all_counts = {
            "kind": dict(rows.group_by("kind").len().iter_rows()),
            "ledger": 0 if ledger is None else ledger.height,
            "quarantined": 0 if quarantine is None else quarantine.height,
            **(counts or {}),
        }
        with self.version_writer(name) as writer:
            writer.write_rows(rows)
            if quarantine is not None:
                writer.write_quarantine(quarantine)
            if ledger is not None:
                ledger.select([pl.col(c).cast(t) for c, t in LEDGER_SCHEMA.items()]).write_parquet(
                    writer.tmp / "ledger.parquet")
            return writer.commit(operation=operation, params=params, parents=parents, report=report,
                                 counts=all_counts, digest=digest)

    def version_writer(self, name: str) -> "VersionWriter":
        """A writer for a version built batch by batch (``with ws.version_writer(name) as w:
        w.write_rows(batch) ...; w.commit(...)``); nothing is visible until ``commit``."""
        return VersionWriter(self, name)

    @contextmanager
    def scratch_folder(self, name: str) -> Iterator[Path]:
        """A temporary folder among ``name``'s versions for a step's intermediate
        files (a streamed recipe's output between two steps): locked like a
        version being written, so a sweep leaves it alone while this process
        lives; removed on exit, or by the next sweep after a kill."""
        with VersionWriter(self, name) as writer:
            yield writer.tmp

    def _publish(self, tmp: Path, name: str, fields: dict[str, Any]) -> Version:
        """Give the staged folder ``tmp`` the next number of ``name`` and commit its
        catalog row, in one transaction under the catalog's write lock."""
        base = tmp.parent
        with _PROCESS_WRITE_LOCK, self.connect() as con:
            con.execute("BEGIN TRANSACTION")
            try:
                (last,) = con.execute("SELECT coalesce(max(number), 0) FROM versions WHERE name = ?",
                                      [name]).fetchone()
                number = last + 1
                final = base / f"v{number}"
                if final.exists():  # an orphan of a write killed before its commit
                    shutil.rmtree(final)
                os.rename(tmp, final)
                (final / _WRITER_LOCK).unlink()  # not part of the version; the flock stays held
                _fsync_dir(base)
                version = Version(name=name, number=number, bakeoff_version=__version__, created_at=_now(),
                                  path=str(final.relative_to(self.root)), **fields)
                con.execute(
                    f"INSERT INTO versions ({self._COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    [version.name, version.number, version.digest, version.rows,
                     json.dumps(version.parents), version.operation,
                     json.dumps(version.params, default=str), version.bakeoff_version,
                     version.created_at, json.dumps(version.counts, default=str), version.path],
                )
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
            # Still under the lock: no other process can be between its rename
            # and its commit, so every vN the catalog lacks is an orphan.
            self._sweep(con, name)
        return version

    def _sweep(self, con: duckdb.DuckDBPyConnection, name: str | None = None) -> None:
        """Remove leftovers of killed writes under ``versions/`` (of one dataset,
        if ``name``): temp folders whose writer is gone, and ``vN`` folders that no
        catalog row points to. ``con`` must be a writing connection: holding it
        is what makes the catalog's list of versions final while we delete."""
        top = self.root / "versions"
        bases = [top / name] if name else [p for p in top.iterdir() if p.is_dir()]
        known = {r[0] for r in con.execute("SELECT path FROM versions").fetchall()}
        for base in bases:
            if not base.is_dir():
                continue
            for child in base.iterdir():
                if child.name.startswith(".tmp-"):
                    if _temp_folder_abandoned(child):
                        shutil.rmtree(child, ignore_errors=True)
                elif re.fullmatch(r"v[0-9]+", child.name) and child.is_dir():
                    if str(child.relative_to(self.root)) not in known:
                        shutil.rmtree(child, ignore_errors=True)


class VersionWriter:
    """One version written in batches into a temp folder of its dataset, then
    published atomically (``Workspace._publish``). Memory is bounded by a batch:
    rows and quarantine stream into Parquet, and the digest is computed by DuckDB
    over the written file (its sort spills to disk past ``DIGEST_MEMORY``).
    Leaving the ``with`` block without ``commit`` removes the temp folder.

    Ids must be unique across batches. A writer whose batches were numbered by
    ``schema.with_ids`` one batch at a time (ingest) commits with
    ``renumber_repeats=True``: content repeated in another batch is then numbered
    as ``with_ids`` numbers the whole version (see ``_renumber_repeats``), so no
    table of every id seen is kept in memory."""

    def __init__(self, ws: Workspace, name: str) -> None:
        self.ws, self.name = ws, validate_name(name)
        base = ws.root / "versions" / name
        base.mkdir(parents=True, exist_ok=True)
        self.tmp = base / f".tmp-{uuid.uuid4().hex}"
        self.tmp.mkdir()
        # Held until the writer is done (or the process dies): a sweep in another
        # process leaves a temp folder alone while its writer lives.
        self._lock_fd: int | None = _lock_temp_folder(self.tmp)
        self._rows: Any = None
        self._quarantine: Any = None
        self.rows = 0
        self.quarantined = 0
        self.kinds: dict[str, int] = {}

    def __enter__(self) -> "VersionWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        for w in (self._rows, self._quarantine):
            if w is not None:
                w.close()
        self._rows = self._quarantine = None
        if self.tmp.exists():
            shutil.rmtree(self.tmp, ignore_errors=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def write_rows(self, rows: pl.DataFrame) -> None:
        """Append rows (core columns, ids set; ids unique across all batches)."""
        import pyarrow.parquet as pq

        rows = conform(rows)
        if rows["id"].null_count():
            raise ValueError("every row needs an id (bakeoff.schema.with_ids)")
        table = rows.to_arrow()
        if self._rows is None:
            self._rows = pq.ParquetWriter(self.tmp / "rows.parquet", table.schema,
                                          **_rows_parquet_options(table.schema))
        elif table.schema != self._rows.schema:
            table = table.cast(self._rows.schema)
        if table.num_rows or self.rows == 0:
            self._rows.write_table(table)
        self.rows += rows.height
        for kind, n in rows.group_by("kind").len().iter_rows():
            self.kinds[kind] = self.kinds.get(kind, 0) + n

    def write_quarantine(self, quarantine: pl.DataFrame) -> None:
        import pyarrow.parquet as pq

        table = quarantine.select([pl.col(c).cast(t) for c, t in QUARANTINE_SCHEMA.items()]).to_arrow()
        if self._quarantine is None:
            self._quarantine = pq.ParquetWriter(self.tmp / "quarantine.parquet", table.schema)
        elif table.schema != self._quarantine.schema:
            table = table.cast(self._quarantine.schema)
        self._quarantine.write_table(table)
        self.quarantined += quarantine.height

    def digest(self, renumber_repeats: bool = False) -> str:
        """``schema.version_digest`` of the written rows, without loading them.
        A repeated id is an error, or with ``renumber_repeats`` content that
        ``with_ids`` numbered in separate batches, renumbered here first."""
        rows_path, spill = self.tmp / "rows.parquet", self.tmp / ".spill"
        digest, repeated = _streamed_digest(rows_path, spill)
        if repeated and renumber_repeats:
            _renumber_repeats(rows_path, spill)
            digest, repeated = _streamed_digest(rows_path, spill)
        if repeated:
            raise ValueError("row ids must be unique within a version")
        return digest

    def commit(self, *, operation: str, params: dict[str, Any] | None = None, parents: list[str] | None = None,
               report: dict[str, Any] | None = None, counts: dict[str, Any] | None = None,
               digest: str | None = None, renumber_repeats: bool = False) -> Version:
        """Publish the version; ``counts`` defaults to kinds and quarantined.
        ``renumber_repeats``: see the class docstring."""
        if self._rows is None:
            self.write_rows(pl.DataFrame())
        for attr in ("_rows", "_quarantine"):
            if getattr(self, attr) is not None:
                getattr(self, attr).close()
                setattr(self, attr, None)
        if digest is None:
            digest = self.digest(renumber_repeats)
        if (self.tmp / ".spill").exists():
            shutil.rmtree(self.tmp / ".spill", ignore_errors=True)
        if report is not None:
            (self.tmp / "report.json").write_text(json.dumps(report, indent=2, default=str))
        for f in self.tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        _fsync_dir(self.tmp)
        all_counts = counts if counts is not None else {
            "kind": dict(self.kinds), "ledger": 0, "quarantined": self.quarantined}
        return self.ws._publish(self.tmp, self.name, dict(
            digest=digest, rows=self.rows, parents=list(parents or []), operation=operation,
            params=params or {}, counts=all_counts))


def sql_identifier(name: str) -> str:
    """``name`` as a DuckDB identifier (double quotes, inner quotes doubled)."""
    return '"' + name.replace('"', '""') + '"'


def sql_string(text: str | Path) -> str:
    """``text`` as a DuckDB string literal (single quotes, inner quotes doubled)."""
    return "'" + str(text).replace("'", "''") + "'"


#: Memory DuckDB may use to sort a version's ids for its digest before spilling
#: (env BAKEOFF_DIGEST_MEMORY): with the batch, what bounds an ingest's memory.
DIGEST_MEMORY = os.environ.get("BAKEOFF_DIGEST_MEMORY") or "256MB"


def _spilling_duckdb(spill: Path) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB that sorts and groups out of core past DIGEST_MEMORY."""
    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")
    con.execute(f"SET memory_limit = '{DIGEST_MEMORY}'")
    con.execute(f"SET temp_directory = {sql_string(spill)}")
    return con


def _streamed_digest(rows_path: Path, spill: Path) -> tuple[str, bool]:
    """(SHA-256 over the canonical rows exactly as ``schema.version_digest``: the
    same columns in the same order, rows sorted by id, NDJSON written by polars;
    whether some id occurs more than once). The sort is done by DuckDB out of
    core and the rows hashed batch by batch; a repeated id shows as two equal
    neighbours in that order, so finding one costs nothing extra."""
    import pyarrow.parquet as pq

    schema = pq.read_schema(rows_path)
    skip = {"source_file", "source_line", "messages", "chosen", "rejected"}
    cols = sorted(c for c in schema.names if c not in skip)
    con = _spilling_duckdb(spill)
    try:
        source = f"read_parquet({sql_string(rows_path)})"
        return _digest_by_label_groups(con, source, cols, schema) or _digest_by_rows(con, source, cols)
    finally:
        con.close()


def _digest_by_rows(con: duckdb.DuckDBPyConnection, source: str, cols: list[str]) -> tuple[str, bool]:
    """The digest with every row serialised by polars: DuckDB sorts the whole
    canonical rows and they are written batch by batch."""
    select = ", ".join(map(sql_identifier, cols))
    reader = con.sql(f"SELECT {select} FROM {source} ORDER BY id").to_arrow_reader(100_000)
    return _hash_in_order(reader, _ndjson)  # type: ignore[return-value]


#: Label groups past which a version's digest serialises every row instead.
MAX_LABEL_GROUPS = 4096


def _digest_by_label_groups(con: duckdb.DuckDBPyConnection, source: str, cols: list[str],
                            schema: Any) -> tuple[str, bool] | None:
    """The same digest, cheaper where many rows share their other columns (an
    ingest stamps one domain, task... on a whole file): None where they don't.

    A canonical row is ``<before>"<id>"<after>``: polars serialises each field
    on its own, so rows that agree on every column but the id share ``before``
    and ``after``. Each distinct combination ("label group") is serialised once,
    by polars itself (so the bytes are exactly ``version_digest``'s), and DuckDB
    sorts only (id, group) pairs: the sort carries 8 bytes per row instead of
    every column, and no row is serialised. The benchmark's 1M chat rows, the
    digest alone: 0.46-0.49 s and 0.80-0.85 CPU-s, against 0.62-0.70 s and
    1.10-1.24 CPU-s serialising every row.

    Only for columns whose DuckDB equality is byte equality of the serialised
    value (strings, integers, booleans and lists of them: not floats, where
    -0.0 = 0.0), and ids that JSON writes as they are (checked per batch)."""
    rest = [c for c in cols if c != "id"]
    if not rest or "id" not in cols or not all(_equal_means_same_bytes(schema.field(c).type) for c in rest):
        return None
    key = f"hash({', '.join(map(sql_identifier, rest))})"
    if con.sql(f"SELECT approx_count_distinct({key}) FROM {source}").fetchall()[0][0] > MAX_LABEL_GROUPS:
        return None
    groups = pl.from_arrow(con.sql(f"SELECT DISTINCT {key} AS _group, {', '.join(map(sql_identifier, rest))} "
                                   f"FROM {source}").to_arrow_table())
    assert isinstance(groups, pl.DataFrame)
    if groups.height > MAX_LABEL_GROUPS or groups["_group"].n_unique() != groups.height:
        return None  # too many after all, or two combinations share a hash
    # Serialised with the id "" and "x": the id's place is where the two differ.
    lines = _ndjson(pl.concat([groups.with_columns(id=pl.lit(v)).select(cols) for v in ("", "x")]))
    text = bytes(lines).decode().split("\n")
    before, after = [], []
    for empty, with_x in zip(text[:groups.height], text[groups.height:-1]):
        at = next(i for i, (e, x) in enumerate(zip(empty, with_x)) if e != x)
        if with_x != empty[:at] + "x" + empty[at:]:
            return None
        before.append(empty[:at])
        after.append(empty[at:] + "\n")
    label_lines = pl.DataFrame({"_group": groups["_group"], "_before": before, "_after": after})
    # Ids JSON would escape (quotes, backslashes, control characters) are not
    # written as they are: such a version takes the per-row path.
    needs_escape = pl.col("id").str.contains(r'["\\\x00-\x1f]').any()

    def serialise(batch: Any) -> memoryview | None:
        frame = pl.from_arrow(batch)
        assert isinstance(frame, pl.DataFrame)
        if frame.select(needs_escape).item():
            return None
        group = pl.col("_group")
        line = pl.concat_str(group.replace_strict(label_lines["_group"], label_lines["_before"]), "id",
                             group.replace_strict(label_lines["_group"], label_lines["_after"]))
        return _contiguous_bytes(frame.select(line).to_series())

    reader = con.sql(f"SELECT id, {key} AS _group FROM {source} ORDER BY id").to_arrow_reader(100_000)
    return _hash_in_order(reader, serialise)


def _equal_means_same_bytes(dtype: Any) -> bool:
    """Whether values DuckDB finds equal always serialise to the same JSON."""
    import pyarrow as pa

    if pa.types.is_list(dtype) or pa.types.is_large_list(dtype):
        return _equal_means_same_bytes(dtype.value_type)
    return (pa.types.is_string(dtype) or pa.types.is_large_string(dtype) or pa.types.is_integer(dtype)
            or pa.types.is_boolean(dtype) or pa.types.is_null(dtype))


def _hash_in_order(reader: Any, serialise: Any) -> tuple[str, bool] | None:
    """(SHA-256 of ``serialise(batch)`` over the sorted batches, in order; whether
    an id repeats), or None where ``serialise`` gives None for a batch.
    Batches are serialised by two threads (polars releases the GIL as it
    writes) and hashed in order, at most three waiting: the digest runs after
    the last batch, alone, so this is wall time saved (1M chat rows: 0.56 s
    against 0.66-0.79 s for one thread)."""
    import hashlib

    sha = hashlib.sha256()
    last: str | None = None
    repeated = False
    pending: deque[Future[memoryview | None]] = deque()

    def take(future: Future[memoryview | None]) -> bool:
        data = future.result()
        if data is not None:
            sha.update(data)
        return data is not None

    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="digest") as pool:
        for batch in reader:
            ids = pl.Series(batch.column(batch.schema.get_field_index("id")))
            if len(ids):
                repeated = repeated or ids[0] == last or bool((ids.slice(1) == ids.slice(0, len(ids) - 1)).any())
                last = ids[-1]
            pending.append(pool.submit(serialise, batch))
            if len(pending) > 2 and not take(pending.popleft()):
                return None
        while pending:
            if not take(pending.popleft()):
                return None
    return sha.hexdigest(), repeated


def _ndjson(frame: Any) -> memoryview:
    """``frame`` (polars or an Arrow batch) as NDJSON, the bytes straight from
    polars (no str round trip)."""
    if not isinstance(frame, pl.DataFrame):
        frame = pl.from_arrow(frame)
    buf = io.BytesIO()
    frame.write_ndjson(buf)
    return buf.getbuffer()


def _contiguous_bytes(strings: pl.Series) -> memoryview:
    """The UTF-8 bytes of ``strings`` end to end, without a copy in Python:
    polars stores strings as views, Arrow's large_string is one buffer."""
    import numpy as np
    import pyarrow as pa

    array = strings.to_arrow(compat_level=pl.CompatLevel.oldest())
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    offsets = np.frombuffer(array.buffers()[1], dtype=np.int64)
    return memoryview(array.buffers()[2])[int(offsets[array.offset]):int(offsets[array.offset + len(array)])]


def _renumber_repeats(rows_path: Path, spill: Path) -> None:
    """Number content repeated across batches as ``schema.with_ids`` numbers one
    frame: in file order, the first copy keeps ``<hash>``, later ones get
    ``<hash>~2``, ``<hash>~3``... Each batch was numbered on its own, so every
    batch holding a content has a row with the bare ``<hash>``: the repeated ids
    name exactly the contents to renumber. DuckDB finds them and their new ids
    out of core (in row order), and the file is rewritten row group by row group
    with those ids, so memory stays bounded by a row group, not by the number of
    distinct contents (the reason this is not a table of every id seen)."""
    import pyarrow.parquet as pq

    con = _spilling_duckdb(spill)
    out = rows_path.with_name(".rows.renumbered.parquet")
    try:
        reader = con.sql(f"""
            WITH r AS (SELECT file_row_number AS rn, id, split_part(id, '~', 1) AS base
                       FROM read_parquet({sql_string(rows_path)}, file_row_number = true)),
                 repeated AS (SELECT DISTINCT split_part(id, '~', 1) AS base FROM r GROUP BY id
                              HAVING count(*) > 1),
                 copies AS (SELECT rn, id, base, row_number() OVER (PARTITION BY base ORDER BY rn) AS occ
                            FROM r SEMI JOIN repeated USING (base)),
                 renamed AS (SELECT rn, id, CASE WHEN occ > 1 THEN base || '~' || occ ELSE base END AS new_id
                             FROM copies)
            SELECT rn, new_id FROM renamed WHERE new_id <> id ORDER BY rn
        """).to_arrow_reader(100_000)
        pending = pl.DataFrame(schema={"rn": pl.Int64, "new_id": pl.String})
        more = True
        source = pq.ParquetFile(rows_path)
        writer = pq.ParquetWriter(out, source.schema_arrow, **_rows_parquet_options(source.schema_arrow))
        try:
            row0 = 0
            for g in range(source.num_row_groups):
                table = source.read_row_group(g)
                row1 = row0 + table.num_rows
                # the fixes are in row order: pull them until past this row group
                while more and (not pending.height or pending["rn"][-1] < row1):
                    batch = next(reader, None)
                    if batch is None:
                        more = False
                    else:
                        pending = pl.concat([pending, pl.from_arrow(batch).cast({"rn": pl.Int64})])
                here = pending.filter(pl.col("rn") < row1)
                pending = pending.filter(pl.col("rn") >= row1)
                if here.height:
                    ids = pl.from_arrow(table.column("id")).scatter(here["rn"] - row0, here["new_id"])
                    table = table.set_column(table.schema.get_field_index("id"), "id",
                                             ids.to_arrow().cast(table.schema.field("id").type))
                writer.write_table(table)
                row0 = row1
        finally:
            writer.close()
        os.replace(out, rows_path)
    finally:
        con.close()
        out.unlink(missing_ok=True)


#: Threads of one process share DuckDB's database instance (its file lock does
#: not separate them), so commits and sweeps in one process also take this.
_PROCESS_WRITE_LOCK = threading.RLock()
_WRITER_LOCK = ".writer.lock"


def _lock_temp_folder(tmp: Path) -> int:
    """Take an exclusive ``flock`` on ``tmp/.writer.lock``; returns the fd to
    close when done. The kernel drops the lock when the process dies."""
    fd = os.open(tmp / _WRITER_LOCK, os.O_CREAT | os.O_RDWR, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def _temp_folder_abandoned(tmp: Path, grace_s: float = 600.0) -> bool:
    """Whether no live process is writing ``tmp``. A folder without its lock file
    is being created right now (or its writer died in that instant): it is kept
    for ``grace_s``."""
    try:
        fd = os.open(tmp / _WRITER_LOCK, os.O_RDWR)
    except FileNotFoundError:
        try:
            return tmp.stat().st_mtime < time.time() - grace_s
        except FileNotFoundError:
            return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False  # a live writer holds it
    finally:
        os.close(fd)
    return True


def _process_start(pid: int) -> datetime:
    """When process ``pid`` started (Linux /proc: boot time + start ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    btime = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                 if line.startswith("btime"))
    return datetime.fromtimestamp(btime + int(fields[19]) / os.sysconf("SC_CLK_TCK")).astimezone()


def _lock_message(catalog: Path, error: str, timeout: float) -> str:
    """'the workspace is locked by pid N (`cmd`), started at T' from DuckDB's
    lock error, which names the holder's pid."""
    m = re.search(r"PID (\d+)", error)
    holder = "another process"
    if m:
        pid = int(m.group(1))
        holder = f"pid {pid}"
        try:
            cmd = " ".join(Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split())
            started = _process_start(pid)
            holder += f" (`{cmd[:120]}`), started at {started.isoformat(timespec='seconds')}"
        except (OSError, StopIteration, IndexError, ValueError):
            pass
    return (f"the workspace is locked by {holder}; waited {timeout:.0f} s for {catalog}. "
            "Wait for that command to finish (or stop it) and run this again")


def new_ledger(**columns: Any) -> pl.DataFrame:
    """A ledger frame from column lists/Series; missing columns are nulls."""
    df = pl.DataFrame(columns) if columns else pl.DataFrame()
    height = df.height
    return df.with_columns(
        [pl.lit(None, dtype=t).alias(c) for c, t in LEDGER_SCHEMA.items() if c not in df.columns]
    ).select([pl.col(c).cast(t) for c, t in LEDGER_SCHEMA.items()]).head(height)
