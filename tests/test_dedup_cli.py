"""`bakeoff curate dedup` on a file (ledger columns, line indices, errors) and
on a dataset version."""

from __future__ import annotations

import json

import polars as pl
from click.testing import CliRunner

from bakeoff.cli import cli

BASE = "the quick brown fox jumps over the lazy dog while the cat sleeps on the warm mat all day"


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_file_mode_ledger(tmp_path):
    src = tmp_path / "docs.jsonl"
    _write(src, [
        json.dumps({"text": BASE}),                                  # 0 kept
        json.dumps({"text": "something else entirely, nothing alike at all"}),  # 1 kept
        "",                                                          # 2 blank line: kept, counted
        json.dumps({"text": BASE.upper() + "!"}),                    # 3 exact dup of 0
        json.dumps({"other": "no text field"}),                      # 4 kept (empty text)
        json.dumps({"text": BASE + " today"}),                       # 5 near dup of 0
        json.dumps({"text": "a short one"}),                         # 6 kept
    ])
    ledger = tmp_path / "out" / "removed.parquet"
    res = CliRunner().invoke(cli, ["curate", "dedup", str(src), "--text-field", "text", "--threshold", "0.8",
                                   "--num-perm", "128", "--ngram", "3", "--ledger", str(ledger), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["rows"] == 7 and doc["removed"] == 2 and doc["removed_exact"] == 1 and doc["removed_near"] == 1
    assert {"read_s", "sketch_s", "total_s"} <= set(doc["timings"])
    led = pl.read_parquet(ledger)
    assert led.columns[:3] == ["row", "kept_row", "jaccard"]
    assert led["row"].to_list() == [3, 5]
    assert led["kept_row"].to_list() == [0, 0]
    assert led["jaccard"][0] == 1.0 and 0.8 <= led["jaccard"][1] < 1.0


def test_file_mode_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    _write(bad, [json.dumps({"text": "ok"}), "{not json"])
    res = CliRunner().invoke(cli, ["curate", "dedup", str(bad), "--ledger", str(tmp_path / "l.parquet")])
    assert res.exit_code != 0
    assert "bad.jsonl:2" in str(res.exception) or "bad.jsonl:2" in res.output
    nofield = tmp_path / "nofield.jsonl"
    _write(nofield, [json.dumps({"body": "x"})])
    res = CliRunner().invoke(cli, ["curate", "dedup", str(nofield), "--text-field", "text"])
    assert res.exit_code != 0 and "text" in str(res.exception)
    res = CliRunner().invoke(cli, ["curate", "dedup", str(tmp_path / "missing.jsonl")])
    assert res.exit_code != 0


def test_dataset_mode_writes_next_version(ws):
    from bakeoff.schema import conform, with_ids

    df = with_ids(conform(pl.DataFrame({
        "kind": ["sft"] * 3,
        "messages": [[{"role": "user", "content": q}, {"role": "assistant", "content": "fine"}]
                     for q in (BASE, BASE + " today", "unrelated question about invoices")],
    })))
    ws.commit_version("docs", df, operation="ingest")
    res = CliRunner().invoke(cli, ["--workspace", str(ws.root), "curate", "dedup", "docs@v1", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["version"] == "docs@v2" and doc["kept"] == 2 and doc["removed_near"] == 1
    led = ws.ledger("docs@v2")
    assert led["stage"].to_list() == ["dedup-minhash"] and led["kept_row_id"][0] == df["id"][0]
