"""BLAKE2b-128 of every value of a binary column at once, as hex: the content ids
of ``schema.with_ids``.

Why not ``hashlib``: hashlib hashes one bytes object per call, so a column of a
million rows costs a million Python calls plus a Python ``bytes`` per row
(``to_list``), ~1.3 s of CPU per million chat rows, on the ingest's hot path.
This kernel (numba, RFC 7693) reads the column's Arrow buffers (offsets and
data) directly, hashes the rows in parallel and writes the hex digests into one
buffer that becomes the id column without a Python object per row. The digests
are bit-identical to ``hashlib.blake2b(value, digest_size=16).hexdigest()``
(tests/test_blake2b.py checks every length 0..300 and real rows); ids and
version digests depend on that.
"""

from __future__ import annotations

import numba
import numpy as np
import polars as pl
import pyarrow as pa

#: Below this many rows the kernel runs on one thread (starting numba's thread
#: pool costs more than it saves; see curate/minhash.py).
SMALL = 2048

_IV = np.array([
    0x6A09E667F3BCC908, 0xBB67AE8584CAA73B, 0x3C6EF372FE94F82B, 0xA54FF53A5F1D36F1,
    0x510E527FADE682D1, 0x9B05688C2B3E6C1F, 0x1F83D9ABFB41BD6B, 0x5BE0CD19137E2179,
], dtype=np.uint64)

#: The message word order of each round (a tuple: a compile-time constant to numba).
_SIGMA = tuple(tuple(r) for r in [
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
    [14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3],
    [11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4],
    [7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8],
    [9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13],
    [2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9],
    [12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11],
    [13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10],
    [6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5],
    [10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0],
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
    [14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3],
])

#: h[0] ^ parameter block word 0: digest length 16, no key, fanout 1, depth 1.
_H0_PARAM = np.uint64(0x01010000 | 16)
_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


@numba.njit(inline="always")
def _rotr(x, n):
    return (x >> np.uint64(n)) | (x << np.uint64(64 - n))


@numba.njit(inline="always")
def _g(a, b, c, d, x, y):
    a = a + b + x
    d = _rotr(d ^ a, 32)
    c = c + d
    b = _rotr(b ^ c, 24)
    a = a + b + y
    d = _rotr(d ^ a, 16)
    c = c + d
    b = _rotr(b ^ c, 63)
    return a, b, c, d


@numba.njit(inline="always")
def _compress(h, m, t, last, iv):
    """One BLAKE2b compression of the block ``m`` (16 little-endian words) into
    ``h``; ``t``: bytes hashed so far including this block. The state lives in
    scalars (registers), not an array."""
    v0, v1, v2, v3, v4, v5, v6, v7 = h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]
    v8, v9, v10, v11 = iv[0], iv[1], iv[2], iv[3]
    v12, v13, v14, v15 = iv[4] ^ np.uint64(t), iv[5], iv[6], iv[7]
    if last:
        v14 = ~v14
    for s in numba.literal_unroll(_SIGMA):  # 12 rounds unrolled: constant word indices
        v0, v4, v8, v12 = _g(v0, v4, v8, v12, m[s[0]], m[s[1]])
        v1, v5, v9, v13 = _g(v1, v5, v9, v13, m[s[2]], m[s[3]])
        v2, v6, v10, v14 = _g(v2, v6, v10, v14, m[s[4]], m[s[5]])
        v3, v7, v11, v15 = _g(v3, v7, v11, v15, m[s[6]], m[s[7]])
        v0, v5, v10, v15 = _g(v0, v5, v10, v15, m[s[8]], m[s[9]])
        v1, v6, v11, v12 = _g(v1, v6, v11, v12, m[s[10]], m[s[11]])
        v2, v7, v8, v13 = _g(v2, v7, v8, v13, m[s[12]], m[s[13]])
        v3, v4, v9, v14 = _g(v3, v4, v9, v14, m[s[14]], m[s[15]])
    h[0] ^= v0 ^ v8
    h[1] ^= v1 ^ v9
    h[2] ^= v2 ^ v10
    h[3] ^= v3 ^ v11
    h[4] ^= v4 ^ v12
    h[5] ^= v5 ^ v13
    h[6] ^= v6 ^ v14
    h[7] ^= v7 ^ v15


@numba.njit(parallel=True, cache=True)
def _blake2b_128_hex(data, offsets, iv, h0_param, hexdigits, n_chunks):
    """Row i = data[offsets[i]:offsets[i+1]]; returns 32 hex characters per row."""
    n = len(offsets) - 1
    out = np.empty(n * 32, dtype=np.uint8)
    per = (n + n_chunks - 1) // n_chunks
    for chunk in numba.prange(n_chunks):
        h = np.empty(8, dtype=np.uint64)
        block = np.empty(128, dtype=np.uint8)
        m = block.view(np.uint64)  # the block as 16 words (little-endian machines only)
        for row in range(chunk * per, min(n, (chunk + 1) * per)):
            start, end = offsets[row], offsets[row + 1]
            for i in range(8):
                h[i] = iv[i]
            h[0] ^= h0_param
            p = start
            # every block but the last is full and not final; the last (possibly
            # empty, for an empty value) is zero-padded and final
            while end - p > 128:
                block[:] = data[p:p + 128]
                _compress(h, m, p + 128 - start, False, iv)
                p += 128
            block[:] = 0
            block[:end - p] = data[p:end]
            _compress(h, m, end - start, True, iv)
            for i in range(16):
                byte = (h[i // 8] >> np.uint64(8 * (i % 8))) & np.uint64(0xFF)
                out[row * 32 + 2 * i] = hexdigits[byte >> np.uint64(4)]
                out[row * 32 + 2 * i + 1] = hexdigits[byte & np.uint64(0xF)]
    return out


def blake2b_128_hex(values: pl.Series) -> pl.Series:
    """``hashlib.blake2b(v, digest_size=16).hexdigest()`` of every value of a
    String or Binary series without nulls, as a String series."""
    arr = values.cast(pl.Binary).rechunk().to_arrow()
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    arr = arr.cast(pa.large_binary())
    n = len(arr)
    if arr.null_count:
        raise ValueError("blake2b_128_hex: null values have no digest")
    _, offsets_buf, data_buf = arr.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int64)[arr.offset:arr.offset + n + 1]
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    threads = numba.get_num_threads()
    n_chunks = 1 if n < SMALL else 4 * threads  # a few chunks per thread: rows differ in length
    if n_chunks == 1:
        old = threads
        numba.set_num_threads(1)
    try:
        hexed = _blake2b_128_hex(data, offsets, _IV, _H0_PARAM, _HEX, n_chunks)
    finally:
        if n_chunks == 1:
            numba.set_num_threads(old)
    ids = pa.LargeStringArray.from_buffers(n, pa.py_buffer(np.arange(0, 32 * n + 1, 32, dtype=np.int64)),
                                           pa.py_buffer(hexed))
    return pl.Series(values.name, ids, dtype=pl.String)
