"""`bakeoff data` list/log/show/diff/why/export/quarantine, through the CLI
(--json) and the Python API."""

from __future__ import annotations

import json

import polars as pl
import pytest
from click.testing import CliRunner

from bakeoff.cli import cli
from bakeoff.curate.ingest import ingest
from bakeoff.data_cli import diff_versions, export_version, row_fate
from bakeoff.schema import with_ids
from bakeoff.steps import StepOutput, commit_step
from bakeoff.workspace import BakeoffError, new_ledger


def msgs(*pairs):
    return [{"role": r, "content": c} for r, c in pairs]


@pytest.fixture
def populated(ws, tmp_path):
    """sft@v1 (6 rows, 1 quarantined) -> sft@v2: a filter drops 2 rows, a dedup drops 1
    (kept partner + similarity), one row's content is rewritten, one is relabelled."""
    f = tmp_path / "sft.jsonl"
    recs = [{"messages": msgs(("user", f"question {i}"), ("assistant", f"answer {i}")),
             "meta": {"domain": "fin", "task": "qa"}} for i in range(6)]
    f.write_text("".join(json.dumps(r) + "\n" for r in recs) + "{broken\n")
    v1 = ingest(ws, [f], "sft").version
    df = ws.load(v1)
    ids = df["id"].to_list()
    keep = df.filter(~pl.col("id").is_in(ids[:3]))
    # rewrite row 3's answer (new id), relabel row 4
    keep = keep.with_columns(
        pl.when(pl.col("source_line") == 4)
        .then(pl.lit(msgs(("user", "question 3"), ("assistant", "[REDACTED]")),
                     dtype=pl.List(pl.Struct({"role": pl.String, "content": pl.String})))).otherwise(pl.col("messages"))
        .alias("messages"),
        pl.when(pl.col("source_line") == 5).then(pl.lit("other")).otherwise(pl.col("domain")).alias("domain"),
    )
    keep = with_ids(keep)
    ledger = new_ledger(row_id=ids[:3], stage=["filter", "filter", "dedup-minhash"],
                        rule=["refusal", "refusal", "jaccard>=0.8"], score=[0.9, 0.8, 0.93],
                        kept_row_id=[None, None, ids[5]], similarity=[None, None, 0.93])
    v2 = commit_step(ws, v1, "curate", {"recipe": "test"}, StepOutput(keep, ledger))
    pf = tmp_path / "pref.jsonl"
    pf.write_text(json.dumps({"prompt": "p", "chosen": "good", "rejected": "bad", "meta": {"domain": "fin"}}) + "\n")
    ingest(ws, [pf], "pref")
    pr = tmp_path / "prompts.jsonl"
    pr.write_text(json.dumps({"prompt": "write"}) + "\n")
    ingest(ws, [pr], "prompts")
    return {"v1": v1, "v2": v2, "ids": ids}


def run(ws, *args):
    res = CliRunner().invoke(cli, ["--workspace", str(ws.root), *args], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res


def run_json(ws, *args):
    return json.loads(run(ws, *args, "--json").stdout)


def test_list_log_show(ws, populated):
    listed = run_json(ws, "data", "list")
    assert {d["name"]: d["latest"] for d in listed} == {"sft": "sft@v2", "pref": "pref@v1", "prompts": "prompts@v1"}
    log = run_json(ws, "data", "log", "sft")
    assert [x["ref"] for x in log] == ["sft@v2", "sft@v1"]
    assert log[0]["parents"] == ["sft@v1"] and log[0]["operation"] == "curate"
    assert log[1]["params"]["format"] == "auto" and len(log[1]["digest"]) == 64
    show = run_json(ws, "data", "show", "sft@v1")
    assert show["rows"] == 6 and show["by_kind"] == {"sft": 6} and show["by_domain"] == {"fin": 6}
    assert show["by_task"] == {"qa": 6} and show["quarantined"] == 1
    assert show["length_chars"]["min"] > 0 and sum(h["rows"] for h in show["length_chars"]["histogram"]) == 6
    show2 = run_json(ws, "data", "show", "sft@v2")
    assert {(d["stage"], d["rule"]): d["rows"] for d in show2["dropped_by_this_step"]} == {
        ("filter", "refusal"): 2, ("dedup-minhash", "jaccard>=0.8"): 1}
    text = run(ws, "data", "show", "sft@v2").stdout
    assert "rows by domain" in text and "length" in text


def test_diff(ws, populated):
    d = run_json(ws, "data", "diff", "sft@v1", "sft@v2")
    assert (d["rows_a"], d["rows_b"]) == (6, 3)
    assert d["removed"] == 3 and d["added"] == 0
    assert d["changed"] == 2 and d["changed_content"] == 1 and d["changed_labels"] == 1
    assert d["unchanged"] == 1
    assert {(x["stage"], x["rule"]): x["rows"] for x in d["removed_by"]} == {
        ("filter", "refusal"): 2, ("dedup-minhash", "jaccard>=0.8"): 1}
    assert d["steps_between"] == ["sft@v2"]
    # reversed: the dropped rows come back as added, nothing is "removed by" a step
    r = diff_versions(ws, "sft@v2", "sft@v1")
    assert r["added"] == 3 and r["removed"] == 0 and r["changed"] == 2


def test_why(ws, populated):
    ids = populated["ids"]
    fate = run_json(ws, "data", "why", ids[2][:10])  # a unique prefix works
    assert fate["row_id"] == ids[2] and fate["appears_in"] == ["sft@v1"]
    steps = {e["version"]: e for e in fate["timeline"]["sft"]}
    assert steps["sft@v1"]["present"] and not steps["sft@v2"]["present"]
    drop = steps["sft@v2"]["dropped"]
    assert (drop["stage"], drop["rule"], drop["kept_row_id"], drop["similarity"]) == (
        "dedup-minhash", "jaccard>=0.8", ids[5], pytest.approx(0.93))
    kept = row_fate(ws, ids[5])
    assert kept["appears_in"] == ["sft@v1", "sft@v2"]
    assert [p["row_id"] for p in kept["kept_partner_of"]] == [ids[2]]
    text = run(ws, "data", "why", ids[0]).stdout
    assert "refusal" in text and "dropped" in text
    with pytest.raises(BakeoffError, match="no row with id"):
        row_fate(ws, "ffffffffffffffff")


def test_export_jsonl_parquet_hf(ws, populated, tmp_path):
    import datasets

    out = tmp_path / "export-sft.jsonl"
    res = run_json(ws, "data", "export", "sft@v2", "--format", "jsonl", "--out", str(out))
    assert res["rows"] == 3 and len(out.read_text().splitlines()) == 3
    pq = tmp_path / "sft.parquet"
    export_version(ws, "sft@v2", "parquet", pq)
    assert pl.read_parquet(pq)["id"].to_list() == ws.load("sft@v2")["id"].to_list()

    hf = tmp_path / "hf-sft"
    run_json(ws, "data", "export", "sft@v2", "--format", "hf", "--out", str(hf))
    d = datasets.load_from_disk(str(hf))
    assert d.num_rows == 3 and {"messages", "id", "domain", "task", "tags"} <= set(d.column_names)
    assert "kind" not in d.column_names and d[0]["messages"][0]["role"] == "user"

    hp = tmp_path / "hf-pref"
    export_version(ws, "pref", "hf", hp)
    p = datasets.load_from_disk(str(hp))
    assert {"prompt", "chosen", "rejected", "id"} <= set(p.column_names) and "messages" not in p.column_names
    assert p[0]["prompt"] == msgs(("user", "p")) and p[0]["chosen"] == msgs(("assistant", "good"))

    hq = tmp_path / "hf-prompts"
    export_version(ws, "prompts", "hf", hq)
    q = datasets.load_from_disk(str(hq))
    assert q[0]["prompt"] == msgs(("user", "write")) and "messages" not in q.column_names

    with pytest.raises(BakeoffError, match="exists"):
        export_version(ws, "prompts", "hf", hq)


def test_export_hf_keeps_testset_columns_and_splits_mixed_kinds(ws, tmp_path):
    import datasets

    f = tmp_path / "t.jsonl"
    f.write_text(json.dumps({"messages": msgs(("user", "q"), ("assistant", "a"))}) + "\n")
    base = ws.load(ingest(ws, [f], "t").version)
    ts = base.with_columns(pl.lit("adjacent").alias("slice"), pl.lit("a").alias("reference"),
                           pl.lit('{"method": "exact"}').alias("scoring"))
    ws.commit_version("ts", ts, operation="testset", parents=["t@v1"])
    out = tmp_path / "hf-ts"
    export_version(ws, "ts", "hf", out)
    d = datasets.load_from_disk(str(out))
    assert d[0]["slice"] == "adjacent" and d[0]["scoring"] == '{"method": "exact"}'

    g = tmp_path / "mixed.jsonl"
    g.write_text(json.dumps({"prompt": "p", "chosen": "c", "rejected": "r"}) + "\n")
    mixed = pl.concat([base, ws.load(ingest(ws, [g], "mp").version)])
    ws.commit_version("mixed", mixed, operation="merge")
    out2 = tmp_path / "hf-mixed"
    export_version(ws, "mixed", "hf", out2)
    dd = datasets.load_from_disk(str(out2))
    assert set(dd.keys()) == {"sft", "preference"}


def test_quarantine_browse(ws, populated):
    q = run_json(ws, "data", "quarantine", "sft")  # bare name: the latest version that quarantined
    assert q["version"] == "sft@v1" and q["total"] == 1
    rec = q["records"][0]
    assert rec["source_line"] == 7 and rec["reason"].startswith("malformed JSON") and rec["raw"] == "{broken"
    assert run_json(ws, "data", "quarantine", "sft@v1", "--reason", "utf-8")["total"] == 0
    text = run(ws, "data", "quarantine", "sft").stdout
    assert "sft.jsonl:7" in text


def test_help_has_examples():
    for cmd in ("ingest", "list", "log", "show", "diff", "export", "why", "quarantine"):
        res = CliRunner().invoke(cli, ["data", cmd, "--help"])
        assert res.exit_code == 0 and "Example" in res.output, cmd
