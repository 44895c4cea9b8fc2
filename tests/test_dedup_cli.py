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


def test_dataset_mode_dry_run_key_and_loud_warning(ws):
    """--dry-run writes nothing; --key chooses what must match; removing more than
    a quarter of the rows is said loudly, with removed rows beside their partners."""
    from bakeoff.schema import conform, with_ids

    table = "| item | 2019 | 2018 |\n|---|---|---|\n| Revenue | 10 | 9 |\n| Cost | 4 | 3 |"
    msgs = [[{"role": "user", "content": f"{table}\n\nQuestion: {q}"}, {"role": "assistant", "content": a}]
            for q, a in [("What was revenue in 2019?", "10"), ("What was cost in 2019?", "4"),
                         ("What was revenue in 2019?", "10"), ("What was revenue in 2019?", "10")]]
    df = with_ids(conform(pl.DataFrame({"kind": ["sft"] * 4, "messages": msgs,
                                        "extra": ['{"meta": {"group": "t1"}}'] * 4})))
    ws.commit_version("qa", df, operation="ingest")
    base = ["--workspace", str(ws.root), "curate", "dedup", "qa@v1", "--json"]
    doc = json.loads(CliRunner().invoke(cli, base + ["--dry-run"]).stdout)
    assert doc["dry_run"] and doc["version"] is None and [v.ref for v in ws.versions("qa")] == ["qa@v1"]
    assert doc["removed_exact"] == 2 and "more than 25%" in doc["warning"]["message"]
    assert doc["warning"]["pairs"][0]["removed"] == doc["warning"]["pairs"][0]["judged_against"]
    # the key: one row per table (a label column) -- all four are "the same"
    by_table = json.loads(CliRunner().invoke(cli, base + ["--dry-run", "--key", "meta.group"]).stdout)
    assert by_table["kept"] == 1 and by_table["key"] == ["meta.group"]
    human = CliRunner().invoke(cli, ["--workspace", str(ws.root), "curate", "dedup", "qa@v1", "--dry-run"])
    assert "WARNING" in human.output and "no version written" in human.output
