"""MinHash signatures, LSH candidates and verified Jaccard, vectorized.

Why not ``datasketch.MinHash`` directly: it builds one Python object per row and
calls ``hashlib.sha1`` once per shingle from Python, which is two orders of
magnitude too slow for hundreds of thousands of rows. This module computes the
*same* numbers (datasketch 2.0's default scheme ``affine32``: ``sha1_hash32`` of
each shingle, the MurmurHash3 32-bit finalizer, then ``a*h + b mod 2^32`` with
``a``/``b`` drawn from ``np.random.RandomState(seed)`` exactly as datasketch draws
them) with numba kernels over flat byte buffers, so a signature from here can be
fed to ``datasketch.LeanMinHash(seed=..., hashvalues=..., scheme='affine32')`` and
compared with any datasketch sketch. (The ``legacy`` scheme -- Mersenne prime
2^61-1, max hash 2^32-1 -- is what datasketch < 2.0 used; 2.0's default is
``affine32``, which is what we match.)

Text -> shingles (shared by every function here, and by :func:`shingles`):

1. normalise (:func:`normalize`): lowercase, every run of non-word characters
   (anything but Python's Unicode ``\\w``) becomes one space, strip -- so case,
   punctuation and spacing do not hide a duplicate;
2. ``unit='word'``: the n-grams of words joined by one space; ``unit='char'``:
   the n-grams of characters of the normalised text. A text shorter than ``n``
   units gives one shingle (the whole normalised text); an empty text none.

Because a word n-gram of the normalised text is a contiguous byte range of it,
the kernels hash byte slices in place and never build shingle strings.

Verification uses each row's shingles as a sorted array of 64-bit hashes (the
first 8 bytes of the same SHA-1, i.e. datasketch's ``sha1_hash64``), not Python
sets: a 64-bit collision inside one pair of short documents has probability
~1e-17, and the arrays take 8 bytes per shingle.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import Sequence

import numba
import numpy as np
import polars as pl

__all__ = [
    "Sketches", "NormalizedCorpus", "signatures", "sketch", "shingles", "normalize", "lsh_params",
    "cross_matches", "greedy_dedup", "jaccard_pairs", "permutations",
]

UNITS = ("word", "char")
#: Rows per kernel call: bounds the memory of normalised text and raw shingle
#: hashes; results do not depend on it.
DEFAULT_BATCH = 32768


#: Below this many rows a kernel runs on one thread: launching numba's thread
#: pool costs ~0.1 ms on an idle machine but tens of ms on an oversubscribed one
#: (the launch waits for every worker to be scheduled), which dominated
#: one-text calls such as :func:`shingles`.
SMALL = 2048


@contextlib.contextmanager
def _threads_for(n: int):
    if n >= SMALL:
        yield
        return
    old = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(old)


# --- text -> normalised UTF-8 bytes --------------------------------------------------

@functools.lru_cache(maxsize=1)
def _unicode_tables() -> tuple[np.ndarray, np.ndarray]:
    """Per code point: is it a word character (Python's ``\w``: ``str.isalnum()``
    or ``_``), and its lowercase (Python's ``str.lower()``; U+0130, the one code
    point whose lowercase is two characters, maps to ``i``). Built once per
    process from the running Python's Unicode database in ~0.3 s -- a regex
    replace in polars over the texts themselves was 10x slower than the numba
    pass these tables feed."""
    import re

    cps = np.r_[0:0xD800, 0xE000:0x110000].astype(np.uint32)  # no surrogates
    big = cps.tobytes().decode("utf-32-le")
    spans = np.array([m.span() for m in re.finditer(r"\w+", big)], dtype=np.int64).reshape(-1, 2)
    edge = np.zeros(len(big) + 1, np.int64)
    np.add.at(edge, spans[:, 0], 1)
    np.add.at(edge, spans[:, 1], -1)
    word = np.zeros(0x110000, np.uint8)
    word[cps] = np.cumsum(edge[:-1]) > 0
    lower = np.arange(0x110000, dtype=np.int32)
    lowered = big.replace("\u0130", "i").lower()  # 1:1 with big once U+0130 is handled
    lower[cps] = np.frombuffer(lowered.encode("utf-32-le"), np.uint32).astype(np.int32)
    return word, lower


@numba.njit(inline="always")
def _decode(buf, p, e):
    """(code point, byte length) of the UTF-8 character at ``buf[p]``."""
    b0 = np.int64(buf[p])
    if b0 < 0x80:
        return b0, 1
    if b0 >= 0xF0 and p + 3 < e:
        return (((b0 & 0x07) << 18) | ((np.int64(buf[p + 1]) & 0x3F) << 12)
                | ((np.int64(buf[p + 2]) & 0x3F) << 6) | (np.int64(buf[p + 3]) & 0x3F)), 4
    if b0 >= 0xE0 and p + 2 < e:
        return (((b0 & 0x0F) << 12) | ((np.int64(buf[p + 1]) & 0x3F) << 6)
                | (np.int64(buf[p + 2]) & 0x3F)), 3
    if b0 >= 0xC0 and p + 1 < e:
        return ((b0 & 0x1F) << 6) | (np.int64(buf[p + 1]) & 0x3F), 2
    return 0xFFFD, 1  # not reachable for valid UTF-8 (polars strings are)


@numba.njit(inline="always")
def _utf8_len(c):
    if c < 0x80:
        return 1
    if c < 0x800:
        return 2
    if c < 0x10000:
        return 3
    return 4


@numba.njit(cache=True, parallel=True)
def _normalize_kernel(buf, offs, word, lower, ooffs, out, write):
    """Lowercase; runs of non-word characters -> one space; no leading or
    trailing space. ``write=False``: only the output lengths into ``ooffs[i+1]``."""
    n = offs.shape[0] - 1
    for i in numba.prange(n):
        p = offs[i]
        e = offs[i + 1]
        o = ooffs[i] if write else 0
        pending = False
        started = False
        while p < e:
            b0 = buf[p]
            if b0 < 0x80:  # ASCII fast path
                c = np.int64(b0)
                if 65 <= c <= 90:
                    c += 32
                isw = (97 <= c <= 122) or (48 <= c <= 57) or c == 95
                k = 1
            else:
                c, k = _decode(buf, p, e)
                c = np.int64(lower[c])
                isw = word[c] != 0
            p += k
            if not isw:
                pending = True
                continue
            if pending and started:
                if write:
                    out[o] = 32
                o += 1
            pending = False
            started = True
            if c < 0x80:
                if write:
                    out[o] = c
                o += 1
            else:
                m = _utf8_len(c)
                if write:
                    if m == 2:
                        out[o] = 0xC0 | (c >> 6)
                        out[o + 1] = 0x80 | (c & 0x3F)
                    elif m == 3:
                        out[o] = 0xE0 | (c >> 12)
                        out[o + 1] = 0x80 | ((c >> 6) & 0x3F)
                        out[o + 2] = 0x80 | (c & 0x3F)
                    else:
                        out[o] = 0xF0 | (c >> 18)
                        out[o + 1] = 0x80 | ((c >> 12) & 0x3F)
                        out[o + 2] = 0x80 | ((c >> 6) & 0x3F)
                        out[o + 3] = 0x80 | (c & 0x3F)
                o += m
        if not write:
            ooffs[i + 1] = o


def _as_series(texts: Sequence[str] | pl.Series) -> pl.Series:
    if isinstance(texts, pl.Series):
        return texts.cast(pl.String)
    return pl.Series("text", list(texts), dtype=pl.String)


def _buffers(strings: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """The UTF-8 bytes and int64 offsets of a string Series (nulls as empty)."""
    arr = strings.fill_null("").rechunk().to_arrow(compat_level=pl.CompatLevel.oldest())
    if hasattr(arr, "combine_chunks"):
        arr = arr.combine_chunks()
    bufs = arr.buffers()
    n = len(arr)
    if n == 0 or bufs[1] is None:
        return np.zeros(0, np.uint8), np.zeros(n + 1, np.int64)
    offs = np.frombuffer(bufs[1], dtype=np.int64)[arr.offset: arr.offset + n + 1]
    data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None else np.zeros(0, np.uint8)
    if offs[0] != 0:
        data, offs = data[offs[0]:offs[-1]], offs - offs[0]
    return data, offs


def _normalize_buffers(buf: np.ndarray, offs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    word, lower = _unicode_tables()
    n = offs.shape[0] - 1
    ooffs = np.zeros(n + 1, np.int64)
    dummy = np.zeros(0, np.uint8)
    with _threads_for(n):
        _normalize_kernel(buf, offs, word, lower, ooffs, dummy, False)
        np.cumsum(ooffs, out=ooffs)
        out = np.empty(int(ooffs[-1]), np.uint8)
        _normalize_kernel(buf, offs, word, lower, ooffs, out, True)
    return out, ooffs


def _series_from_buffers(buf: np.ndarray, offs: np.ndarray, name: str = "text") -> pl.Series:
    import pyarrow as pa

    arr = pa.LargeStringArray.from_buffers(offs.shape[0] - 1, pa.py_buffer(offs), pa.py_buffer(buf))
    return pl.Series(name, arr)


def normalize(texts: Sequence[str] | pl.Series) -> pl.Series:
    """Lowercase, collapse runs of non-word characters (anything but Python's
    ``\w``) to one space, strip: ``re.sub(r"\W+", " ", text.lower()).strip()``
    per character, vectorized. Nulls become empty strings."""
    series = _as_series(texts)
    buf, offs = _normalize_buffers(*_buffers(series))
    return _series_from_buffers(buf, offs, series.name or "text")


# --- datasketch's permutations -------------------------------------------------

@functools.lru_cache(maxsize=16)
def permutations(num_perm: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """``(a, b)`` of datasketch 2.0 ``MinHash(num_perm, seed)`` with scheme
    ``affine32``, drawn the way ``MinHash._init_permutations`` draws them."""
    gen = np.random.RandomState(seed)
    a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint32)
    return a, b


# --- numba kernels -------------------------------------------------------------

@numba.njit(inline="always")
def _bswap32(x):
    return (((x & np.uint64(0xFF)) << np.uint64(24)) | ((x & np.uint64(0xFF00)) << np.uint64(8))
            | ((x >> np.uint64(8)) & np.uint64(0xFF00)) | ((x >> np.uint64(24)) & np.uint64(0xFF)))


@numba.njit(inline="always")
def _rotl(x, n):
    return np.uint32((x << np.uint32(n)) | (x >> np.uint32(32 - n)))


@numba.njit(cache=True)
def _sha1_words(buf, s, e, w):
    """SHA-1 state words h0..h3 of buf[s:e] (the first 16 digest bytes, big-endian
    words). ``w``: uint32[80] scratch. A plain SHA-1 (FIPS 180-4) in uint32
    arithmetic (each sum is cast back to uint32 because numba widens integer
    arithmetic); numba has no hashlib, and calling hashlib once per shingle is
    what makes datasketch slow."""
    h0 = np.uint32(0x67452301); h1 = np.uint32(0xEFCDAB89); h2 = np.uint32(0x98BADCFE)
    h3 = np.uint32(0x10325476); h4 = np.uint32(0xC3D2E1F0)
    L = e - s
    total = ((L + 8) // 64 + 1) * 64
    bitlen = np.uint64(L) * np.uint64(8)
    for blk in range(0, total, 64):
        for i in range(16):
            base = blk + 4 * i
            if base + 4 <= L:
                p = s + base
                word = ((np.uint32(buf[p]) << np.uint32(24)) | (np.uint32(buf[p + 1]) << np.uint32(16))
                        | (np.uint32(buf[p + 2]) << np.uint32(8)) | np.uint32(buf[p + 3]))
            elif base >= total - 8:
                if base == total - 8:
                    word = np.uint32(bitlen >> np.uint64(32))
                else:
                    word = np.uint32(bitlen & np.uint64(0xFFFFFFFF))
            elif base > L:
                word = np.uint32(0)
            else:
                word = np.uint32(0)
                for j in range(4):
                    q = base + j
                    if q < L:
                        byte = np.uint32(buf[s + q])
                    elif q == L:
                        byte = np.uint32(0x80)
                    else:
                        byte = np.uint32(0)
                    word = np.uint32((word << np.uint32(8)) | byte)
            w[i] = word
        for i in range(16, 80):
            w[i] = _rotl(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1)
        a = h0; b = h1; c = h2; d = h3; ee = h4
        for i in range(0, 20):
            t = np.uint32(_rotl(a, 5) + np.uint32((b & c) | (~b & d)) + ee + np.uint32(0x5A827999) + w[i])
            ee = d; d = c; c = _rotl(b, 30); b = a; a = t
        for i in range(20, 40):
            t = np.uint32(_rotl(a, 5) + (b ^ c ^ d) + ee + np.uint32(0x6ED9EBA1) + w[i])
            ee = d; d = c; c = _rotl(b, 30); b = a; a = t
        for i in range(40, 60):
            t = np.uint32(_rotl(a, 5) + ((b & c) | (b & d) | (c & d)) + ee + np.uint32(0x8F1BBCDC) + w[i])
            ee = d; d = c; c = _rotl(b, 30); b = a; a = t
        for i in range(60, 80):
            t = np.uint32(_rotl(a, 5) + (b ^ c ^ d) + ee + np.uint32(0xCA62C1D6) + w[i])
            ee = d; d = c; c = _rotl(b, 30); b = a; a = t
        h0 = np.uint32(h0 + a); h1 = np.uint32(h1 + b); h2 = np.uint32(h2 + c); h3 = np.uint32(h3 + d); h4 = np.uint32(h4 + ee)
    return h0, h1, h2, h3


@numba.njit(cache=True)
def _sha1_64(buf, s, e, w):
    """First 8 bytes of SHA-1(buf[s:e]) read little-endian (= datasketch's
    ``sha1_hash64``; its low 32 bits are ``sha1_hash32``)."""
    h0, h1, _h2, _h3 = _sha1_words(buf, s, e, w)
    return _bswap32(np.uint64(h0)) | (_bswap32(np.uint64(h1)) << np.uint64(32))


@numba.njit(inline="always")
def _fmix64(h):
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xFF51AFD7ED558CCD)
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xC4CEB9FE1A85EC53)
    h ^= h >> np.uint64(33)
    return h


@numba.njit(cache=True)
def _digest128(buf, s, e):
    """A fast 128-bit fingerprint of buf[s:e] (two multiply-xorshift lanes over
    8-byte words, length mixed in, MurmurHash3 finaliser) for exact-duplicate
    grouping. Not cryptographic -- nobody crafts collisions against their own
    training set -- and ~5x cheaper than a SHA-1 of the whole text."""
    h1 = np.uint64(0x243F6A8885A308D3) ^ np.uint64(e - s)
    h2 = np.uint64(0x13198A2E03707344)
    p = s
    while p < e:
        k = np.uint64(0)
        for j in range(min(8, e - p)):
            k |= np.uint64(buf[p + j]) << np.uint64(8 * j)
        p += 8
        h1 = (h1 ^ k) * np.uint64(0x9E3779B97F4A7C15)
        h1 ^= h1 >> np.uint64(31)
        h2 = (h2 ^ k) * np.uint64(0xC2B2AE3D27D4EB4F)
        h2 ^= h2 >> np.uint64(29)
        h2 += h1
    return _fmix64(h1 ^ (h2 >> np.uint64(7))), _fmix64(h2 + np.uint64(e - s))


@numba.njit(cache=True)
def _count_shingles(buf, offs, ngram, char_unit):
    n = offs.shape[0] - 1
    counts = np.zeros(n, np.int64)
    for i in range(n):
        s = offs[i]
        e = offs[i + 1]
        if e <= s:
            continue
        units = 0
        if char_unit:
            for p in range(s, e):
                if (buf[p] & 0xC0) != 0x80:
                    units += 1
        else:
            units = 1
            for p in range(s, e):
                if buf[p] == 32:
                    units += 1
        counts[i] = max(units - ngram + 1, 1)
    return counts


@numba.njit(cache=True, parallel=True)
def _hash_shingles(buf, offs, ngram, char_unit, starts, out, uniq):
    """SHA-1 every shingle of every document into ``out[starts[i]:starts[i+1]]``,
    sort each document's slice and move its unique values to the front;
    ``uniq[i]`` = number of unique values."""
    n = offs.shape[0] - 1
    for i in numba.prange(n):
        s = offs[i]
        e = offs[i + 1]
        o = starts[i]
        m = starts[i + 1] - o
        if m == 0:
            continue
        w = np.empty(80, np.uint32)
        # unit boundaries: pos[k] = byte where unit k starts, pos[units] = end (+1 for words)
        pos = np.empty(e - s + 2, np.int64)
        units = 0
        if char_unit:
            for p in range(s, e):
                if (buf[p] & 0xC0) != 0x80:
                    pos[units] = p
                    units += 1
            pos[units] = e
        else:
            pos[0] = s
            units = 1
            for p in range(s, e):
                if buf[p] == 32:
                    pos[units] = p + 1
                    units += 1
            pos[units] = e + 1  # so that a word n-gram ends at pos[k+n] - 1
        if units <= ngram:
            out[o] = _sha1_64(buf, s, e, w)
        else:
            for k in range(m):
                if char_unit:
                    out[o + k] = _sha1_64(buf, pos[k], pos[k + ngram], w)
                else:
                    out[o + k] = _sha1_64(buf, pos[k], pos[k + ngram] - 1, w)
        seg = out[o:o + m]
        seg.sort()
        u = 1
        for k in range(1, m):
            if seg[k] != seg[u - 1]:
                seg[u] = seg[k]
                u += 1
        uniq[i] = u


@numba.njit(cache=True, parallel=True)
def _fingerprints(buf, offs, out):
    for i in numba.prange(offs.shape[0] - 1):
        d0, d1 = _digest128(buf, offs[i], offs[i + 1])
        out[i, 0] = d0
        out[i, 1] = d1


@numba.njit(cache=True)
def _gather_docs(buf, offs, sel):
    """The bytes and offsets of documents ``sel`` of a (buf, offs) batch."""
    m = sel.shape[0]
    goffs = np.zeros(m + 1, np.int64)
    for k in range(m):
        goffs[k + 1] = goffs[k] + offs[sel[k] + 1] - offs[sel[k]]
    gbuf = np.empty(goffs[m], np.uint8)
    for k in range(m):
        gbuf[goffs[k]:goffs[k + 1]] = buf[offs[sel[k]]:offs[sel[k] + 1]]
    return gbuf, goffs


@numba.njit(cache=True, parallel=True)
def _compact_and_sign(raw, starts, uniq, a, b, hoffs, hashes, sig):
    """Copy each document's unique hashes to ``hashes[hoffs[i]:hoffs[i+1]]`` and
    compute its affine32 MinHash into ``sig[i]``. ``a``/``b``/``sig`` are uint32,
    so the inner loop is 8-lane SIMD and wraps mod 2^32 exactly as datasketch."""
    n = uniq.shape[0]
    P = a.shape[0]
    M = np.uint64(0xFFFFFFFF)
    for i in numba.prange(n):
        o = starts[i]
        h = hoffs[i]
        acc = np.full(P, np.uint32(0xFFFFFFFF), np.uint32)
        for k in range(uniq[i]):
            v = raw[o + k]
            hashes[h + k] = v
            # datasketch affine32: MurmurHash3 fmix32 of sha1_hash32, then a*x + b mod 2^32
            x = v & M
            x = x ^ (x >> np.uint64(16))
            x = (x * np.uint64(0x85EBCA6B)) & M
            x = x ^ (x >> np.uint64(13))
            x = (x * np.uint64(0xC2B2AE35)) & M
            x = x ^ (x >> np.uint64(16))
            x32 = np.uint32(x)
            for p in range(P):
                acc[p] = min(acc[p], np.uint32(a[p] * x32 + b[p]))
        for p in range(P):
            sig[i, p] = acc[p]


@dataclass
class Sketches:
    """Signatures plus the data needed to verify candidates exactly.

    ``sig``: uint32 (n, num_perm), datasketch affine32 hash values.
    ``hashes``/``hoffs``: row i's shingles as sorted unique uint64 hashes
    ``hashes[hoffs[i]:hoffs[i+1]]`` (empty for an empty text).
    """

    sig: np.ndarray
    hashes: np.ndarray
    hoffs: np.ndarray

    @property
    def sizes(self) -> np.ndarray:
        return np.diff(self.hoffs)

    def __len__(self) -> int:
        return self.sig.shape[0]


def _check(ngram: int, unit: str, num_perm: int) -> None:
    if unit not in UNITS:
        raise ValueError(f"unknown shingle unit {unit!r}; expected one of {UNITS}")
    if ngram < 1:
        raise ValueError("ngram must be >= 1")
    if num_perm < 2:
        raise ValueError("num_perm must be >= 2")


def _sketch_batch(buf: np.ndarray, offs: np.ndarray, ngram: int, char_unit: bool, a: np.ndarray,
                  b: np.ndarray, sig_out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Shingle hashes and signatures of one batch of normalised texts;
    returns (sorted unique hashes of all docs, unique count per doc)."""
    m = offs.shape[0] - 1
    counts = _count_shingles(buf, offs, ngram, char_unit)
    starts = np.zeros(m + 1, np.int64)
    np.cumsum(counts, out=starts[1:])
    raw = np.empty(starts[-1], np.uint64)
    uniq = np.zeros(m, np.int64)
    hoffs = np.zeros(m + 1, np.int64)
    with _threads_for(m):
        _hash_shingles(buf, offs, ngram, char_unit, starts, raw, uniq)
        np.cumsum(uniq, out=hoffs[1:])
        hashes = np.empty(hoffs[-1], np.uint64)
        _compact_and_sign(raw, starts, uniq, a, b, hoffs, hashes, sig_out)
    return hashes, uniq


def _assemble(sig: np.ndarray, hash_parts: list[np.ndarray], size_parts: list[np.ndarray]) -> Sketches:
    n = sig.shape[0]
    sizes = np.concatenate(size_parts) if size_parts else np.zeros(0, np.int64)
    hoffs = np.zeros(n + 1, np.int64)
    np.cumsum(sizes, out=hoffs[1:])
    hashes = np.concatenate(hash_parts) if hash_parts else np.zeros(0, np.uint64)
    return Sketches(sig=sig, hashes=hashes, hoffs=hoffs)


def sketch(texts: Sequence[str] | pl.Series, num_perm: int = 128, ngram: int = 3, seed: int = 1,
           unit: str = "word", batch_size: int = DEFAULT_BATCH,
           progress_cb=None, normalized: bool = False) -> Sketches:
    """Signatures and verification hashes of every text (see module docstring).

    ``batch_size`` bounds peak memory (texts are normalised batch by batch);
    the result is the same for any value. ``progress_cb(done_rows)`` is called
    after each batch. ``normalized``: the texts already went through
    :func:`normalize`.
    """
    _check(ngram, unit, num_perm)
    series = _as_series(texts)
    n = series.len()
    a, b = permutations(num_perm, seed)
    sig = np.empty((n, num_perm), np.uint32)
    hash_parts: list[np.ndarray] = []
    size_parts: list[np.ndarray] = []
    batch_size = max(1, int(batch_size))
    for lo in range(0, n, batch_size):
        hi = min(n, lo + batch_size)
        buf, offs = _buffers(series.slice(lo, hi - lo))
        if not normalized:
            buf, offs = _normalize_buffers(buf, offs)
        hashes, uniq = _sketch_batch(buf, offs, ngram, unit == "char", a, b, sig[lo:hi])
        hash_parts.append(hashes)
        size_parts.append(uniq)
        if progress_cb is not None:
            progress_cb(hi)
    return _assemble(sig, hash_parts, size_parts)


class NormalizedCorpus:
    """Texts normalised once, batch by batch, with a 128-bit fingerprint per
    text: the exact stage groups on the fingerprints, and :meth:`sketch` then
    sketches only the rows it still needs, without normalising twice."""

    def __init__(self, texts: Sequence[str] | pl.Series, batch_size: int = DEFAULT_BATCH, progress_cb=None):
        series = _as_series(texts)
        self.n = series.len()
        self.batch_size = max(1, int(batch_size))
        self.fingerprint = np.empty((self.n, 2), np.uint64)
        self.lengths = np.empty(self.n, np.int64)
        self._batches: list[tuple[np.ndarray, np.ndarray] | None] = []
        for lo in range(0, self.n, self.batch_size):
            hi = min(self.n, lo + self.batch_size)
            buf, offs = _normalize_buffers(*_buffers(series.slice(lo, hi - lo)))
            with _threads_for(hi - lo):
                _fingerprints(buf, offs, self.fingerprint[lo:hi])
            self.lengths[lo:hi] = np.diff(offs)
            self._batches.append((buf, offs))
            if progress_cb is not None:
                progress_cb(hi)

    def sketch(self, rows: np.ndarray, num_perm: int = 128, ngram: int = 3, seed: int = 1,
               unit: str = "word", release: bool = True, progress_cb=None) -> Sketches:
        """Sketches of ``rows`` (ascending row indices), in that order. With
        ``release`` each normalised batch is freed once sketched."""
        _check(ngram, unit, num_perm)
        rows = np.ascontiguousarray(rows, np.int64)
        a, b = permutations(num_perm, seed)
        sig = np.empty((rows.size, num_perm), np.uint32)
        hash_parts: list[np.ndarray] = []
        size_parts: list[np.ndarray] = []
        bounds = np.searchsorted(rows, np.arange(0, self.n + self.batch_size, self.batch_size))
        for k, batch in enumerate(self._batches):
            lo, hi = bounds[k], bounds[k + 1]
            if hi > lo:
                if batch is None:
                    raise RuntimeError("this batch was already sketched and released")
                buf, offs = batch
                gbuf, goffs = _gather_docs(buf, offs, rows[lo:hi] - k * self.batch_size)
                hashes, uniq = _sketch_batch(gbuf, goffs, ngram, unit == "char", a, b, sig[lo:hi])
                hash_parts.append(hashes)
                size_parts.append(uniq)
            if release:
                self._batches[k] = None
            if progress_cb is not None:
                progress_cb(int(hi))
        return _assemble(sig, hash_parts, size_parts)


def signatures(texts: Sequence[str] | pl.Series, num_perm: int = 128, ngram: int = 3, seed: int = 1,
               unit: str = "word") -> np.ndarray:
    """MinHash signatures, uint64 (n, num_perm), equal to the ``hashvalues`` of
    ``datasketch.MinHash(num_perm=num_perm, seed=seed)`` updated with
    ``shingles(text, ngram, unit)`` (datasketch stores them as uint32; the
    values are the same)."""
    return sketch(texts, num_perm=num_perm, ngram=ngram, seed=seed, unit=unit).sig.astype(np.uint64)


def shingles(text: str, ngram: int = 3, unit: str = "word") -> set[bytes]:
    """The shingle set of one text, as UTF-8 bytes (what to feed datasketch).

    Normalises through the same kernel as :func:`sketch`, so the two always
    agree (the tests check both against datasketch)."""
    _check(ngram, unit, 2)
    norm = normalize([text])[0]
    if not norm:
        return set()
    units = list(norm) if unit == "char" else norm.split(" ")
    sep = "" if unit == "char" else " "
    if len(units) <= ngram:
        return {norm.encode("utf-8")}
    return {sep.join(units[i:i + ngram]).encode("utf-8") for i in range(len(units) - ngram + 1)}


# --- LSH -------------------------------------------------------------------------

@functools.lru_cache(maxsize=64)
def lsh_params(threshold: float, num_perm: int, fp_weight: float = 0.5) -> tuple[int, int]:
    """(bands, rows) from datasketch's own optimiser (the same choice
    ``MinHashLSH`` makes for these weights). Candidates are verified here, so
    a lower false-positive weight trades verification time for recall."""
    from datasketch.lsh import _optimal_param

    return _optimal_param(threshold, num_perm, fp_weight, 1.0 - fp_weight)


@numba.njit(cache=True, parallel=True)
def _band_keys(sig, bands, rows):
    """A 64-bit key per (row, band): a mixing fold of the band's r values.
    A key collision only adds a candidate, which verification then rejects."""
    n = sig.shape[0]
    keys = np.empty((bands, n), np.uint64)
    for i in numba.prange(n):
        for j in range(bands):
            h = np.uint64(0x9E3779B97F4A7C15) * np.uint64(j + 1)
            for k in range(j * rows, (j + 1) * rows):
                h = h ^ np.uint64(sig[i, k])
                h = h * np.uint64(0xBF58476D1CE4E5B9)
                h = h ^ (h >> np.uint64(29))
            keys[j, i] = h
    return keys


def _bucket_ids(keys: np.ndarray) -> np.ndarray:
    """Dense bucket ids (bands, n) int64, distinct across bands."""
    out = np.empty(keys.shape, np.int64)
    base = 0
    for j in range(keys.shape[0]):
        _, inv = np.unique(keys[j], return_inverse=True)
        out[j] = inv.reshape(-1) + base
        base += int(inv.max()) + 1 if inv.size else 0
    return out


@numba.njit(cache=True)
def _jaccard(hashes, hoffs, x, y):
    s1 = hoffs[x]
    e1 = hoffs[x + 1]
    s2 = hoffs[y]
    e2 = hoffs[y + 1]
    n1 = e1 - s1
    n2 = e2 - s2
    if n1 == 0 or n2 == 0:
        return 0.0
    inter = 0
    i = s1
    j = s2
    while i < e1 and j < e2:
        u = hashes[i]
        v = hashes[j]
        if u == v:
            inter += 1
            i += 1
            j += 1
        elif u < v:
            i += 1
        else:
            j += 1
    return inter / (n1 + n2 - inter)


@numba.njit(cache=True)
def _row_jaccard(hashes, hoffs, soffs, shape, x, y, threshold):
    """The lowest segment Jaccard of rows ``x`` and ``y``, whose segments are
    ``soffs[x]:soffs[x+1]`` (each with its shingles in ``hashes[hoffs[s]:hoffs[s+1]]``);
    -1 when their shapes (number and kinds of segments) differ. Two empty
    segments are equal (1.0), one empty segment matches nothing (0.0). Stops at
    the first segment below ``threshold``: the pair cannot be a duplicate then."""
    if shape[x] != shape[y] or soffs[x + 1] - soffs[x] != soffs[y + 1] - soffs[y]:
        return -1.0
    low = 1.0
    for t in range(soffs[x + 1] - soffs[x]):
        a = soffs[x] + t
        b = soffs[y] + t
        if hoffs[a + 1] == hoffs[a] and hoffs[b + 1] == hoffs[b]:
            continue
        jac = _jaccard(hashes, hoffs, a, b)
        if jac < low:
            low = jac
        if low < threshold:
            return low
    return low


@numba.njit(cache=True)
def _greedy(bucket, order, hashes, hoffs, soffs, shape, threshold):
    """Keep-priority greedy: walk rows in ``order``; a row is removed iff an
    already-kept row shares an LSH bucket with it and *every* one of their
    segments has exact Jaccard >= threshold (its partner = the kept row whose
    lowest segment Jaccard is highest, ties to the higher priority; a plain text
    is one segment). Otherwise it is kept and enters its buckets. Sequential, so
    the result cannot depend on threads."""
    bands = bucket.shape[0]
    n = bucket.shape[1]
    nb = 0
    for j in range(bands):
        for i in range(n):
            if bucket[j, i] + 1 > nb:
                nb = bucket[j, i] + 1
    head = np.full(nb, -1, np.int64)
    nxt = np.full(bands * n, -1, np.int64)
    stamp = np.full(n, -1, np.int64)
    rank = np.full(n, n, np.int64)
    for p in range(order.shape[0]):
        rank[order[p]] = p
    partner = np.full(n, -1, np.int64)
    sim = np.zeros(n, np.float64)
    checked = 0
    eps = 1e-12
    for p in range(order.shape[0]):
        d = order[p]
        nd = hoffs[soffs[d + 1]] - hoffs[soffs[d]]
        if nd == 0:
            continue  # an empty text has no shingles: never a near-duplicate
        best = -1
        bestj = -1.0
        for j in range(bands):
            e = head[bucket[j, d]]
            while e != -1:
                k = e // bands
                if stamp[k] != p:
                    stamp[k] = p
                    nk = hoffs[soffs[k + 1]] - hoffs[soffs[k]]
                    # size filter: J <= min/max (per segment, hence for the totals
                    # too), skip pairs that cannot reach it
                    if min(nd, nk) >= (threshold - eps) * max(nd, nk):
                        checked += 1
                        jac = _row_jaccard(hashes, hoffs, soffs, shape, d, k, threshold - eps)
                        if jac >= threshold - eps and (jac > bestj or (jac == bestj and rank[k] < rank[best])):
                            best = k
                            bestj = jac
                e = nxt[e]
        if best >= 0:
            partner[d] = best
            sim[d] = bestj
        else:
            for j in range(bands):
                slot = d * bands + j
                b_ = bucket[j, d]
                nxt[slot] = head[b_]
                head[b_] = slot
    return partner, sim, checked


def greedy_dedup(sk: Sketches, threshold: float = 0.8, order: np.ndarray | None = None,
                 fp_weight: float = 0.5, segments: np.ndarray | None = None,
                 shape: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Near-duplicate removal over sketches, in keep-priority ``order``
    (default: row order; rows missing from ``order`` take no part -- e.g. rows
    an exact stage already removed). Returns ``partner`` (int64, -1 = kept; else the kept
    row this one duplicates), ``similarity`` (its verified Jaccard) and stats.
    Every removed row has a verified Jaccard >= threshold with its partner,
    which is itself kept.

    With ``segments`` (int64 offsets, length rows + 1), ``sk`` holds one sketch
    per *segment* (a turn of a conversation, say) and row ``i`` is segments
    ``segments[i]:segments[i+1]``: candidates come from the row's MinHash (the
    element-wise minimum of its segments' signatures, i.e. the MinHash of the
    union of their shingles), and a pair counts only when every segment matches
    its counterpart (Jaccard >= threshold) and ``shape`` (an int64 per row: the
    kinds of its segments) is equal; ``similarity`` is then the lowest segment
    Jaccard."""
    if segments is None:
        segments = np.arange(len(sk) + 1, dtype=np.int64)
        sig = sk.sig
    else:
        segments = np.ascontiguousarray(segments, np.int64)
        counts = np.diff(segments)
        if (counts < 1).any():
            raise ValueError("every row needs at least one segment")
        sig = np.minimum.reduceat(sk.sig, segments[:-1], axis=0) if len(segments) > 1 else sk.sig[:0]
    n = len(segments) - 1
    shape = np.zeros(n, np.int64) if shape is None else np.ascontiguousarray(shape, np.int64)
    if order is None:
        order = np.arange(n, dtype=np.int64)
    order = np.ascontiguousarray(order, dtype=np.int64)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0), {"bands": 0, "rows_per_band": 0, "verified_pairs": 0}
    bands, rows = lsh_params(float(threshold), sk.sig.shape[1], fp_weight)
    with _threads_for(n):
        keys = _band_keys(np.ascontiguousarray(sig), bands, rows)
    bucket = _bucket_ids(keys)
    del keys
    partner, sim, checked = _greedy(bucket, order, sk.hashes, sk.hoffs, segments, shape, float(threshold))
    return partner, sim, {"bands": bands, "rows_per_band": rows, "verified_pairs": int(checked)}


@numba.njit(cache=True)
def _cross_candidates(qkeys, ckeys_sorted, corder, qsizes, csizes, threshold):
    """Per band, binary-search every query key among the sorted corpus keys;
    emit (query, corpus) pairs passing the size filter (duplicates across
    bands are removed by the caller)."""
    bands = qkeys.shape[0]
    nq = qkeys.shape[1]
    cap = 1024
    qo = np.empty(cap, np.int64)
    co = np.empty(cap, np.int64)
    m = 0
    for j in range(bands):
        row = ckeys_sorted[j]
        for q in range(nq):
            if qsizes[q] == 0:
                continue
            key = qkeys[j, q]
            lo = np.searchsorted(row, key, side="left")
            hi = np.searchsorted(row, key, side="right")
            for t in range(lo, hi):
                c = corder[j, t]
                a_ = qsizes[q]
                b_ = csizes[c]
                if b_ == 0 or min(a_, b_) < (threshold - 1e-12) * max(a_, b_):
                    continue
                if m == cap:
                    cap *= 2
                    qo2 = np.empty(cap, np.int64)
                    co2 = np.empty(cap, np.int64)
                    qo2[:m] = qo[:m]
                    co2[:m] = co[:m]
                    qo = qo2
                    co = co2
                qo[m] = q
                co[m] = c
                m += 1
    return qo[:m], co[:m]


@numba.njit(cache=True, parallel=True)
def _verify(pairs_a, pairs_b, hashes, hoffs):
    out = np.empty(pairs_a.shape[0], np.float64)
    for t in numba.prange(pairs_a.shape[0]):
        out[t] = _jaccard(hashes, hoffs, pairs_a[t], pairs_b[t])
    return out


def jaccard_pairs(sk: Sketches, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Exact Jaccard (on 64-bit shingle hashes) of row pairs of one Sketches."""
    with _threads_for(len(left)):
        return _verify(np.ascontiguousarray(left, np.int64), np.ascontiguousarray(right, np.int64),
                       sk.hashes, sk.hoffs)


def cross_matches(queries: Sequence[str] | pl.Series, corpus: Sequence[str] | pl.Series,
                  threshold: float = 0.8, num_perm: int = 128, ngram: int = 3, unit: str = "word",
                  seed: int = 1, fp_weight: float = 0.01) -> pl.DataFrame:
    """Every (query, corpus) pair with exact shingle Jaccard >= threshold among
    the LSH candidates: columns ``query_idx``, ``corpus_idx`` (int64) and
    ``jaccard`` (float64), sorted by query then corpus index. Used to keep test
    sets free of training-set near-duplicates."""
    q = _as_series(queries)
    c = _as_series(corpus)
    nq = q.len()
    both = sketch(pl.concat([q.cast(pl.String).rename("text"), c.cast(pl.String).rename("text")]),
                  num_perm=num_perm, ngram=ngram, seed=seed, unit=unit)
    empty = pl.DataFrame(schema={"query_idx": pl.Int64, "corpus_idx": pl.Int64, "jaccard": pl.Float64})
    if nq == 0 or c.len() == 0:
        return empty
    bands, rows = lsh_params(float(threshold), num_perm, fp_weight)
    with _threads_for(len(both)):
        keys = _band_keys(both.sig, bands, rows)
    qkeys = np.ascontiguousarray(keys[:, :nq])
    ckeys = keys[:, nq:]
    corder = np.argsort(ckeys, axis=1, kind="stable")
    ckeys_sorted = np.take_along_axis(ckeys, corder, axis=1)
    sizes = both.sizes
    qi, ci = _cross_candidates(qkeys, ckeys_sorted, corder, sizes[:nq], sizes[nq:], float(threshold))
    if qi.size == 0:
        return empty
    pairs = np.unique(np.stack([qi, ci], axis=1), axis=0)
    jac = jaccard_pairs(both, pairs[:, 0], pairs[:, 1] + nq)
    keep = jac >= threshold - 1e-12
    return pl.DataFrame({"query_idx": pairs[keep, 0], "corpus_idx": pairs[keep, 1],
                         "jaccard": jac[keep]})
