"""Ingest of the real public files in ../shared/data (skipped where absent)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bakeoff.curate.ingest import ingest
from bakeoff.reuse import file_digest

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
if not DATA.exists():
    DATA = Path("/work/shared/data")


def need(name: str) -> Path:
    p = DATA / name
    if not p.exists():
        pytest.skip(f"{p} not present")
    return p


def test_alpaca_en_demo(ws):
    res = ingest(ws, [need("alpaca_en_demo.json")], "alpaca")
    assert res.rows_in == 999 == res.accepted + res.quarantined
    assert res.detected == {str(DATA / "alpaca_en_demo.json"): "alpaca"}
    df = ws.load(res.version)
    assert set(df["kind"]) == {"sft"} and df["id"].n_unique() == df.height
    assert all(m[-1]["role"] == "assistant" for m in df["messages"].to_list())


def test_dpo_en_demo_preference(ws):
    res = ingest(ws, [need("dpo_en_demo.json")], "dpo")
    assert res.rows_in == 300 == res.accepted + res.quarantined
    assert list(res.detected.values()) == ["sharegpt-preference"]
    df = ws.load(res.version)
    assert set(df["kind"]) == {"preference"}
    row = df.row(0, named=True)
    assert row["messages"][-1]["role"] == "user"
    assert row["chosen"][0]["role"] == "assistant" and row["rejected"][0]["role"] == "assistant"


def test_tatqa_messages_with_meta(ws):
    res = ingest(ws, [need("tatqa_dev.jsonl")], "tatqa", meta={"doctype": "table"})
    assert res.rows_in == 1668 == res.accepted + res.quarantined and res.quarantined == 0
    df = ws.load(res.version)
    assert set(df["domain"]) == {"finance-tables"} and set(df["doctype"]) == {"table"}
    assert set(df["task"]) == {"qa"}
    extra = json.loads(df["extra"][0])
    assert extra["id"].startswith("tatqa-") and {"answer_type", "group"} <= set(extra["meta"])
    assert df["source_line"].to_list() == list(range(1, 1669))


#: Version digests of the real files as ingested before ingest streamed in
#: batches: a change of reader, batching or id numbering must not move them.
PINNED = {
    "alpaca_en_demo.json": ({}, "b7afefb45a0294f8f07f81eee847da7efcae576c1d14ed3459e5da2013665c03"),
    "dpo_en_demo.json": ({}, "880f84dfb2dc6899d6f03cf1cd8756403faca35f3e14aa0df7331c1cc2010349"),
    "tatqa_dev.jsonl": ({"doctype": "table"}, "cc5b2a8aff30f9a40c33d42ca3aa70229f3c74bd58688e5f4ecce6b884e283bf"),
}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_real_digests_are_pinned(ws, name):
    meta, digest = PINNED[name]
    res = ingest(ws, [need(name)], "pinned", meta=meta)
    assert res.version.digest == digest
    # the file's SHA-256, taken from the reader's own reads (recorded for reuse)
    assert res.version.params["file_digests"] == [file_digest(need(name))]
