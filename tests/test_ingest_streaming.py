"""Streaming ingest: the version digest is pinned (batching, threading and the
cross-batch numbering of repeated content must not change it), and the state an
ingest keeps across batches is bounded by the distinct contents, not the text."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from bakeoff.curate import ingest as ingest_mod
from bakeoff.curate import readers
from bakeoff.curate.ingest import ingest
from bakeoff.schema import conform, version_digest, with_ids

#: The digest of ``_write_fixture``'s file as ingested before streaming was tuned
#: (the whole-file numbering of ``schema.with_ids``); it must never change.
PINNED_DIGEST = "86cca947ce8d1b3ef17e7d924abf497c01890f4914e646030615f40181372041"


def _write_fixture(path: Path) -> None:
    """600 lines: chat rows with labels and extra keys, contents repeated near
    and far (so copies land in other batches), and a few bad lines."""
    lines = []
    for i in range(600):
        if i % 53 == 7:
            lines.append('{"messages": [')  # malformed
            continue
        if i % 61 == 3:
            lines.append(json.dumps({"messages": [{"role": "user", "content": "no answer"}]}))
            continue
        k = i % 97 if i % 5 == 0 else i  # every 5th row repeats one of 20 contents
        rec = {"messages": [{"role": "user", "content": f"question {k}?"},
                            {"role": "assistant", "content": f"answer {k % 13}"}],
               "meta": {"domain": "finance" if i % 2 else "legal", "tags": [f"t{i % 3}"]},
               "id": f"row-{i}"}
        lines.append(json.dumps(rec))
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("batch_bytes", [None, 6_000, 40_000])
def test_digest_is_pinned_whatever_the_batch(ws, tmp_path, monkeypatch, batch_bytes):
    src = tmp_path / "fixture.jsonl"
    _write_fixture(src)
    if batch_bytes:
        monkeypatch.setattr(readers, "BATCH_BYTES", batch_bytes)
    res = ingest(ws, [src], "pinned")
    assert (res.rows_in, res.accepted, res.quarantined) == (600, 578, 22)
    rows = ws.load(res.version)
    assert res.version.digest == version_digest(rows) == PINNED_DIGEST
    # ids are what schema.with_ids gives the whole file at once
    whole = with_ids(rows.sort("source_line").drop("id"))
    assert rows.sort("source_line")["id"].to_list() == whole["id"].to_list()


def test_copies_in_later_batches_are_numbered_in_file_order(ws, tmp_path, monkeypatch):
    src = tmp_path / "copies.jsonl"
    same = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    other = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]}
             for i in range(40)]
    # the same content at lines 1, 15, 16 and 40: four batches of ~10 lines
    lines = [json.dumps(r) for r in other]
    for at in (0, 14, 15, 39):
        lines[at] = json.dumps(same)
    src.write_text("\n".join(lines) + "\n")
    monkeypatch.setattr(readers, "BATCH_BYTES", 800)
    res = ingest(ws, [src], "copies")
    rows = ws.load(res.version).sort("source_line")
    base = with_ids(rows.head(1).drop("id"))["id"][0]
    ids = dict(zip(rows["source_line"].to_list(), rows["id"].to_list()))
    assert [ids[n] for n in (1, 15, 16, 40)] == [base, f"{base}~2", f"{base}~3", f"{base}~4"]
    assert rows["id"].n_unique() == rows.height == 40
    assert res.version.digest == version_digest(rows)


def test_a_writer_refuses_repeated_ids_unless_asked_to_renumber(ws):
    rows = with_ids(conform(pl.DataFrame({"kind": ["sft"], "messages": [[{"role": "user", "content": "q"},
                                                                          {"role": "assistant", "content": "a"}]]})))
    with ws.version_writer("twice") as w:
        w.write_rows(rows)
        w.write_rows(rows)
        with pytest.raises(ValueError, match="unique"):
            w.commit(operation="test")
    with ws.version_writer("twice") as w:
        w.write_rows(rows)
        w.write_rows(rows)
        v = w.commit(operation="test", renumber_repeats=True)
    assert sorted(ws.load(v)["id"]) == [rows["id"][0], rows["id"][0] + "~2"]


def test_memory_is_bounded_by_a_few_batches(ws, tmp_path, monkeypatch):
    """However long the file, at most a few batches are alive at once (the one
    being read ahead, the one queued, the one being written): no batch, and no
    per-row state, outlives its turn."""
    import weakref

    src = tmp_path / "long.jsonl"
    _write_fixture(src)
    seen: list[weakref.ref] = []
    most = [0]
    real = readers.iter_records

    def counted(path, batch_bytes=None, on_digest=None):
        for recs in real(path, batch_bytes, on_digest):
            seen.append(weakref.ref(recs))
            most[0] = max(most[0], sum(r() is not None for r in seen))
            yield recs

    monkeypatch.setattr(readers, "BATCH_BYTES", 3_000)  # ~30 batches
    monkeypatch.setattr(readers, "iter_records", counted)
    res = ingest(ws, [src], "bounded")
    assert res.rows_in == 600
    assert 1 <= most[0] <= 3, most[0]


def test_prefetch_raises_the_producers_error_and_stops_early():
    def failing():
        yield 1
        raise ValueError("bad batch")

    got = []
    with pytest.raises(ValueError, match="bad batch"):
        for item in ingest_mod._prefetch(failing()):
            got.append(item)
    assert got == [1]

    made = []

    def endless():
        i = 0
        while True:
            made.append(i)
            yield i
            i += 1

    for item in ingest_mod._prefetch(endless()):
        if item == 3:
            break
    assert len(made) <= 3 + 3  # read ahead by at most depth + 1, then stopped


@pytest.mark.slow
def test_peak_rss_stays_flat_as_the_file_grows(tmp_path):
    """Peak RSS of an ingest (fresh process) of 150k and of 600k rows, in batches
    of 1 MB and with the digest's sort spilling past 128 MB (what it may hold
    in memory, 256 MB by default, is part of the bound): four times the rows,
    a peak that grows by no more than that budget."""
    import subprocess
    import sys

    code = ("import sys; from bakeoff.curate.ingest import ingest; from bakeoff.workspace import Workspace; "
            "ingest(Workspace(sys.argv[1]), [sys.argv[2]], 'big'); "
            "print([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1])")
    one = json.dumps({"messages": [{"role": "user", "content": "question %d " + "x" * 200},
                                   {"role": "assistant", "content": "answer"}]})
    peaks = {}
    for n in (150_000, 600_000):
        src = tmp_path / f"{n}.jsonl"
        with open(src, "w") as fh:
            for start in range(0, n, 50_000):
                fh.write("\n".join(one % i for i in range(start, start + 50_000)) + "\n")
        out = subprocess.run([sys.executable, "-c", code, str(tmp_path / f"ws{n}"), str(src)], check=True,
                             capture_output=True, text=True,
                             env={**__import__("os").environ, "BAKEOFF_BATCH_BYTES": str(1 << 20),
                                  "BAKEOFF_DIGEST_MEMORY": "128MB"})
        peaks[n] = int(out.stdout.strip().splitlines()[-1]) / 1024
    # MB. What grows between these sizes is the digest's sort filling its 128 MB
    # budget (measured: +86 MB; +190 MB with the default 256 MB); past it, it spills.
    assert peaks[600_000] < peaks[150_000] + 128, peaks


def test_plain_file_batches_read_back_the_same_records_as_gzip(tmp_path):
    """A plain file's batches end at a line end by seeking back (no copy); a gzip
    carries the incomplete line. Both give the same records and quarantine at
    every batch size, whatever straddles a batch edge."""
    import gzip

    lines = [json.dumps({"messages": [{"role": "user", "content": f"q{i} " + "é" * (i % 37)}]}) for i in range(300)]
    lines[5] = '{"messages": ['                                   # malformed
    lines[40] = ""                                                # blank
    lines[77] = '{"a": "\xff"}'                                   # replaced by invalid UTF-8 below
    lines[120] = lines[120] + "\r"                                # CRLF
    body = ("\ufeff" + "\n".join(lines)).encode().replace("\xff".encode(), b"\xff")  # BOM, no final newline
    plain, gz = tmp_path / "r.jsonl", tmp_path / "r.jsonl.gz"
    plain.write_bytes(body)
    gz.write_bytes(gzip.compress(body))
    # JSON Lines under a .json name: read on from what the format probe consumed
    as_json, as_json_gz = tmp_path / "r.json", tmp_path / "r.json.gz"
    as_json.write_bytes(body)
    as_json_gz.write_bytes(gzip.compress(body))

    def read(path: Path, batch_bytes: int) -> tuple[list, list]:
        recs, quar = [], []
        for b in readers.iter_records(path, batch_bytes):
            recs += list(zip(b.table.column("source_line").to_pylist(), b.table.column("raw").to_pylist()))
            quar += b.quarantine.select("source_line", "reason", "raw").rows()
        return recs, quar

    want, want_json = read(gz, 1 << 20), read(as_json_gz, 1 << 20)
    assert len(want[0]) == 297 and [q[0] for q in want[1]] == [6, 78]
    assert [r[0] for r in want_json[0]] == [r[0] for r in want[0]] and want_json[1] == want[1]
    for batch_bytes in (250, 4096, 1 << 20):
        assert read(plain, batch_bytes) == want, batch_bytes
        assert read(gz, batch_bytes) == want, batch_bytes
        assert read(as_json, batch_bytes) == want_json, batch_bytes


def test_ingest_does_not_import_pandas(tmp_path):
    """pyarrow imports pandas (~0.8 s of CPU) when handed numpy input through
    ``pa.array``/``pa.table``; the ingest path builds its Arrow data from buffers."""
    import subprocess
    import sys

    src = tmp_path / "f.jsonl"
    _write_fixture(src)
    code = ("import sys; from bakeoff.curate.ingest import ingest; from bakeoff.workspace import Workspace; "
            f"ingest(Workspace({str(tmp_path / 'ws')!r}), [{str(src)!r}], 'p'); print('pandas' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_rows_parquet_options_name_every_leaf(tmp_path):
    """Every leaf column of a version's rows (nested stage columns too) gets its
    codec by name, ids none; dictionaries only on the low-cardinality columns."""
    import numpy as np
    import pyarrow.parquet as pq

    from bakeoff.workspace import _rows_parquet_options, _write_rows_parquet

    rows = with_ids(conform(pl.DataFrame({
        "kind": ["sft"] * 3,
        "messages": [[{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}] for i in range(3)],
        "tags": [["x"], None, ["y", "z"]],
    }))).with_columns(pl.Series("emb", np.ones((3, 2), dtype=np.float32)),  # a stage's column: fixed-size list
                      pl.struct(a=pl.lit(1), b=pl.lit("s")).alias("info"))
    path = tmp_path / "rows.parquet"
    _write_rows_parquet(rows, path)
    assert pl.read_parquet(path).equals(rows)
    meta = pq.ParquetFile(path).metadata.row_group(0)
    leaves = {meta.column(i).path_in_schema: meta.column(i) for i in range(meta.num_columns)}
    assert {p: c.compression for p, c in leaves.items()} == {
        p: "UNCOMPRESSED" if p == "id" else "SNAPPY" for p in leaves}
    dictionary = {p for p, c in leaves.items() if "RLE_DICTIONARY" in c.encodings}
    assert dictionary == {"kind", "messages.list.element.role", "chosen.list.element.role",
                          "rejected.list.element.role", "domain", "doctype", "task", "tags.list.element", "source_file"}
    assert set(_rows_parquet_options(rows.to_arrow().schema)["compression"]) == set(leaves)


@pytest.mark.parametrize("kind", ["jsonl", "jsonl.gz", "csv", "json", "parquet"])
@pytest.mark.parametrize("batch_bytes", [None, 700])
def test_the_file_digest_taken_while_reading_is_the_files_sha256(ws, tmp_path, monkeypatch, kind, batch_bytes):
    """The reader feeds what it reads to the file's SHA-256 (no second pass over
    the file): seeks back to a batch's unfinished line, gzip, a CSV's text
    layer and Parquet's own pass all give ``reuse.file_digest``."""
    import gzip

    from bakeoff.reuse import file_digest

    records = [{"instruction": f"question {i} " + "x" * (i % 37), "output": f"answer {i}"} for i in range(120)]
    src = tmp_path / f"data.{kind}"
    if kind == "jsonl":
        src.write_bytes(b"\xef\xbb\xbf" + "\n".join(json.dumps(r) for r in records).encode() + b"\n{bad\n")
    elif kind == "jsonl.gz":
        with gzip.open(src, "wt") as fh:
            fh.write("\n".join(json.dumps(r) for r in records) + "\n")
    elif kind == "json":
        src.write_text(json.dumps(records, indent=1))
    else:
        frame = pl.DataFrame(records)
        frame.write_csv(src) if kind == "csv" else frame.write_parquet(src)
    if batch_bytes:
        monkeypatch.setattr(readers, "BATCH_BYTES", batch_bytes)
    seen = []
    for _ in readers.iter_records(src, on_digest=seen.append):
        pass
    assert seen == [file_digest(src)]
    res = ingest(ws, [src], "digested")
    assert res.version.params["file_digests"] == [file_digest(src)]
