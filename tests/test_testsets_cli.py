"""`bakeoff testsets build/check` end to end: JSON shape, hand-ingested test sets,
and the demo workspace."""

from __future__ import annotations

import json

import polars as pl
import pytest
from click.testing import CliRunner

from bakeoff.cli import cli
from testsets_synth import make_rows


def _run(ws, *args):
    res = CliRunner().invoke(cli, ["--workspace", str(ws.root), *args], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res


def _json(res) -> dict:
    return json.loads(res.stdout)


def test_build_json_shape(ws, tmp_path):
    ws.commit_version("train", make_rows({"finance-tables": 200}, seed=1), operation="test")
    ws.commit_version("pool-a", make_rows({"finance-tables": 50, "invoices": 50}, seed=2, style=1), operation="test")
    ws.commit_version("pool-b", make_rows({"recipes": 40}, seed=3), operation="test")
    html = tmp_path / "r.html"
    out = _json(_run(ws, "testsets", "build", "--train", "train@v1", "--pool", "pool-a@v1", "--pool", "pool-b@v1",
                     "--name", "fin-test", "--per-slice", "in-domain=30,adjacent=30,far=10", "--seed", "4",
                     "--scoring", "qa=token_f1", "--html", str(html), "--json"))
    assert out["version"] == "fin-test@v1"
    assert {k: v["size"] for k, v in out["slices"].items()} == {"in-domain": 30, "adjacent": 30, "far": 10}
    assert out["slices"]["adjacent"]["domains"] == ["invoices"] and out["slices"]["far"]["domains"] == ["recipes"]
    assert out["removed_as_contaminated"] == 0
    assert out["html"] == str(html) and html.exists()
    assert set(out["power"]) == {"in-domain", "adjacent", "far"}
    rows = ws.load("fin-test")
    qa = rows.filter(pl.col("task") == "qa")
    assert qa.height and all(json.loads(s)["method"] == "token_f1" for s in qa["scoring"])
    assert ws.resolve("fin-test").parents == ["train@v1", "pool-a@v1", "pool-b@v1"]


def test_check_hand_ingested_testset(ws, tmp_path):
    """A test set written by hand (plain chat JSONL, no slice/reference/scoring),
    ingested with `data ingest`, checked against the training version."""
    pytest.importorskip("bakeoff.curate.ingest")
    train = make_rows({"finance-tables": 150}, seed=1)
    ws.commit_version("train", train, operation="test")
    fresh = make_rows({"invoices": 8, "finance-tables": 8}, seed=5, style=1)
    copied = train.head(3)
    path = tmp_path / "my-eval.jsonl"
    with open(path, "w", encoding="utf-8") as fh:
        for msgs in pl.concat([fresh, copied])["messages"].to_list():
            fh.write(json.dumps({"messages": msgs}) + "\n")
    _run(ws, "data", "ingest", str(path), "--name", "my-eval")
    hand = ws.load("my-eval")
    assert "slice" not in hand.columns and hand.height == 19
    out = _json(_run(ws, "testsets", "check", "my-eval", "train@v1", "--json"))
    flagged = {f["id"]: f for f in out["flagged"]}
    assert set(flagged) == set(copied["id"])  # ids are content hashes: the same content, the same id
    for f in flagged.values():
        assert {"exact", "ngram", "minhash", "embedding"} <= set(f["signals"])
        assert f["train_match_id"] == f["id"]
    assert out["summary"]["items"] == 19 and out["summary"]["flagged"] == 3
    # human output and HTML
    res = _run(ws, "testsets", "check", "my-eval", "train@v1", "--html", "auto")
    assert "3 flagged" in res.stdout
    assert list(ws.reports_dir().glob("check-my-eval-*.html"))


def test_errors_are_one_line(ws, monkeypatch, capsys):
    """Bad input ends as one 'error:' line on stderr and exit status 1 (through the
    console script's entry point, in-process)."""
    from bakeoff.cli import main

    ws.commit_version("train", make_rows({"finance-tables": 20}, seed=1), operation="test")
    for args, message in [
        (["--pool", "nope"], "error: no dataset named 'nope'"),
        (["--pool", "train", "--per-slice", "middle=4"],
         "error: unknown slice 'middle' in --per-slice; use in-domain, adjacent, far"),
    ]:
        monkeypatch.setattr("sys.argv", ["bakeoff", "--workspace", str(ws.root), "testsets", "build",
                                         "--train", "train", "--name", "t", *args])
        with pytest.raises(SystemExit) as exc:
            main()
        assert exc.value.code == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith(message) and "\n" not in err and "Traceback" not in err


def test_demo_workspace_testset(ws):
    """The demo corpus: finance tables in training, invoices held out (adjacent),
    contracts far; every planted leak of a training row is removed. The hashing
    embedder is lexical, so the bands are named here; the slow test below lets
    the real model decide them."""
    from bakeoff.demo_data import load_ground_truth, make_demo_workspace

    info = make_demo_workspace(ws, seed=0, scale=0.3)
    out = _json(_run(ws, "testsets", "build", "--train", info["datasets"]["fin-train"],
                     "--pool", info["datasets"]["pool"], "--name", "demo-test", "--adjacent", "invoices",
                     "--far", "contracts", "--size", "120", "--json"))
    assert out["slices"]["in-domain"]["domains"] == ["finance-tables"]
    assert out["slices"]["adjacent"]["domains"] == ["invoices"]
    assert out["slices"]["in-domain"]["size"] > 0 and out["slices"]["adjacent"]["size"] > 0
    leaks = [g for g in load_ground_truth(info["ground_truth"]) if g.get("kind") == "leak"]
    assert leaks and out["removed_as_contaminated"] >= len(leaks)
    rows = ws.load(out["version"])
    train_ids = set(ws.load(info["datasets"]["fin-train"])["id"])
    assert not set(rows["id"]) & train_ids
    methods = {t: json.loads(s)["method"] for t, s in rows.select("task", "scoring").unique("task").iter_rows()}
    assert methods["extraction"] == "fields" and methods["classification"] == "choice"


@pytest.mark.slow
def test_demo_workspace_bands_with_minilm(ws, monkeypatch):
    """With all-MiniLM-L6-v2 the similarity bands alone put invoices in the
    adjacent slice and contracts in the far one."""
    monkeypatch.setenv("BAKEOFF_EMBEDDING_MODEL", "all-MiniLM-L6-v2")
    from bakeoff.demo_data import make_demo_workspace

    info = make_demo_workspace(ws, seed=0, scale=0.3)
    out = _json(_run(ws, "testsets", "build", "--train", info["datasets"]["fin-train"],
                     "--pool", info["datasets"]["pool"], "--name", "demo-test", "--size", "120", "--json"))
    assert out["slices"]["adjacent"]["domains"] == ["invoices"]
    assert out["slices"]["far"]["domains"] == ["contracts"]
