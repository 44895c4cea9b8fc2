"""The numba BLAKE2b-128 kernel gives hashlib's digests bit for bit: content ids
and version digests depend on it."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from bakeoff import schema
from bakeoff.blake2b import blake2b_128_hex

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
if not DATA.exists():
    DATA = Path("/work/shared/data")


def hashlib_hex(values: list[bytes]) -> list[str]:
    return [hashlib.blake2b(v, digest_size=16).hexdigest() for v in values]


def test_every_length_0_to_300_and_multi_block_values():
    rng = np.random.default_rng(7)
    values = [rng.bytes(n) for n in range(301)]                          # block edges 0, 128, 256
    values += [rng.bytes(int(n)) for n in rng.integers(0, 5000, 3000)]   # many blocks, many threads
    values += [b"\x00" * 128, b"\xff" * 257, "é\u20ac".encode() * 50]
    assert blake2b_128_hex(pl.Series(values, dtype=pl.Binary)).to_list() == hashlib_hex(values)


def test_strings_slices_and_empty():
    texts = [f"row {i} " + "x" * (i % 300) for i in range(5000)]
    s = pl.Series("t", texts)
    assert blake2b_128_hex(s).to_list() == hashlib_hex([t.encode() for t in texts])
    # a slice (an Arrow offset into shared buffers) and a column of several chunks
    assert blake2b_128_hex(s.slice(123, 777)).to_list() == hashlib_hex([t.encode() for t in texts[123:900]])
    two = pl.concat([s.slice(0, 10), s.slice(10, 20)], rechunk=False)
    assert blake2b_128_hex(two).to_list() == hashlib_hex([t.encode() for t in texts[:30]])
    assert blake2b_128_hex(pl.Series([], dtype=pl.String)).to_list() == []
    with pytest.raises(ValueError):
        blake2b_128_hex(pl.Series(["a", None]))


def test_with_ids_kernel_equals_hashlib_on_chat_rows(monkeypatch):
    rows = schema.conform(pl.DataFrame({
        "kind": ["sft"] * 3000,
        "messages": [[{"role": "user", "content": f"q{i % 2500} ünïcode"},
                      {"role": "assistant", "content": "a" * (i % 2500 % 400)}] for i in range(3000)],
    }))
    monkeypatch.setattr(schema, "_KERNEL_ROWS", 10**9)
    by_hashlib = schema.with_ids(rows)["id"]
    monkeypatch.setattr(schema, "_KERNEL_ROWS", 1)
    by_kernel = schema.with_ids(rows)["id"]
    assert by_kernel.to_list() == by_hashlib.to_list()
    assert by_kernel.str.contains("~2$").sum() == 500  # repeats numbered as before


@pytest.mark.skipif(not (DATA / "alpaca_en_demo.json").exists(), reason="real data (../shared/data) absent")
def test_kernel_on_real_rows(monkeypatch, tmp_path):
    from bakeoff.curate.ingest import ingest
    from bakeoff.workspace import Workspace

    monkeypatch.setattr(schema, "_KERNEL_ROWS", 1)  # the kernel even for these few rows
    res = ingest(Workspace(tmp_path / "ws"), [DATA / "alpaca_en_demo.json", DATA / "dpo_en_demo.json"], "real")
    rows = Workspace(tmp_path / "ws").load(res.version)
    canon = rows.select(pl.struct(list(schema.CONTENT_FIELDS)).struct.json_encode()).to_series()
    expected = hashlib_hex([c.encode() for c in canon.to_list()])
    assert rows.height > 1000
    assert [i.split("~")[0] for i in rows["id"].to_list()] == expected
