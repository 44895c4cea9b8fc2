"""Property-based fuzzing of every reader through ``ingest``: random bytes,
truncations, other encodings and deep nesting never raise anything but a
one-line ``BakeoffError``, and whenever a version is written its accounting
holds (rows_in = accepted + quarantined, and the quarantine has what is missing)."""

from __future__ import annotations

import gzip
import io
import itertools
import json

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bakeoff.curate import readers
from bakeoff.curate.ingest import ingest
from bakeoff.workspace import BakeoffError, Workspace

FUZZ = settings(max_examples=15, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

_names = itertools.count()


@pytest.fixture(scope="module")
def fuzz_ws(tmp_path_factory):
    return Workspace(tmp_path_factory.mktemp("fuzz") / "ws"), tmp_path_factory.mktemp("inputs")


def check(ws: Workspace, folder, suffix: str, data: bytes) -> None:
    """Ingest ``data`` as a file ending in ``suffix``: a BakeoffError or a
    version whose numbers add up. Any other exception fails the test."""
    n = next(_names)
    path = folder / f"in{n}{suffix}"
    path.write_bytes(data)
    try:
        res = ingest(ws, [path], f"f{n}")
    except BakeoffError as exc:
        assert "\n" not in str(exc).strip()
        return
    assert res.rows_in == res.accepted + res.quarantined
    v = res.version
    assert ws.load(v).height == res.accepted == v.rows
    q = ws.quarantine(v)
    assert q.height == res.quarantined
    assert q["reason"].null_count() == 0 and (q["source_line"] >= 1).all()


# --- generators ---------------------------------------------------------------------------

text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | text,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(text, kids, max_size=4), max_leaves=12)
turn = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "tool", "gpt", "x"]),
                              "content": text | json_values})
record = st.one_of(
    st.fixed_dictionaries({"messages": st.lists(turn, max_size=4)}, optional={"meta": json_values}),
    st.fixed_dictionaries({"prompt": text | json_values, "completion": text | json_values}),
    st.fixed_dictionaries({"instruction": text, "output": text | json_values}, optional={"input": text}),
    st.dictionaries(text, json_values, max_size=5),
    json_values,
)


@st.composite
def mangled(draw, body: bytes) -> bytes:
    """``body`` truncated, re-encoded, or with garbage or deep nesting spliced in."""
    how = draw(st.sampled_from(["asis", "truncate", "utf16", "latin1", "garbage", "nest", "bom", "crlf"]))
    if how == "truncate" and body:
        return body[:draw(st.integers(0, len(body) - 1))]
    if how == "utf16":
        return body.decode("utf-8", "replace").encode("utf-16")
    if how == "latin1":
        return body.decode("utf-8", "replace").encode("latin-1", "replace")
    if how == "bom":
        return b"\xef\xbb\xbf" + body
    if how == "crlf":
        return body.replace(b"\n", b"\r\n")
    at = draw(st.integers(0, len(body)))
    if how == "garbage":
        return body[:at] + draw(st.binary(min_size=1, max_size=40)) + body[at:]
    if how == "nest":
        depth = draw(st.sampled_from([50, 2_000, 100_000]))
        return body[:at] + b"[" * depth + b"]" * draw(st.sampled_from([0, depth])) + body[at:]
    return body


def jsonl_bytes(recs) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs).encode()


# --- properties ------------------------------------------------------------------------------

@FUZZ
@given(data=st.data(), suffix=st.sampled_from([".jsonl", ".json", ".csv", ".tsv", ".parquet", ".jsonl.gz", ".dat"]))
def test_random_bytes(fuzz_ws, data, suffix):
    ws, folder = fuzz_ws
    check(ws, folder, suffix, data.draw(st.binary(max_size=600)))


@FUZZ
@given(data=st.data(), recs=st.lists(record, max_size=8))
def test_jsonl_and_json_records_mangled(fuzz_ws, data, recs):
    ws, folder = fuzz_ws
    body = jsonl_bytes(recs)
    check(ws, folder, ".jsonl", data.draw(mangled(body)))
    array = json.dumps(recs, indent=data.draw(st.sampled_from([None, 1]))).encode()
    check(ws, folder, ".json", data.draw(mangled(array)))


@FUZZ
@given(data=st.data(), rows=st.lists(st.lists(text, min_size=1, max_size=4), max_size=8),
       header=st.lists(st.sampled_from(["prompt", "completion", "messages", "x", "prompt"]), min_size=1, max_size=4))
def test_csv_rows_mangled(fuzz_ws, data, rows, header):
    ws, folder = fuzz_ws
    buf = io.StringIO()
    import csv

    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    body = buf.getvalue().encode()
    check(ws, folder, ".csv", data.draw(mangled(body)))


@FUZZ
@given(data=st.data(), recs=st.lists(record, min_size=1, max_size=6))
def test_gzip_and_parquet_truncated(fuzz_ws, data, recs):
    ws, folder = fuzz_ws
    gz = gzip.compress(jsonl_bytes(recs))
    check(ws, folder, ".jsonl.gz", gz[:data.draw(st.integers(0, len(gz)))])
    flat = [{"prompt": json.dumps(r) if not isinstance(r, str) else r, "completion": "a"} for r in recs]
    buf = io.BytesIO()
    pl.DataFrame(flat).write_parquet(buf)
    pq = buf.getvalue()
    check(ws, folder, ".parquet", pq[:data.draw(st.sampled_from([len(pq), len(pq) // 2, 8]))])


def test_streaming_batches_under_fuzzed_input(fuzz_ws, monkeypatch):
    """The same properties with tiny batches (every line its own batch)."""
    ws, folder = fuzz_ws
    monkeypatch.setattr(readers, "BATCH_BYTES", 16)
    body = jsonl_bytes([{"prompt": "p", "completion": "c"}, 5, {"prompt": "é" * 40, "completion": "x"}])
    for mutated in (body, body[:-7], b"\xff\xfe" + body, body.replace(b"\n", b"\r\n"), b"[" * 3000 + b"\n" + body):
        check(ws, folder, ".jsonl", mutated)
