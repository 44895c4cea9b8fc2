"""Building test sets: slices by domain similarity, decontamination, determinism,
catalog entry and reports."""

from __future__ import annotations

import json
import random

import polars as pl
import pytest

from bakeoff.testsets.builder import BuildConfig, build_testset, parse_per_slice, waterfill
from bakeoff.workspace import BakeoffError
from testsets_synth import make_rows, paraphrase, user_texts, with_user_text


@pytest.fixture
def synth(ws):
    train = make_rows({"finance-tables": 300}, seed=1)
    pool = make_rows({"finance-tables": 80, "invoices": 80, "contracts": 60, "recipes": 60}, seed=2, style=1)
    ws.commit_version("train", train, operation="test")
    ws.commit_version("pool", pool, operation="test")
    return train, pool


def test_slices_from_labelled_domains(ws, synth):
    train, pool = synth
    res = build_testset(ws, "train@v1", ["pool@v1"], "ts", BuildConfig(size=150, seed=3))
    rows = res.rows
    assert res.version.ref == "ts@v1"
    s = res.summary()
    assert s["slices"]["in-domain"]["domains"] == ["finance-tables"]
    assert s["slices"]["adjacent"]["domains"] == ["invoices"]
    assert s["slices"]["far"]["domains"] == ["contracts", "recipes"]
    assert {k: v["size"] for k, v in s["slices"].items()} == {"in-domain": 60, "adjacent": 60, "far": 30}
    # far is shared equally among its domains (stratified by domain)
    assert res.report["slices"]["far"]["by_domain"] == {"contracts": 15, "recipes": 15}
    # similarities are measured and printed per domain
    doms = {d["domain"]: d for d in s["domains"]}
    assert doms["invoices"]["nn_mean"] > doms["contracts"]["nn_mean"]
    assert doms["finance-tables"]["relative"] == 1.0
    # a pool with no overlap loses nothing
    assert s["removed_as_contaminated"] == 0 and ws.ledger(res.version).height == 0
    assert not set(rows["id"]) & set(train["id"])
    # rows follow the test-set contract
    stored = ws.load(res.version)
    assert stored.height == 150 and set(stored["slice"]) == {"in-domain", "adjacent", "far"}
    assert (stored["kind"] == "sft").all()
    last = stored.select(pl.col("messages").list.last().struct.field("role").alias("r"),
                         pl.col("messages").list.last().struct.field("content").alias("c"), "reference")
    assert (last["r"] == "assistant").all() and (last["c"] == last["reference"]).all()
    specs = {t: json.loads(sc) for t, sc in stored.filter(pl.col("domain") != "recipes")
             .select("task", "scoring").unique("task").iter_rows()}
    assert specs["qa"]["method"] == "numeric" and specs["qa"]["scale"] == 1000.0
    assert specs["arithmetic"]["method"] == "numeric"
    assert specs["extraction"]["method"] == "fields"
    assert specs["extraction"]["fields"] == ["date", "total", "vendor"]
    assert specs["classification"]["method"] == "choice"
    assert specs["classification"]["choices"] == ["confidentiality", "liability", "payment", "termination"]
    # "25 minutes" is one number: numeric, with no scale stated in the recipe
    recipe = json.loads(stored.filter(pl.col("domain") == "recipes")["scoring"][0])
    assert recipe["method"] == "numeric" and recipe["scale"] == 1.0
    # catalog: parents, params, report; HTML report
    v = ws.resolve("ts@v1")
    assert v.parents == ["train@v1", "pool@v1"] and v.operation == "testsets.build"
    assert v.params["seed"] == 3
    rep = ws.report(v)
    assert rep["train"] == "train@v1" and rep["power"]["slices"]["far"]["half_width"] == pytest.approx(1.96 * (0.25 / 30) ** 0.5, abs=1e-3)
    html = open(res.html, encoding="utf-8").read()
    assert res.html.startswith(str(ws.reports_dir()))
    assert "data:image/png;base64," in html and "invoices" in html and "http" not in html.split("<body>")[1]


def test_planted_copies_and_paraphrases_are_removed(ws):
    train = make_rows({"finance-tables": 300}, seed=1)
    pool = make_rows({"finance-tables": 60, "invoices": 60}, seed=2, style=1)
    r = random.Random(7)
    verbatim = train.sample(15, seed=11)
    src = train.sample(20, seed=12)
    para = with_user_text(src, [paraphrase(t, r, changes=2) for t in user_texts(src)])
    ws.commit_version("train", train, operation="test")
    ws.commit_version("pool", pl.concat([pool, verbatim, para]), operation="test")
    res = build_testset(ws, "train", ["pool"], "ts", BuildConfig(per_slice={"in-domain": 500, "adjacent": 500}))
    ledger = ws.ledger(res.version)
    removed = set(ledger["row_id"])
    assert set(verbatim["id"]) <= removed
    assert len(set(para["id"]) & removed) >= 0.8 * para.height
    assert removed <= set(verbatim["id"]) | set(para["id"]), "clean rows were removed"
    assert (ledger["stage"] == "decontaminate").all()
    assert ledger["kept_row_id"].is_in(train["id"].to_list()).all()
    assert res.summary()["removed_as_contaminated"] == len(removed)
    assert not set(res.rows["id"]) & removed
    # every pool row is accounted for: selected + removed = candidates (targets exceed supply)
    assert res.rows.height + len(removed) == pool.height + verbatim.height + para.height
    listed = {x["id"] for x in res.report["contamination"]["items"] if x["flagged"]}
    assert listed == removed


def test_keep_flagged_marks_instead_of_removing(ws):
    train = make_rows({"finance-tables": 200}, seed=1)
    pool = make_rows({"finance-tables": 30}, seed=2, style=1)
    copies = train.head(5)
    src = train.slice(10, 8)
    para = with_user_text(src, [paraphrase(t, random.Random(i), changes=1) for i, t in enumerate(user_texts(src))])
    ws.commit_version("train", train, operation="test")
    ws.commit_version("pool", pl.concat([pool, copies, para]), operation="test")
    res = build_testset(ws, "train", ["pool"], "ts",
                        BuildConfig(per_slice={"in-domain": 100}, keep_flagged=True), html=None)
    # a training row is never kept, even with keep_flagged
    assert set(ws.ledger(res.version)["row_id"]) == set(copies["id"])
    marked = res.rows.filter(pl.col("contamination").is_not_null())
    assert set(marked["id"]) == set(para["id"])
    assert {"ngram", "minhash"} & set(json.loads(marked["contamination"][0])["signals"])
    assert res.summary()["flagged_kept"] == 8 and res.summary()["removed_as_contaminated"] == 5
    assert res.rows.height == 30 + 8


def test_same_seed_same_testset(ws, synth):
    a = build_testset(ws, "train", ["pool"], "a", BuildConfig(size=90, seed=5), html=None)
    b = build_testset(ws, "train", ["pool"], "b", BuildConfig(size=90, seed=5), html=None)
    c = build_testset(ws, "train", ["pool"], "c", BuildConfig(size=90, seed=6), html=None)
    assert a.rows["id"].to_list() == b.rows["id"].to_list()
    assert a.version.digest == b.version.digest
    assert set(a.rows["id"]) != set(c.rows["id"])


def test_input_order_does_not_matter(ws):
    train = make_rows({"finance-tables": 150}, seed=1)
    pool = make_rows({"finance-tables": 40, "invoices": 40}, seed=2, style=1)
    ws.commit_version("train", train, operation="test")
    ws.commit_version("p1", pool, operation="test")
    ws.commit_version("p2", pool.reverse(), operation="test")
    a = build_testset(ws, "train", ["p1"], "a", BuildConfig(size=40, seed=1), html=None)
    b = build_testset(ws, "train", ["p2"], "b", BuildConfig(size=40, seed=1), html=None)
    assert a.rows["id"].to_list() == b.rows["id"].to_list()


def test_clusters_when_labels_are_missing(ws):
    train = make_rows({"finance-tables": 200}, seed=1, labelled=False)
    pool = make_rows({"finance-tables": 60, "invoices": 60, "recipes": 60}, seed=2, style=1, labelled=False)
    ws.commit_version("train", train, operation="test")
    ws.commit_version("pool", pool, operation="test")
    res = build_testset(ws, "train", ["pool"], "ts", BuildConfig(size=90, seed=0), html=None)
    rep = res.report
    assert rep["domains_from"] == "clusters"
    rows = res.rows
    assert rows["domain"].str.starts_with("cluster-").all()
    ind = rows.filter(pl.col("slice") == "in-domain")
    # the in-domain clusters are the financial tables
    assert ind.height > 0 and (ind["doctype"] == "table").mean() >= 0.9
    # the recipes never pass for in-domain
    assert rows.filter(pl.col("doctype") == "recipe")["slice"].is_in(["adjacent", "far"]).all()


def test_forced_bands_and_errors(ws, synth):
    res = build_testset(ws, "train", ["pool"], "ts",
                        BuildConfig(size=60, adjacent=("recipes",), far=("invoices",)), html=None)
    slices = res.summary()["slices"]
    assert slices["adjacent"]["domains"] == ["recipes"] and "invoices" in slices["far"]["domains"]
    with pytest.raises(BakeoffError, match="not in the pool"):
        build_testset(ws, "train", ["pool"], "ts", BuildConfig(adjacent=("nope",)), html=None)
    with pytest.raises(BakeoffError, match="both the training version and a pool"):
        build_testset(ws, "train", ["train"], "ts")
    with pytest.raises(BakeoffError, match="nothing to sample"):
        build_testset(ws, "train", ["pool"], "ts", BuildConfig(per_slice={"adjacent": 0}), html=None)
    with pytest.raises(BakeoffError, match="unknown slice"):
        parse_per_slice("in-domain=5,middle=3")


def test_waterfill():
    assert waterfill(10, [2, 100, 100]) == [2, 4, 4]
    assert waterfill(10, [0, 0]) == [0, 0]
    assert sum(waterfill(7, [3, 3, 3])) == 7
    assert waterfill(100, [5, 6]) == [5, 6]


def test_data_export_keeps_slice(ws, synth, tmp_path):
    from bakeoff.data_cli import export_version

    res = build_testset(ws, "train", ["pool"], "ts", BuildConfig(size=30), html=None)
    out = tmp_path / "ts.jsonl"
    export_version(ws, res.version.ref, "jsonl", out)
    exported = pl.read_ndjson(out)
    assert {"slice", "reference", "scoring"} <= set(exported.columns)
    assert exported["slice"].is_not_null().all()


def test_candidates_from_mixed_kinds():
    from bakeoff.schema import conform, with_ids
    from bakeoff.testsets.builder import to_candidates

    u = [{"role": "user", "content": "Which clause?"}]
    a = [{"role": "assistant", "content": "payment"}]
    df = with_ids(conform(pl.DataFrame([
        {"kind": "sft", "messages": u + a},
        {"kind": "sft", "messages": u + a},                      # a duplicate: kept once
        {"kind": "preference", "messages": u, "chosen": [{"role": "assistant", "content": "termination"}],
         "rejected": [{"role": "assistant", "content": "no idea"}]},
        {"kind": "prompt", "messages": u},                       # no reference: left out
        {"kind": "sft", "messages": u},                          # ends without an answer: left out
    ])))
    cand, counts = to_candidates(df)
    assert counts == {"pool_rows": 5, "no_reference": 2, "duplicate_in_pool": 1}
    assert sorted(cand["reference"]) == ["payment", "termination"]
    assert (cand["kind"] == "sft").all() and cand["chosen"].is_null().all()
    pref = cand.filter(pl.col("reference") == "termination")
    assert pref["messages"][0].to_list()[-1] == {"role": "assistant", "content": "termination"}
    assert pref["pool_id"][0] != pref["id"][0]  # new content, new id; the ledger names the pool row
