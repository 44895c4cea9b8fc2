"""Bad input never loses a record and never costs unbounded memory: every reader
streams in batches with exact line numbers, and every odd record is either a row
or a quarantine entry with a reason (rows_in = accepted + quarantined)."""

from __future__ import annotations

import gzip
import json

import polars as pl
import pytest

from bakeoff.curate import readers
from bakeoff.curate.ingest import ingest
from bakeoff.schema import version_digest
from bakeoff.workspace import BakeoffError


def _rec(i, **kw):
    return {"prompt": f"question {i}", "completion": f"answer {i}", **kw}


def _mixed_jsonl(n=300):
    """Good lines, duplicates (same content: ids ~2, ~3 across batches), and bad lines."""
    lines = []
    for i in range(n):
        if i % 37 == 5:
            lines.append('{"prompt": "broken')
        elif i % 41 == 7:
            lines.append("")
        elif i % 29 == 3:
            lines.append(json.dumps(_rec(1)))  # a copy of record 1
        else:
            lines.append(json.dumps(_rec(i, tag=i)))
    return "\n".join(lines) + "\n"


def _snapshot(ws, ref):
    rows = ws.load(ref).select("id", "source_line", "messages", "extra")
    return rows.to_dicts(), ws.quarantine(ref).drop("source_file").to_dicts()


@pytest.mark.parametrize("kind", ["jsonl", "jsonl.gz", "json", "csv"])
def test_streamed_batches_match_one_batch_exactly(ws, tmp_path, monkeypatch, kind):
    """A file read in many tiny batches gives the same rows, ids (duplicate
    numbering across batches), line numbers, quarantine and digest as in one."""
    text = _mixed_jsonl()
    f = tmp_path / f"in.{kind}"
    if kind == "jsonl":
        f.write_text(text)
    elif kind == "jsonl.gz":
        f.write_bytes(gzip.compress(text.encode()))
    elif kind == "json":
        recs = [json.loads(line) for line in text.splitlines() if line.startswith("{") and line.endswith("}")]
        recs.insert(10, 7)  # not an object
        f.write_text("[\n" + ",\n".join(json.dumps(r, indent=1) for r in recs) + "\n]\n")
    else:
        rows = [json.loads(line) for line in text.splitlines() if line.startswith("{") and line.endswith("}")]
        body = ["prompt,completion"] + [f'"{r["prompt"]}","{r["completion"]}"' for r in rows]
        body.insert(20, "only-one-field")
        body.insert(40, '"a","b","c"')
        f.write_text("\n".join(body) + "\n")
    one = ingest(ws, [f], "one")
    monkeypatch.setattr(readers, "BATCH_BYTES", 2500)  # ~10 batches
    many = ingest(ws, [f], "many")
    assert one.rows_in == many.rows_in == one.accepted + one.quarantined
    assert (one.accepted, one.quarantined) == (many.accepted, many.quarantined)
    assert _snapshot(ws, "one") == _snapshot(ws, "many")
    assert one.version.digest == many.version.digest == version_digest(ws.load("one"))
    if kind in ("jsonl", "jsonl.gz"):
        ids = ws.load("many")["id"].to_list()
        assert any(i.endswith("~3") for i in ids) and len(set(ids)) == len(ids)
        q = ws.quarantine("many")
        assert q.filter(pl.col("reason").str.starts_with("malformed JSON"))["source_line"].to_list() == \
            [i + 1 for i in range(300) if i % 37 == 5]
    if kind == "csv":
        q = ws.quarantine("many")
        assert sorted(q["reason"].to_list()) == ["malformed CSV row: expected 2 fields, got 1",
                                                  "malformed CSV row: expected 2 fields, got 3"]
        assert sorted(q["source_line"].to_list()) == [21, 41]


def test_deeply_nested_json_is_quarantined_not_a_traceback(ws, tmp_path):
    deep = "[" * 100_000 + "]" * 100_000
    f = tmp_path / "deep.json"
    f.write_text('[{"prompt": "a", "completion": "b"}, ' + deep + "]")
    r = ingest(ws, [f], "deep")
    assert (r.accepted, r.quarantined) == (1, 1)
    assert "nested too deeply" in ws.quarantine("deep")["reason"][0]
    single = tmp_path / "deep-object.json"
    single.write_text('{"prompt": ' + deep + ', \n"completion": "x"}')
    r = ingest(ws, [single], "deep2")  # not parseable as one object: read as its two lines
    assert r.rows_in == r.accepted + r.quarantined and r.accepted == 0
    jl = tmp_path / "deep.jsonl"
    jl.write_text(json.dumps(_rec(1)) + "\n" + '{"a": ' + deep + "}\n")
    r = ingest(ws, [jl], "deep3")
    assert (r.accepted, r.quarantined) == (1, 1)


def test_one_bad_csv_row_is_quarantined_not_the_file(ws, tmp_path):
    f = tmp_path / "x.csv"
    f.write_text('prompt,completion\n"q1","a1"\n"q2","a2",extra\n"q3\n')
    r = ingest(ws, [f], "c")
    assert r.accepted == 1 and r.quarantined == 2 and r.rows_in == 3
    q = ws.quarantine("c")
    assert q["source_line"].to_list() == [3, 4]


def test_empty_csv_and_empty_jsonl_behave_the_same(ws, tmp_path):
    for name in ("e.csv", "e.jsonl", "e.json", "h.csv"):
        (tmp_path / name).write_text("prompt,completion\n" if name == "h.csv" else "")
        r = ingest(ws, [tmp_path / name], name.replace(".", "-"))
        assert (r.rows_in, r.accepted, r.quarantined) == (0, 0, 0)
        assert ws.load(r.version).height == 0


def test_duplicate_keys_are_quarantined_with_a_reason(ws, tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text(json.dumps(_rec(1)) + '\n{"prompt": "x", "completion": "y", "prompt": "z"}\n')
    r = ingest(ws, [f], "d")
    assert (r.accepted, r.quarantined) == (1, 1)
    q = ws.quarantine("d").row(0, named=True)
    assert q["source_line"] == 2 and "duplicate key 'prompt'" in q["reason"]


def test_nan_and_infinity_never_reach_extra_as_invalid_json(ws, tmp_path):
    f = tmp_path / "n.jsonl"
    f.write_text('{"prompt": "p", "completion": "c", "score": NaN, "v": [1, -Infinity, "NaN"]}\n')
    ingest(ws, [f], "n")
    extra = ws.load("n")["extra"][0]
    assert json.loads(extra) == {"score": None, "v": [1, None, "NaN"]}
    json.loads(extra, parse_constant=lambda c: pytest.fail(f"invalid JSON constant {c}"))
    pq_file = tmp_path / "n.parquet"
    pl.DataFrame({"prompt": ["p"], "completion": ["c"], "score": [float("nan")]}).write_parquet(pq_file)
    ingest(ws, [pq_file], "np")
    assert json.loads(ws.load("np")["extra"][0]) == {"score": None}


def test_quarantine_reasons_say_a_number_not_a_duckdb_type(ws, tmp_path):
    f = tmp_path / "t.jsonl"
    f.write_text(json.dumps(_rec(1)) + "\n5\n-3\n1.5\n\"s\"\ntrue\n")
    ingest(ws, [f], "t")
    reasons = ws.quarantine("t")["reason"].to_list()
    assert reasons == ["record is not a JSON object (got a number)"] * 3 + [
        "record is not a JSON object (got a string)", "record is not a JSON object (got a boolean)"]


def test_an_over_long_line_is_quarantined_without_buffering_it(ws, tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "MAX_RECORD_BYTES", 10_000)
    monkeypatch.setattr(readers, "BATCH_BYTES", 1_000)
    f = tmp_path / "long.jsonl"
    f.write_text(json.dumps(_rec(1)) + "\n" + json.dumps(_rec(2, pad="x" * 50_000)) + "\n" + json.dumps(_rec(3)) + "\n")
    r = ingest(ws, [f], "long")
    assert (r.accepted, r.quarantined) == (2, 1)
    assert ws.quarantine("long")["source_line"].to_list() == [2]
    assert ws.load("long")["source_line"].to_list() == [1, 3]


def test_unreadable_gzip_is_a_one_line_error(ws, tmp_path):
    f = tmp_path / "bad.jsonl.gz"
    f.write_bytes(gzip.compress(b'{"prompt": "a", "completion": "b"}\n' * 100)[:60])
    with pytest.raises(BakeoffError, match="not a readable gzip file"):
        ingest(ws, [f], "g")
    assert ws.versions() == []


def test_out_of_core_digest_equals_the_in_memory_one(ws, tmp_path, monkeypatch):
    import bakeoff.workspace as workspace_mod

    f = tmp_path / "m.jsonl"
    f.write_text(_mixed_jsonl())
    monkeypatch.setattr(workspace_mod, "DIGEST_MEMORY", "16MB")  # a small budget: DuckDB may spill
    monkeypatch.setattr(readers, "BATCH_BYTES", 2500)
    b = ingest(ws, [f], "b").version
    assert b.digest == version_digest(ws.load(b))
