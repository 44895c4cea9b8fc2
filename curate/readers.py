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

Every reader streams: ``iter_records`` yields the file in batches of about
``BATCH_BYTES`` of input (decompressed), so peak memory is bounded by the batch,
not by the file (a gzip that expands to gigabytes is read a chunk at a time). A
single record longer than ``MAX_RECORD_BYTES`` is quarantined, not buffered.
Line numbers and the quarantine are exact across batches. The file's SHA-256
(an ingest records it, for reuse) is taken from the same reads: a file is read
once (``iter_records(on_digest=...)``).

Supported: ``.jsonl``/``.ndjson``, ``.json`` (an array of objects, one object, or
JSON Lines under a .json name), ``.csv``/``.tsv``, ``.parquet``, and ``.gz`` of
each. Unknown extensions are sniffed.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import hashlib
import io
import json
import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa

from bakeoff.reuse import file_digest
from bakeoff.workspace import QUARANTINE_SCHEMA, BakeoffError, sql_identifier, sql_string

#: Quarantined raw text is kept whole up to this many characters (a bad record can
#: be huge, e.g. the unparseable rest of a JSON array).
RAW_LIMIT = 20_000

#: Input bytes (decompressed) per batch: the unit of memory use of an ingest
#: (env BAKEOFF_BATCH_BYTES, e.g. to exercise many batches in tests).
BATCH_BYTES = int(os.environ.get("BAKEOFF_BATCH_BYTES") or 32 << 20)
#: A record (line, JSON element, CSV row) longer than this is quarantined unread.
MAX_RECORD_BYTES = 256 << 20

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
    """All records of one file at once (``iter_records`` joined): for tests and
    small files; ingest streams."""
    batches = list(iter_records(path))
    if not batches:
        return Records(str(path), file_type_of(Path(path))[0], _empty_table(), empty_quarantine())
    table = pa.concat_tables([b.table.cast(_RECORDS_SCHEMA) for b in batches])
    quarantine = pl.concat([b.quarantine for b in batches])
    return Records(batches[0].path, batches[0].file_type, table, quarantine)


_RECORDS_SCHEMA = pa.schema([("source_line", pa.int64()), ("raw", pa.large_string())])


def _empty_table() -> pa.Table:
    return _RECORDS_SCHEMA.empty_table()


class _HashedFile(io.RawIOBase):
    """A file read as raw bytes that feeds each byte it reads, once, to a
    SHA-256: the file's content digest (``reuse.file_digest``) comes from the
    reads the reader makes anyway, instead of a second pass over the file (for
    a file larger than the page cache, a second pass over the disk). A seek
    back re-reads bytes already hashed, which are not hashed again."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self._path = path
        self._raw = io.FileIO(path, "rb")
        self._sha = hashlib.sha256()
        self._hashed = 0      # bytes of the file fed to the hash, from its start
        self._skipped = False  # a seek forward left bytes out

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        position = self._raw.tell()
        n = self._raw.readinto(buffer) or 0
        if position > self._hashed:
            self._skipped = True
        elif position + n > self._hashed:
            self._sha.update(memoryview(buffer)[self._hashed - position:n])
            self._hashed = position + n
        return n

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._raw.seek(offset, whence)

    def tell(self) -> int:
        return self._raw.tell()

    def fileno(self) -> int:
        return self._raw.fileno()

    def close(self) -> None:
        self._raw.close()
        super().close()

    def hexdigest(self) -> str:
        """The digest of the whole file, reading what the reader left unread."""
        if self._skipped:
            return file_digest(self._path)
        self._raw.seek(self._hashed)
        while chunk := self._raw.read(1 << 20):
            self._sha.update(chunk)
        return self._sha.hexdigest()


def iter_records(path: str | Path, batch_bytes: int | None = None,
                 on_digest: Callable[[str], None] | None = None) -> Iterator[Records]:
    """Read one file as a stream of record batches (each a ``Records``). Raises
    BakeoffError (one line) if the file cannot be read at all; bad records
    inside a readable file are quarantined with their line. ``on_digest``:
    called with the file's SHA-256 (hex) once it has been read."""
    batch_bytes = batch_bytes or BATCH_BYTES
    p = Path(path)
    name = str(p)
    if not p.exists():
        raise BakeoffError(f"{name}: no such file")
    if p.is_dir():
        raise BakeoffError(f"{name}: is a directory")
    try:
        with open(p, "rb") as fh:
            head = fh.read(4096)
    except OSError as exc:
        raise BakeoffError(f"{name}: cannot read file ({exc.strerror or exc})") from None
    ftype, gz = file_type_of(p, head)
    gz = gz or head[:2] == b"\x1f\x8b"
    # Parquet is read by seeking about: its digest is a pass of its own.
    hashed = _HashedFile(p) if on_digest is not None and ftype != "parquet" else None
    try:
        with io.BufferedReader(hashed) if hashed else open(p, "rb") as raw, \
                gzip.GzipFile(fileobj=raw, mode="rb") if gz else raw as fh:
            if ftype == "jsonl":
                batches = _iter_jsonl(name, fh, batch_bytes)
            elif ftype == "json":
                batches = _iter_json(name, fh, batch_bytes)
            elif ftype in ("csv", "tsv"):
                batches = _iter_csv(name, fh, "\t" if ftype == "tsv" else ",", batch_bytes)
            else:
                batches = _iter_parquet(name, fh, gz)
            for table, q in batches:
                if isinstance(table, pl.DataFrame):
                    table = table.to_arrow()
                yield Records(name, ftype, table, q)
            if on_digest is not None:
                on_digest(hashed.hexdigest() if hashed is not None else file_digest(p))
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise BakeoffError(f"{name}: not a readable gzip file ({exc})") from None
    except OSError as exc:
        if gz and exc.errno is None:  # gzip reports a corrupt stream as a bare OSError
            raise BakeoffError(f"{name}: not a readable gzip file ({exc})") from None
        raise


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


def connect(threads: int | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection for ingest work. DuckDB's progress bar is
    off: it prints to stdout (even when stdout is not a terminal) on queries over
    ~2 s, which would corrupt ``--json`` output; bakeoff shows its own progress.
    ``threads``: a limit, for the ingest stages that run beside the converting
    one (one thread each there: ~5 % less wall time, side by side; one thread
    for every stage, the converting one included, cost 5-10 % more)."""
    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    return con


#: Rows per Arrow record batch handed to DuckDB: it scans an Arrow table one batch
#: per thread, so a batch in one piece (a 32 MB batch is ~90k chat rows) would run
#: every query on one core.
BATCH_ROWS = 16_384


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


def _lines_table(source_line: np.ndarray, raw: pa.LargeStringArray) -> pa.Table:
    """The records table from line numbers (int64) and line texts. Built from
    buffers: ``pa.array``/``pa.table`` on numpy input import pandas (~0.8 s of
    CPU, a first ingest's largest single cost) to check for pandas objects."""
    lines = pa.Array.from_buffers(pa.int64(), len(source_line), [None, pa.py_buffer(source_line)])
    return pa.Table.from_arrays([lines, raw], schema=_RECORDS_SCHEMA)


def _drop_lines(data: bytes, offsets: np.ndarray, drop: np.ndarray, line0: int = 0) -> pa.Table:
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
    return _lines_table(np.flatnonzero(keep).astype(np.int64) + 1 + line0, lines)


# --- JSON Lines ---------------------------------------------------------------------

def _iter_jsonl(name: str, fh: BinaryIO, batch_bytes: int,
                first: bytes = b"") -> Iterator[tuple[pa.Table, pl.DataFrame]]:
    """JSON Lines in batches cut at line ends. ``first``: bytes already read.

    A plain file is read again from the start of a batch's incomplete last line
    (a seek back), so a batch is the bytes object ``read`` returned, viewed up to
    its last line end: no copy of the batch (joining the carried line to the next
    read and slicing off the rest cost two, ~0.4 s of CPU per GB). A gzip stream
    cannot seek back cheaply and carries the incomplete line instead."""
    line0 = 0          # lines before the current batch
    carry = first      # an incomplete last line, finished by the next read
    start = True
    rewind = not isinstance(fh, gzip.GzipFile) and fh.seekable()
    con: duckdb.DuckDBPyConnection | None = None  # one for every batch of the file
    try:
        while True:
            chunk = fh.read(batch_bytes)
            data = carry + chunk if carry else chunk
            carry = b""
            if chunk:
                cut = data.rfind(b"\n") + 1
                if cut == 0:  # no line end yet
                    if len(data) <= MAX_RECORD_BYTES:
                        carry = data
                        continue
                    rest, skipped = _skip_line(fh, batch_bytes)
                    yield _empty_table(), quarantine_frame(
                        name, [line0 + 1], [f"record longer than {MAX_RECORD_BYTES >> 20} MB (not read)"],
                        [data[:RAW_LIMIT].decode("utf-8", "backslashreplace")])
                    line0 += 1
                    carry = rest
                    if not skipped:
                        break
                    continue
                if rewind:
                    fh.seek(cut - len(data), io.SEEK_CUR)  # data holds the bytes just before the file position
                    data = memoryview(data)[:cut]
                else:
                    data, carry = data[:cut], data[cut:]
            if data:
                if start and bytes(data[:3]) == codecs.BOM_UTF8:
                    data = b"   " + data[3:]  # keep offsets; blanks are skipped like whitespace
                start = False
                con = con or connect(threads=1)  # beside the converting stage
                table, q, n_lines = _read_jsonl(name, data, line0, con)
                line0 += n_lines
                yield table, q
            if not chunk:
                break
    finally:
        if con is not None:
            con.close()


def _skip_line(fh: BinaryIO, batch_bytes: int) -> tuple[bytes, bool]:
    """Read past the end of the current (over-long) line: (what follows it, whether
    a line end was found)."""
    while True:
        chunk = fh.read(batch_bytes)
        if not chunk:
            return b"", False
        nl = chunk.find(b"\n")
        if nl >= 0:
            return chunk[nl + 1:], True


def _read_jsonl(name: str, data: bytes | memoryview, line0: int = 0,
                con: duckdb.DuckDBPyConnection | None = None) -> tuple[pa.Table, pl.DataFrame, int]:
    """One batch of whole lines; ``line0`` lines came before it. Returns the
    records, the quarantine and the number of lines in ``data``. ``con``: a
    DuckDB connection to use (else one for this batch)."""
    offsets = _line_offsets(data)
    n_lines = len(offsets) - 1
    q_lines: list[int] = []
    q_reasons: list[str] = []
    q_raws: list[str] = []
    if not _valid_utf8(data):
        # Fallback path: blank out the bad lines in place (offsets stay valid) and
        # quarantine them; everything else stays on the vectorized path.
        data = bytes(data)
        buf = bytearray(data)
        for i, reason in sorted(_invalid_utf8_lines(data).items()):
            start, end = int(offsets[i]), int(offsets[i + 1])
            q_lines.append(line0 + i + 1)
            q_reasons.append(reason)
            q_raws.append(data[start:end].rstrip(b"\r\n").decode("utf-8", errors="backslashreplace"))
            buf[start:end] = b" " * (end - start)
        data = bytes(buf)
    lines = pa.LargeStringArray.from_buffers(n_lines, pa.py_buffer(offsets), pa.py_buffer(data))
    table = _chunked(_lines_table(np.arange(line0 + 1, line0 + n_lines + 1, dtype=np.int64), lines))
    # One vectorized pass finds the lines that are not records (blank) or bad
    # (malformed, not an object); only those come back to Python.
    own = con is None
    con = con or connect()
    try:
        con.register("lines", table)
        flagged = con.sql(
            """
            SELECT source_line, rtrim(raw, E'\r\n') AS raw,
                   CASE WHEN regexp_full_match(raw, '\\s*') THEN 'blank'
                        WHEN NOT json_valid(raw) THEN 'malformed'
                        WHEN json_type(raw) <> 'OBJECT' THEN 'record is not a JSON object (got '
                             || CASE WHEN json_type(raw) IN ('UBIGINT', 'BIGINT', 'DOUBLE') THEN 'a number'
                                     WHEN json_type(raw) = 'VARCHAR' THEN 'a string'
                                     WHEN json_type(raw) = 'ARRAY' THEN 'a list'
                                     WHEN json_type(raw) = 'BOOLEAN' THEN 'a boolean'
                                     ELSE lower(json_type(raw)) END || ')'
                   END AS reason
            FROM lines
            WHERE NOT starts_with(raw, '{') OR NOT json_valid(raw)
            """
        ).fetchall()
    finally:
        con.unregister("lines")
        if own:
            con.close()
    drop = np.zeros(n_lines, dtype=bool)
    for line, raw, reason in flagged:
        if reason is None:
            continue  # a valid object after leading whitespace: a record
        drop[line - line0 - 1] = True
        if reason == "blank":
            continue  # blank lines are not records (the invalid-UTF-8 ones are already counted)
        q_lines.append(line)
        q_reasons.append(_json_error(raw) if reason == "malformed" else reason)
        q_raws.append(raw)
    if drop.any():
        table = _chunked(_drop_lines(data, offsets, drop, line0))
    quarantine = quarantine_frame(name, q_lines, q_reasons, q_raws).sort("source_line")
    return table, quarantine, n_lines


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


def _iter_json(name: str, fh: BinaryIO, batch_bytes: int) -> Iterator[tuple[pa.Table | pl.DataFrame, pl.DataFrame]]:
    """A ``.json`` file: an array of objects (streamed element by element), one
    object, or JSON Lines under a .json name."""
    head = fh.read(min(batch_bytes, 1 << 20))
    text = head.decode("utf-8", errors="surrogateescape").lstrip("\ufeff")
    first = text[_WS.match(text).end():][:1]
    if first == "[":
        yield from _JsonArray(name, fh, head, batch_bytes).batches()
        return
    if first == "{":
        # One object (possibly pretty-printed over many lines), else JSON Lines.
        probe = _JsonArray(name, fh, head, batch_bytes, single=True)
        if probe.is_single_object():
            yield from probe.batches()
        else:
            yield from _iter_jsonl(name, fh, batch_bytes, first=probe.consumed())
        return
    if not text.strip() and len(head) < min(batch_bytes, 1 << 20):
        return  # empty file: no records (like an empty .jsonl)
    raise BakeoffError(f"{name}: not a JSON array or object (starts with {text.strip()[:20]!r})")


class _JsonArray:
    """Walk the elements of a JSON array with ``raw_decode`` (C speed per element)
    over a sliding text buffer, keeping each element's text and starting line.
    The buffer holds the current batch plus at most one element being read.
    JSON arrays are not the hot path; JSONL is."""

    def __init__(self, name: str, fh: BinaryIO, head: bytes, batch_bytes: int, single: bool = False) -> None:
        self.name, self.fh, self.batch_bytes, self.single = name, fh, batch_bytes, single
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="surrogateescape")
        self.buf = self.decoder.decode(head).lstrip("\ufeff")
        self.eof = False
        self.pos = 0       # next unread character of buf
        self.line = 1      # line number at pos
        self.mark = 0      # position up to which newlines are counted into line
        self.probing = False  # keep everything read (is_single_object)

    def _more(self) -> bool:
        """Append the next chunk to the buffer (dropping what is consumed)."""
        if self.eof:
            return False
        chunk = self.fh.read(self.batch_bytes)
        if not self.probing:
            self._advance(self.pos)
            self.buf, self.mark, self.pos = self.buf[self.pos:], 0, 0
        if not chunk:
            self.eof = True
            self.buf += self.decoder.decode(b"", final=True)
            return False
        self.buf += self.decoder.decode(chunk)
        return True

    def _advance(self, pos: int) -> None:
        self.line += self.buf.count("\n", self.mark, pos)
        self.mark = pos

    def _skip_ws(self) -> bool:
        """Move to the next non-blank character; False at the end of the input."""
        while True:
            self.pos = _WS.match(self.buf, self.pos).end()
            if self.pos < len(self.buf):
                return True
            if not self._more():
                return False

    def _rest(self, limit: int = RAW_LIMIT) -> str:
        while len(self.buf) - self.pos < limit and self._more():
            pass
        return _text_for_raw(self.buf[self.pos:self.pos + limit])

    def is_single_object(self) -> bool:
        """Whether the input is one object and nothing else (reads at most
        MAX_RECORD_BYTES; the read position stays at the start)."""
        self.probing = True
        try:
            if not self._skip_ws() or self.buf[self.pos] != "{":
                return False
            while True:
                try:
                    _, end = self.decoder_raw(self.buf, self.pos)
                    break
                except json.JSONDecodeError:
                    if len(self.buf) < MAX_RECORD_BYTES and self._more():
                        continue
                    return False
                except RecursionError:
                    return False
            while not self.buf[end:].strip():
                if not self._more():
                    return True
            return False
        finally:
            self.probing, self.pos = False, 0

    def consumed(self) -> bytes:
        """The bytes read so far (for another reader to start from)."""
        return self.buf.encode("utf-8", "surrogateescape") + self.decoder.getstate()[0]

    decoder_raw = json.JSONDecoder().raw_decode

    def batches(self) -> Iterator[tuple[pl.DataFrame, pl.DataFrame]]:
        lines: list[int] = []
        raws: list[str] = []
        q_lines: list[int] = []
        q_reasons: list[str] = []
        q_raws: list[str] = []
        size = 0

        def flush() -> tuple[pl.DataFrame, pl.DataFrame]:
            nonlocal lines, raws, q_lines, q_reasons, q_raws, size
            out = (pl.DataFrame({"source_line": lines, "raw": raws},
                                schema={"source_line": pl.Int64, "raw": pl.String}),
                   quarantine_frame(self.name, q_lines, q_reasons, q_raws))
            lines, raws, q_lines, q_reasons, q_raws, size = [], [], [], [], [], 0
            return out

        def stop(reason: str) -> None:
            # Everything from here on cannot be split into records: quarantine it
            # as one record so nothing disappears silently.
            self._advance(self.pos)
            q_lines.append(self.line)
            q_reasons.append(reason + "; the rest of the file could not be parsed")
            q_raws.append(self._rest())

        if not self._skip_ws():
            return
        if not self.single:
            self.pos += 1  # the '['
        while True:
            if not self._skip_ws():
                if not self.single:
                    self._advance(self.pos)
                    q_lines.append(self.line)
                    q_reasons.append("malformed JSON: array is not closed (file truncated?)")
                    q_raws.append("")
                break
            if not self.single and self.buf[self.pos] == "]":
                break
            while True:
                try:
                    obj, end = self.decoder_raw(self.buf, self.pos)
                    break
                except json.JSONDecodeError as exc:
                    # Maybe only incomplete: read more, up to MAX_RECORD_BYTES per element.
                    if len(self.buf) - self.pos < MAX_RECORD_BYTES and self._more():
                        continue
                    err = exc
                    obj = end = None
                    break
                except RecursionError:
                    err = None
                    obj = end = None
                    break
            if end is None:
                stop(f"malformed JSON: {_msg(err)} at line {self.line + err.lineno - 1} column {err.colno}"
                     if err is not None else "malformed JSON: nested too deeply")
                break
            self._advance(self.pos)
            raw = self.buf[self.pos:end]
            if _SURROGATE.search(raw):
                q_lines.append(self.line)
                q_reasons.append("invalid UTF-8")
                q_raws.append(_text_for_raw(raw))
            elif not isinstance(obj, dict):
                q_lines.append(self.line)
                q_reasons.append(f"record is not a JSON object (got {_PY_TYPE_WORD.get(type(obj), 'null')})")
                q_raws.append(raw[:RAW_LIMIT])
            else:
                lines.append(self.line)
                raws.append(raw)
                size += len(raw)
            self.pos = end
            if self.single:
                break
            if not self._skip_ws():
                continue  # reported as "array is not closed" above
            if self.buf[self.pos] == ",":
                self.pos += 1
            elif self.buf[self.pos] != "]":
                self._advance(self.pos)
                stop(f"malformed JSON: expected ',' or ']' at line {self.line}")
                break
            if size >= self.batch_bytes:
                yield flush()
        yield flush()


_PY_TYPE_WORD = {int: "a number", float: "a number", str: "a string", list: "a list", bool: "a boolean"}


def _text_for_raw(text: str) -> str:
    """Text with undecodable bytes (surrogate escapes) shown as ``\\xNN``."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


# --- tables (CSV, Parquet) -> JSON records ----------------------------------------------

def _to_records(df: pl.DataFrame, json_like: set[str]) -> pl.DataFrame:
    """Each row of ``df`` (plus ``source_line``) as a JSON object text, built by
    DuckDB's ``to_json``; string columns in ``json_like`` are embedded as JSON
    (CSV cells holding lists such as ``messages``)."""
    cols = [c for c in df.columns if c != "source_line"]
    parts = []
    for i, c in enumerate(cols):
        ident, key = sql_identifier(c), sql_string(c)
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


def _iter_csv(name: str, fh: BinaryIO, sep: str, batch_bytes: int) -> Iterator[tuple[pl.DataFrame, pl.DataFrame]]:
    """CSV/TSV with a header line, in batches. Python's ``csv`` module (C) reads
    the rows rather than polars' reader: polars rejects the whole file at the
    first malformed row and cannot say which line it was, while here a row with
    the wrong number of fields or undecodable bytes is quarantined with its line
    and the rest is read. A missing cell is null (a missing field), like polars."""
    text = io.TextIOWrapper(fh, encoding="utf-8-sig", errors="surrogateescape", newline="")
    try:
        yield from _csv_batches(name, text, sep, batch_bytes)
    finally:
        text.detach()  # the file stays open for its owner (which may yet read it for its digest)


def _csv_batches(name: str, text: io.TextIOWrapper, sep: str,
                 batch_bytes: int) -> Iterator[tuple[pl.DataFrame, pl.DataFrame]]:
    csv.field_size_limit(MAX_RECORD_BYTES)
    reader = csv.reader(text, delimiter=sep)
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise BakeoffError(f"{name}: cannot read the CSV header ({exc})") from None
    if header is None:
        return  # empty file: no records (like an empty .jsonl)
    if any(_SURROGATE.search(h) for h in header):
        raise BakeoffError(f"{name}: the CSV header line is not valid UTF-8")
    width = len(header)
    cols = _unique_columns(header)
    rows: list[list[str | None]] = []
    lines: list[int] = []
    q_lines: list[int] = []
    q_reasons: list[str] = []
    q_raws: list[str] = []
    size = 0
    last = reader.line_num  # physical line of the end of the previous record

    def flush() -> tuple[pl.DataFrame, pl.DataFrame]:
        nonlocal rows, lines, q_lines, q_reasons, q_raws, size
        df = pl.DataFrame(rows, schema={c: pl.String for c in cols}, orient="row") if rows \
            else pl.DataFrame(schema={c: pl.String for c in cols})
        df = df.with_columns(pl.Series("source_line", lines, dtype=pl.Int64))
        out = (_to_records(df, _json_like(df)), quarantine_frame(name, q_lines, q_reasons, q_raws))
        rows, lines, q_lines, q_reasons, q_raws, size = [], [], [], [], [], 0
        return out

    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:  # e.g. a NUL byte, an over-long field
            q_lines.append(last + 1)
            q_reasons.append(f"malformed CSV row ({exc})")
            q_raws.append("")
            last = reader.line_num
            continue
        first_line, last = last + 1, reader.line_num
        if not row or all(c == "" for c in row):
            continue  # a blank line is not a record
        raw = sep.join(row)
        if any(_SURROGATE.search(c) for c in row):
            m = _SURROGATE.search(raw)
            q_lines.append(first_line)
            q_reasons.append(f"invalid UTF-8 (byte 0x{ord(m.group()) - 0xDC00:02x})")
            q_raws.append(_text_for_raw(raw)[:RAW_LIMIT])
        elif len(row) != width:
            q_lines.append(first_line)
            q_reasons.append(f"malformed CSV row: expected {width} fields, got {len(row)}")
            q_raws.append(raw[:RAW_LIMIT])
        else:
            rows.append([c if c != "" else None for c in row])
            lines.append(first_line)
            size += len(raw)
            if size >= batch_bytes:
                yield flush()
    yield flush()


def _unique_columns(header: list[str]) -> list[str]:
    """Header names, made unique the way polars does (``a``, ``a_duplicated_0``)."""
    seen: dict[str, int] = {}
    out = []
    for h in header:
        if h in seen:
            out.append(f"{h}_duplicated_{seen[h]}")
            seen[h] += 1
        else:
            seen[h] = 0
            out.append(h)
    return out


def _json_like(df: pl.DataFrame) -> set[str]:
    """String columns whose non-empty cells all look like JSON lists/objects
    (CSV cells holding e.g. ``messages``)."""
    json_like = set()
    for c in df.columns:
        if c == "source_line":
            continue
        vals = df[c].drop_nulls().str.strip_chars()
        vals = vals.filter(vals != "")
        if len(vals) and vals.str.contains(r"^[\[{]").all():
            json_like.add(c)
    return json_like


def _iter_parquet(name: str, fh: BinaryIO, gz: bool) -> Iterator[tuple[pl.DataFrame, pl.DataFrame]]:
    """Parquet in row-group batches (a gzipped Parquet file is read whole: Parquet
    needs random access)."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(io.BytesIO(fh.read()) if gz else fh)
        batches = pf.iter_batches(batch_size=65_536)
        row0 = 0
        for batch in batches:
            df = pl.from_arrow(batch)
            # Parquet has no lines: source_line is the 1-based row number.
            df = df.with_columns(pl.int_range(row0 + 1, row0 + 1 + df.height, dtype=pl.Int64).alias("source_line"))
            row0 += df.height
            yield _to_records(df, set()), empty_quarantine()
    except (pa.ArrowException, OSError, ValueError) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BakeoffError(f"{name}: cannot read Parquet ({msg})") from None
