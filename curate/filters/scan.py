"""Byte-level statistics several filters share, from numba kernels over the
UTF-8 buffers of a string column (one pass instead of one polars string scan
per count; see ``bakeoff.curate.minhash`` for the buffer helpers)."""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

def _scan_py(data, offs, kind, out):  # pragma: no cover - compiled by numba
    """Per text, one pass over its UTF-8 bytes: out[:, i] = (control characters as
    CONTROL_RE counts them, any non-ASCII byte, count of ( ) [ ] { }, count of
    non-overlapping ```). ASCII bytes never occur inside a multi-byte UTF-8
    sequence, so byte counts are character counts; the non-ASCII members of
    CONTROL_RE are matched by their UTF-8 encodings. ``kind`` (256 entries,
    see _SCAN_KIND) sends the common bytes (letters, digits, spaces) down the
    fast path."""
    for i in _prange(offs.shape[0] - 1):
        a, b = offs[i], offs[i + 1]
        ctrl = 0
        nonascii = 0
        po = pc = so = sc = co = cc = 0
        fences = 0
        run = 0
        for j in range(a, b):
            x = data[j]
            k = kind[x]
            if k == 0:
                run = 0
                continue
            if k == 8:  # `
                run += 1
                if run == 3:
                    fences += 1
                    run = 0
                continue
            run = 0
            if k == 7:
                ctrl += 1
            elif k == 1:
                po += 1
            elif k == 2:
                pc += 1
            elif k == 3:
                so += 1
            elif k == 4:
                sc += 1
            elif k == 5:
                co += 1
            elif k == 6:
                cc += 1
            else:  # k == 9: a byte >= 0x80
                nonascii = 1
                if x == 0xC2 and j + 1 < b:  # U+0080-U+009F (C1)
                    if 0x80 <= data[j + 1] <= 0x9F:
                        ctrl += 1
                elif x == 0xE2 and j + 2 < b:  # U+200B-200F, U+202A-202E, U+2060-2064
                    y = data[j + 1]
                    z = data[j + 2]
                    if y == 0x80 and ((0x8B <= z <= 0x8F) or (0xAA <= z <= 0xAE)):
                        ctrl += 1
                    elif y == 0x81 and 0xA0 <= z <= 0xA4:
                        ctrl += 1
                elif x == 0xEF and j + 2 < b:  # U+FEFF, U+FFFD
                    y = data[j + 1]
                    z = data[j + 2]
                    if (y == 0xBB and z == 0xBF) or (y == 0xBF and z == 0xBD):
                        ctrl += 1
        out[0, i] = ctrl
        out[1, i] = nonascii
        out[2, i] = po
        out[3, i] = pc
        out[4, i] = so
        out[5, i] = sc
        out[6, i] = co
        out[7, i] = cc
        out[8, i] = fences


def _scan_kind() -> np.ndarray:
    """Byte classes for _scan_py: 0 plain, 1-6 ( ) [ ] { }, 7 ASCII control
    (C0 but tab/LF/CR, DEL), 8 backtick, 9 non-ASCII."""
    kind = np.zeros(256, np.uint8)
    for k, ch in enumerate("()[]{}", start=1):
        kind[ord(ch)] = k
    for x in [*range(0, 9), 11, 12, *range(14, 32), 127]:
        kind[x] = 7
    kind[ord("`")] = 8
    kind[128:] = 9
    return kind


_SCAN_KIND = _scan_kind()
_SCAN: Any = None
SCAN_FIELDS = ("control", "nonascii", "(", ")", "[", "]", "{", "}", "```")


def byte_scan(texts: pl.Series) -> pl.DataFrame:
    """Per text, the character counts several filters need (control characters,
    non-ASCII, brackets, code fences), from one pass over the UTF-8 bytes with a
    numba kernel instead of one regex/literal scan per count: each polars
    string scan costs ~0.2 CPU-s per 200k demo rows, and control, mojibake and
    truncated needed nine of them."""
    global _SCAN
    if _SCAN is None:
        import numba

        global _prange
        _prange = numba.prange
        _SCAN = numba.njit(cache=True, parallel=True)(_scan_py)
    from bakeoff.curate.minhash import _buffers, _threads_for

    data, offs = _buffers(texts)
    out = np.zeros((len(SCAN_FIELDS), texts.len()), np.int64)  # one contiguous row per field
    if texts.len():
        with _threads_for(texts.len()):
            _SCAN(data, offs, _SCAN_KIND, out)
    return pl.DataFrame({name: out[k] for k, name in enumerate(SCAN_FIELDS)})


def scanned(frame: pl.DataFrame, side: str) -> pl.DataFrame:
    """byte_scan of a side, computed once per detect() (kept in the column
    ``_scan<side>``) or here when a filter runs on a frame without it."""
    col = f"_scan{side}"
    if col in frame.columns:
        return frame.select(pl.col(col).struct.unnest())
    return byte_scan(frame[side])



def dup_ngram_fraction(texts: pl.Series, n: int) -> pl.Series:
    """Gopher's duplicate n-gram fraction per text: the share of word n-gram
    positions whose n-gram occurs more than once in the same text.

    Flat and vectorized: words of all texts exploded into one column, each word
    hashed, an n-gram = the hash of n consecutive word hashes (a shift over the
    whole column; n-grams crossing into the next text are discarded), then one
    ``is_duplicated`` over (text, n-gram).
    """
    if texts.len() == 0:
        return pl.Series(texts.name, [], dtype=pl.Float64)
    w = (pl.DataFrame({"t": texts}).with_row_index("row")
         .select("row", pl.col("t").str.split(" ").alias("w")).explode("w")
         .filter(pl.col("w").is_not_null() & (pl.col("w") != ""))
         .with_columns(pl.col("w").hash(seed=7).alias("h")))
    gram = pl.struct([pl.col("h").shift(-k).alias(f"h{k}") for k in range(n)]).hash(seed=11)
    g = (w.with_columns(gram.alias("g"), (pl.col("row").shift(-(n - 1)) == pl.col("row")).alias("ok"))
         .filter(pl.col("ok"))
         .with_columns(pl.struct("row", "g").is_duplicated().alias("d"))
         .group_by("row").agg(pl.col("d").mean().alias("frac")))
    out = pl.DataFrame({"row": pl.int_range(texts.len(), eager=True).cast(pl.UInt32)}).join(
        g.with_columns(pl.col("row").cast(pl.UInt32)), on="row", how="left")
    return out["frac"].fill_null(0.0).rename(texts.name)


def _pieces_py(data, a, b, sep, skip_empty):  # pragma: no cover - compiled by numba
    """(pieces, distinct pieces) of data[a:b] split on the byte ``sep``; with
    skip_empty, empty pieces are not counted. Open addressing on an FNV-1a
    hash, equal hashes confirmed byte by byte: exact counts."""
    cnt = 1
    for j in range(a, b):
        if data[j] == sep:
            cnt += 1
    size = 4
    while size < 2 * cnt:
        size <<= 1
    mask = np.uint64(size - 1)
    tstart = np.full(size, -1, np.int64)
    tend = np.empty(size, np.int64)
    thash = np.empty(size, np.uint64)
    total = 0
    uniq = 0
    s = a
    for j in range(a, b + 1):
        if j == b or data[j] == sep:
            e = j
            if not (skip_empty and e == s):
                total += 1
                h = np.uint64(14695981039346656037)
                for k in range(s, e):
                    h = (h ^ np.uint64(data[k])) * np.uint64(1099511628211)
                slot = np.int64(h & mask)
                while True:
                    if tstart[slot] == -1:
                        tstart[slot] = s
                        tend[slot] = e
                        thash[slot] = h
                        uniq += 1
                        break
                    if thash[slot] == h and tend[slot] - tstart[slot] == e - s:
                        same = True
                        t0 = tstart[slot]
                        for k in range(e - s):
                            if data[t0 + k] != data[s + k]:
                                same = False
                                break
                        if same:
                            break
                    slot = np.int64((np.uint64(slot) + np.uint64(1)) & mask)
            s = j + 1
    return total, uniq


def _piece_stats_py(data, offs, out):  # pragma: no cover - compiled by numba
    for i in _prange(offs.shape[0] - 1):
        a, b = offs[i], offs[i + 1]
        out[0, i], out[1, i] = _pieces_nb(data, a, b, np.uint8(10), True)   # lines, "\n"
        out[2, i], out[3, i] = _pieces_nb(data, a, b, np.uint8(32), False)  # words, " "


_pieces_nb: Any = None
_prange: Any = range  # numba.prange once numba is imported
_PIECE_STATS: Any = None


def _piece_kernels() -> Any:
    """The numba kernels, compiled on first use (numba is imported only when the
    repetition filter runs; module-level functions so numba's disk cache works)."""
    global _pieces_nb, _prange, _PIECE_STATS
    if _PIECE_STATS is None:
        import numba

        _prange = numba.prange
        _pieces_nb = numba.njit(cache=True)(_pieces_py)
        _PIECE_STATS = numba.njit(cache=True, parallel=True)(_piece_stats_py)
    return _PIECE_STATS


def piece_stats(texts: pl.Series) -> pl.DataFrame:
    """Per text: non-empty lines, distinct non-empty lines, words (``split(" ")``
    pieces, empty ones included) and distinct words -- what
    ``str.split(...).list.len()/.n_unique()`` give, in one pass over the UTF-8
    bytes. The polars form (split into list columns, then hash every piece in
    ``n_unique``) was the suite's single biggest cost, ~1.7 CPU-s per 200k rows;
    this kernel (numba, as in ``minhash``) does it ~10x cheaper. "\n" and " "
    are single bytes in UTF-8, so splitting bytes splits characters."""
    from bakeoff.curate.minhash import _buffers, _threads_for

    stats = _piece_kernels()
    data, offs = _buffers(texts)
    out = np.zeros((4, texts.len()), np.int64)  # one contiguous row per field
    if texts.len():
        with _threads_for(texts.len()):
            stats(data, offs, out)
    return pl.DataFrame({name: out[k] for k, name in enumerate(("n_lines", "u_lines", "n_words", "u_words"))})
