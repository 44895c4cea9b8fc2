"""Read input files into *records*: one JSON object text per input record, with
where it came from.

Every reader returns the same shape (``Records``): a table of ``source_line`` and
``raw`` (the record as JSON object text) plus a quarantine table of the records
that could not be read (invalid UTF-8, malformed JSON, not an object), so the
format layer (``bakeoff.curate.formats``) validates and converts every file type
with one set of vectorized DuckDB JSON expressions.

JSONL is the hot path (it is what people export at scale): the file is read once,
split into lines with numpy (newline positions) and handed to DuckDB as a
zero-copy Arrow string array; JSON validity is checked by DuckDB's vectorized
``json_valid``. Python touches individual lines only for the bad ones (to say why
they are bad). JSON arrays, CSV and Parquet are converted to the same records.

Supported: ``.jsonl``/``.ndjson``, ``.json`` (an array of objects, one object, or
JSON Lines under a .json name), ``.csv``/``.tsv``, ``.parquet``, and ``.gz`` of
each. Unknown extensions are sniffed.
"""

from __future__ import annotations

import codecs
import gzip
import io
import json
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa

from bakeoff.workspace import QUARANTINE_SCHEMA, BakeoffError

#: Quarantined raw text is kept whole up to this many characters (a bad record can
#: be huge, e.g. the unparseable rest of a JSON array).
RAW_LIMIT = 20_000

FILE_TYPES = ("jsonl", "json", "csv", "tsv", "parquet")
_EXT = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv",
        ".parquet": "parquet", ".pq": "parquet"}


@dataclass
class Records:
    """The readable records of one file (``table``: source_line, raw) and the
    quarantined ones (``quarantine``: QUARANTINE_SCHEMA)."""

    path: str
    file_type: str
    table: pa.Table  # Arrow, so DuckDB scans it without a copy
    quarantine: pl.DataFrame

    @property
    def rows_in(self) -> int:
        return self.table.num_rows + self.quarantine.height


def quarantine_frame(source_file: str, lines: list[int], reasons: list[str], raws: list[str]) -> pl.DataFrame:
    return pl.DataFrame(
        {"source_file": [source_file] * len(lines), "source_line": lines, "reason": reasons,
         "raw": [r[:RAW_LIMIT] for r in raws]},
        schema=QUARANTINE_SCHEMA,
    )


def empty_quarantine() -> pl.DataFrame:
    return pl.DataFrame(schema=QUARANTINE_SCHEMA)


def file_type_of(path: Path, data: bytes | None = None) -> tuple[str, bool]:
    """(file type, gzipped) from the name, else by sniffing the first bytes."""
    suffixes = [s.lower() for s in path.suffixes]
    gz = bool(suffixes) and suffixes[-1] in (".gz", ".gzip")
    if gz:
        suffixes = suffixes[:-1]
    if suffixes and suffixes[-1] in _EXT:
        return _EXT[suffixes[-1]], gz
    if data is None:
        data = path.read_bytes()[:4096]
    if data[:2] == b"\x1f\x8b":
        gz, data = True, zlib.decompressobj(31).decompress(data)
    head = data.lstrip(codecs.BOM_UTF8).lstrip()
    if data[:4] == b"PAR1":
        return "parquet", gz
    if head[:1] == b"[":
        return "json", gz
    if head[:1] == b"{":
        return "jsonl", gz
    raise BakeoffError(f"{path}: unsupported file type (expected .jsonl, .json, .csv, .tsv, .parquet or .gz of one)")


def read_records(path: str | Path) -> Records:
    """Read one file into records. Raises BakeoffError (one line) if the file
    cannot be read at all; bad records inside a readable file are quarantined."""
    p = Path(path)
    name = str(p)
    if not p.exists():
        raise BakeoffError(f"{name}: no such file")
    if p.is_dir():
        raise BakeoffError(f"{name}: is a directory")
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise BakeoffError(f"{name}: cannot read file ({exc.strerror or exc})") from None
    ftype, gz = file_type_of(p, data[:4096])
    if gz or data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise BakeoffError(f"{name}: not a readable gzip file ({exc})") from None
    if ftype == "jsonl":
        table, q = _read_jsonl(name, data)
    elif ftype == "json":
        table, q = _read_json(name, data)
    elif ftype in ("csv", "tsv"):
        table, q = _read_csv(name, data, "\t" if ftype == "tsv" else ",")
    else:
        table, q = _read_parquet(name, data)
    if isinstance(table, pl.DataFrame):
        table = table.to_arrow()
    return Records(name, ftype, table, q)


# --- UTF-8 --------------------------------------------------------------------------

def _invalid_utf8_lines(data: bytes) -> dict[int, str]:
    """0-based line numbers holding invalid UTF-8, with a description of the first
    bad byte. Only called when decoding the whole buffer failed."""
    text = data.decode("utf-8", errors="surrogateescape")
    bad: dict[int, str] = {}
    line, last = 0, 0
    for m in re.finditer("[\udc80-\udcff]", text):
        line += text.count("\n", last, m.start())
        last = m.start()
        if line not in bad:
            col = m.start() - (text.rfind("\n", 0, m.start()) + 1) + 1
            bad[line] = f"invalid UTF-8 (byte 0x{ord(m.group()) - 0xDC00:02x} at column {col})"
    return bad


def _line_offsets(data: bytes) -> np.ndarray:
    """Start offsets of every line plus the end of the buffer (numpy, no Python loop)."""
    nl = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 10)
    offsets = np.empty(len(nl) + 2, dtype=np.int64)
    offsets[0] = 0
    offsets[1:-1] = nl + 1
    offsets[-1] = len(data)
    if offsets[-2] == len(data):  # file ends with a newline: no empty last line
        offsets = offsets[:-1]
    return offsets


def connect() -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection for ingest work. DuckDB's progress bar is
    off: it prints to stdout (even when stdout is not a terminal) on queries over
    ~2 s, which would corrupt ``--json`` output; bakeoff shows its own progress."""
    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")
    return con


#: Rows per Arrow record batch handed to DuckDB: it scans an Arrow table one batch
#: per thread, so a single 1M-row batch would run every query on one core.
BATCH_ROWS = 122_880


def _chunked(table: pa.Table) -> pa.Table:
    """The same table split into BATCH_ROWS batches (zero-copy slices)."""
    if table.num_rows <= BATCH_ROWS:
        return table
    return pa.Table.from_batches(table.to_batches(max_chunksize=BATCH_ROWS), schema=table.schema)


def _valid_utf8(data: bytes) -> bool:
    """Whether ``data`` is valid UTF-8. Arrow's SIMD validator is ~3x faster than
    ``bytes.decode`` and allocates nothing (the buffer is wrapped, not copied)."""
    try:
        pa.LargeStringArray.from_buffers(1, pa.py_buffer(np.array([0, len(data)], dtype=np.int64)),
                                         pa.py_buffer(data)).validate(full=True)
    except pa.ArrowInvalid:
        return False
    return True


def _drop_lines(data: bytes, offsets: np.ndarray, drop: np.ndarray) -> pa.Table:
    """The lines table without the ``drop`` lines. Arrow's ``filter`` copies the
    strings one by one (~2 s for 1M lines); the kept lines form a few long runs
    between the dropped ones, so they are copied run by run (a memcpy each) and the
    new offsets computed with numpy."""
    dropped = np.flatnonzero(drop)
    n_lines = len(offsets) - 1
    firsts = np.concatenate([[0], dropped + 1])   # first line of each run of kept lines
    ends = np.concatenate([dropped, [n_lines]])   # one past its last line
    keep_runs = ends > firsts
    firsts, ends = firsts[keep_runs], ends[keep_runs]
    view = np.frombuffer(data, dtype=np.uint8)
    body = np.concatenate([view[offsets[a]:offsets[b]] for a, b in zip(firsts, ends)]) if len(firsts) \
        else np.zeros(0, dtype=np.uint8)
    keep = ~drop
    lengths = np.diff(offsets)[keep]
    new_offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=new_offsets[1:])
    lines = pa.LargeStringArray.from_buffers(len(lengths), pa.py_buffer(new_offsets), pa.py_buffer(body))
    source_line = pa.array(np.flatnonzero(keep).astype(np.int64) + 1)
    return pa.table({"source_line": source_line, "raw": lines})


# --- JSON Lines ---------------------------------------------------------------------

def _read_jsonl(name: str, data: bytes) -> tuple[pa.Table, pl.DataFrame]:
    if data.startswith(codecs.BOM_UTF8):
        data = b"   " + data[3:]  # keep offsets; blanks are skipped like whitespace
    offsets = _line_offsets(data)
    n_lines = len(offsets) - 1
    q_lines: list[int] = []
    q_reasons: list[str] = []
    q_raws: list[str] = []
    if not _valid_utf8(data):
        # Fallback path: blank out the bad lines in place (offsets stay valid) and
        # quarantine them; everything else stays on the vectorized path.
        buf = bytearray(data)
        for i, reason in sorted(_invalid_utf8_lines(data).items()):
            start, end = int(offsets[i]), int(offsets[i + 1])
            q_lines.append(i + 1)
            q_reasons.append(reason)
            q_raws.append(data[start:end].rstrip(b"\r\n").decode("utf-8", errors="backslashreplace"))
            buf[start:end] = b" " * (end - start)
        data = bytes(buf)
    lines = pa.LargeStringArray.from_buffers(n_lines, pa.py_buffer(offsets), pa.py_buffer(data))
    table = _chunked(pa.table({"source_line": pa.array(np.arange(1, n_lines + 1, dtype=np.int64)), "raw": lines}))
    # One vectorized pass finds the lines that are not records (blank) or bad
    # (malformed, not an object); only those come back to Python.
    con = connect()
    try:
        con.register("lines", table)
        flagged = con.sql(
            """
            SELECT source_line, rtrim(raw, E'\r\n') AS raw,
                   CASE WHEN regexp_full_match(raw, '\\s*') THEN 'blank'
                        WHEN NOT json_valid(raw) THEN 'malformed'
                        WHEN json_type(raw) <> 'OBJECT' THEN 'record is not a JSON object (got '
                             || lower(json_type(raw)) || ')'
                   END AS reason
            FROM lines
            WHERE NOT starts_with(raw, '{') OR NOT json_valid(raw)
            """
        ).fetchall()
    finally:
        con.close()
    drop = np.zeros(n_lines, dtype=bool)
    for line, raw, reason in flagged:
        if reason is None:
            continue  # a valid object after leading whitespace: a record
        drop[line - 1] = True
        if reason == "blank":
            continue  # blank lines are not records (the invalid-UTF-8 ones are already counted)
        q_lines.append(line)
        q_reasons.append(_json_error(raw) if reason == "malformed" else reason)
        q_raws.append(raw)
    if drop.any():
        table = _chunked(_drop_lines(data, offsets, drop))
    quarantine = quarantine_frame(name, q_lines, q_reasons, q_raws).sort("source_line")
    return table, quarantine


def _msg(exc: json.JSONDecodeError) -> str:
    # Python's messages can end in " at" ("Unterminated string starting at")
    return exc.msg[:-3] if exc.msg.endswith(" at") else exc.msg


def _json_error(raw: str) -> str:
    """Why a line is not JSON, in Python's words (only for lines DuckDB rejected)."""
    try:
        json.loads(raw)
    except json.JSONDecodeError as exc:
        return f"malformed JSON: {_msg(exc)} at column {exc.colno}"
    except RecursionError:
        return "malformed JSON: nested too deeply"
    return "malformed JSON"


# --- JSON (array / single object) -----------------------------------------------------

_WS = re.compile(r"[ \t\n\r]*")
_SURROGATE = re.compile("[\udc80-\udcff]")


def _read_json(name: str, data: bytes) -> tuple[pa.Table | pl.DataFrame, pl.DataFrame]:
    text = data.decode("utf-8", errors="surrogateescape").lstrip("\ufeff")
    start = _WS.match(text).end()
    if text[start:start + 1] == "{":
        try:
            json.loads(text)
            # one object: if it is on one line it is also one JSON Line
        except json.JSONDecodeError:
            return _read_jsonl(name, data)  # JSON Lines under a .json name
        if "\n" not in text.strip():
            return _read_jsonl(name, data)
        return _json_elements(name, text, start, single=True)
    if text[start:start + 1] != "[":
        if not text.strip():
            return pl.DataFrame(schema={"source_line": pl.Int64, "raw": pl.String}), empty_quarantine()
        raise BakeoffError(f"{name}: not a JSON array or object (starts with {text[start:start + 20]!r})")
    return _json_elements(name, text, start + 1, single=False)


def _json_elements(name: str, text: str, pos: int, single: bool) -> tuple[pa.Table | pl.DataFrame, pl.DataFrame]:
    """Walk the elements of a JSON array with ``raw_decode`` (C speed per element)
    to keep each element's text and starting line. JSON arrays are not the hot
    path; JSONL is."""
    decoder = json.JSONDecoder()
    lines, raws = [], []
    q_lines, q_reasons, q_raws = [], [], []
    line, last = 1, 0
    n = len(text)
    while True:
        pos = _WS.match(text, pos).end()
        if pos >= n:
            if not single:
                q_lines.append(line + text.count("\n", last, pos))
                q_reasons.append("malformed JSON: array is not closed (file truncated?)")
                q_raws.append("")
            break
        if not single and text[pos] == "]":
            break
        line += text.count("\n", last, pos)
        last = pos
        try:
            obj, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            # Everything from here on cannot be split into records: quarantine it
            # as one record so nothing disappears silently.
            q_lines.append(line)
            q_reasons.append(f"malformed JSON: {_msg(exc)} at line {exc.lineno} column {exc.colno}; "
                             "the rest of the file could not be parsed")
            q_raws.append(text[pos:].encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace"))
            break
        raw = text[pos:end]
        if _SURROGATE.search(raw):
            q_lines.append(line)
            q_reasons.append("invalid UTF-8")
            q_raws.append(raw.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace"))
        elif not isinstance(obj, dict):
            q_lines.append(line)
            q_reasons.append(f"record is not a JSON object (got {type(obj).__name__})")
            q_raws.append(raw)
        else:
            lines.append(line)
            raws.append(raw)
        if single:
            break
        pos = _WS.match(text, end).end()
        if pos < n and text[pos] == ",":
            pos += 1
        elif pos < n and text[pos] != "]":
            line += text.count("\n", last, pos)
            last = pos
            q_lines.append(line)
            q_reasons.append(f"malformed JSON: expected ',' or ']' at line {line}; "
                             "the rest of the file could not be parsed")
            q_raws.append(text[pos:].encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace"))
            break
    table = pl.DataFrame({"source_line": lines, "raw": raws}, schema={"source_line": pl.Int64, "raw": pl.String})
    return table, quarantine_frame(name, q_lines, q_reasons, q_raws)


# --- tables (CSV, Parquet) -> JSON records ----------------------------------------------

def _to_records(df: pl.DataFrame, json_like: set[str]) -> pl.DataFrame:
    """Each row of ``df`` (plus ``source_line``) as a JSON object text, built by
    DuckDB's ``to_json``; string columns in ``json_like`` are embedded as JSON
    (CSV cells holding lists such as ``messages``)."""
    cols = [c for c in df.columns if c != "source_line"]
    parts = []
    for i, c in enumerate(cols):
        ident = '"' + c.replace('"', '""') + '"'
        key = "'" + c.replace("'", "''") + "'"
        if c in json_like:
            value = f"CASE WHEN json_valid(t.{ident}) THEN t.{ident}::JSON ELSE to_json(t.{ident}) END"
        else:
            value = f"t.{ident}"
        parts.append((key, value))
    if not parts:
        return df.select("source_line", pl.lit("{}").alias("raw"))
    # json_object keeps nulls as JSON null; a missing CSV cell is then null (= missing field)
    obj = "json_object(" + ", ".join(f"{k}, {v}" for k, v in parts) + ")"
    con = connect()
    try:
        con.register("t", df)
        return con.sql(f"SELECT t.source_line, CAST({obj} AS VARCHAR) AS raw FROM t").pl()
    finally:
        con.close()


def _read_csv(name: str, data: bytes, sep: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    q = empty_quarantine()
    if data.startswith(codecs.BOM_UTF8):
        data = data[3:]
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        # Drop the physical lines with invalid bytes (quarantined with their line);
        # replacing them by blank lines keeps the line numbers of the rest.
        bad = _invalid_utf8_lines(data)
        offsets = _line_offsets(data)
        pieces, prev = [], 0
        lines, reasons, raws = [], [], []
        for i, reason in sorted(bad.items()):
            start, end = int(offsets[i]), int(offsets[i + 1])
            lines.append(i + 1)
            reasons.append(reason)
            raws.append(data[start:end].rstrip(b"\r\n").decode("utf-8", errors="backslashreplace"))
            # the bad line becomes a blank line: the line count stays the same
            pieces += [data[prev:start], b"\n" if data[start:end].endswith(b"\n") else b""]
            prev = end
        if 0 in bad:
            raise BakeoffError(f"{name}: the CSV header line is not valid UTF-8")
        data = b"".join(pieces) + data[prev:]
        q = quarantine_frame(name, lines, reasons, raws)
    try:
        df = pl.read_csv(io.BytesIO(data), separator=sep, infer_schema=False)
    except Exception as exc:  # polars raises several error types for broken CSV
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BakeoffError(f"{name}: cannot read CSV ({msg})") from None
    # Physical line of each record: the header is line 1; a record spans 1 + the
    # number of newlines inside its quoted cells. Blank lines come back from polars
    # as all-null rows: they count one line each and are dropped afterwards.
    if df.width:
        nl = pl.sum_horizontal([pl.col(c).str.count_matches("\n").fill_null(0) for c in df.columns])
        span = (nl + 1).cast(pl.Int64)
        df = df.with_columns((span.cum_sum() - span + 2).alias("source_line"))
        df = df.filter(~pl.all_horizontal([pl.col(c).is_null() for c in df.columns if c != "source_line"]))
    else:
        df = df.with_columns(pl.lit(None, pl.Int64).alias("source_line"))
    json_like = set()
    for c in df.columns:
        if c == "source_line":
            continue
        vals = df[c].drop_nulls().str.strip_chars()
        vals = vals.filter(vals != "")
        if len(vals) and vals.str.contains(r"^[\[{]").all():
            json_like.add(c)
    return _to_records(df, json_like), q


def _read_parquet(name: str, data: bytes) -> tuple[pl.DataFrame, pl.DataFrame]:
    try:
        df = pl.read_parquet(io.BytesIO(data))
    except Exception as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BakeoffError(f"{name}: cannot read Parquet ({msg})") from None
    # Parquet has no lines: source_line is the 1-based row number.
    df = df.with_row_index("source_line", offset=1).with_columns(pl.col("source_line").cast(pl.Int64))
    return _to_records(df, set()), empty_quarantine()
