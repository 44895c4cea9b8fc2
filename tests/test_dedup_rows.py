"""bakeoff.curate.dedup: verification guarantee, keep policies, determinism,
the ledger of the step, and precision/recall on the planted demo duplicates."""

from __future__ import annotations

import random

import numba
import numpy as np
import polars as pl
import pytest

from bakeoff.curate import minhash as mh
from bakeoff.curate.dedup import EXACT, NEAR, DedupConfig, dedup_rows, dedup_texts
from bakeoff.schema import conform, conversation_text, with_ids


def _corpus(n_base: int = 150, copies: int = 250, seed: int = 0) -> list[str]:
    """Base documents plus copies with 0..8 word edits (straddling J=0.8), shuffled."""
    rng = random.Random(seed)
    vocab = [f"tok{i}" for i in range(600)]
    base = [" ".join(rng.choice(vocab) for _ in range(rng.randint(20, 60))) for _ in range(n_base)]
    out = list(base)
    for _ in range(copies):
        words = rng.choice(base).split()
        for _ in range(rng.randint(0, 8)):
            op = rng.randrange(3)
            i = rng.randrange(len(words))
            if op == 0:
                words[i] = rng.choice(vocab)
            elif op == 1 and len(words) > 5:
                del words[i]
            else:
                words.insert(i, rng.choice(vocab))
        text = " ".join(words)
        out.append(text.upper() if rng.random() < 0.2 else text)
    rng.shuffle(out)
    return out


def _jac(a: str, b: str) -> float:
    sa, sb = mh.shingles(a), mh.shingles(b)
    return len(sa & sb) / len(sa | sb) if sa | sb else 0.0


def _brute_force_greedy(texts: list[str], t: float) -> np.ndarray:
    """Row order greedy over exact Jaccard of all pairs: the ideal result."""
    removed = np.zeros(len(texts), bool)
    kept: list[int] = []
    sets = [mh.shingles(x) for x in texts]
    for i, s in enumerate(sets):
        if s and any(len(s & sets[k]) / len(s | sets[k]) >= t for k in kept):
            removed[i] = True
        else:
            kept.append(i)
    return removed


def test_every_removed_row_has_a_verified_kept_partner():
    texts = _corpus()
    res = dedup_texts(texts, DedupConfig(threshold=0.8))
    removed = np.flatnonzero(res.removed)
    assert removed.size > 50
    for i in removed:
        k = res.partner[i]
        assert not res.removed[k], "a removed row must point at a kept row"
        j = _jac(texts[i], texts[k])
        assert j >= 0.8
        assert res.similarity[i] == pytest.approx(j)
        if res.stage[i] == EXACT:
            assert mh.normalize([texts[i]])[0] == mh.normalize([texts[k]])[0]
    ideal = _brute_force_greedy(texts, 0.8)
    recall = (res.removed & ideal).sum() / ideal.sum()
    assert recall >= 0.97


def test_exact_stage_and_empty_texts():
    texts = ["Hello, World!", "hello world", "HELLO   world?!", "", "", "   ", "other text here"]
    res = dedup_texts(texts, DedupConfig(near=False))
    assert res.partner.tolist() == [-1, 0, 0, -1, -1, -1, -1]  # empty texts are never duplicates
    assert (res.stage == EXACT).sum() == 2
    near_only = dedup_texts(texts, DedupConfig(exact=False))
    assert near_only.removed.sum() == 2 and set(near_only.stage[near_only.removed]) == {NEAR}


def test_exact_copies_of_a_near_duplicate_point_at_the_kept_row():
    a = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi"
    b = a + " rho"
    res = dedup_texts([a, b, b.upper(), b + "!"])
    assert res.partner.tolist() == [-1, 0, 0, 0]
    assert res.stage.tolist() == [0, NEAR, NEAR, NEAR]
    assert res.similarity[1:].tolist() == [pytest.approx(_jac(a, b))] * 3
    assert res.stats["removed_exact"] + res.stats["removed_near"] == 3


def test_keep_policies():
    short = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi"
    long = short + " omicron"
    df = with_ids(conform(pl.DataFrame({
        "kind": ["sft"] * 3,
        "messages": [[{"role": "user", "content": q}, {"role": "assistant", "content": "ok"}]
                     for q in (short, long, "something entirely different here")],
        "quality": [0.9, 0.1, 0.5],
    })))
    ids = df["id"].to_list()
    first = dedup_rows(df, DedupConfig(keep="first", threshold=0.8))
    assert first.ledger["row_id"].to_list() == [ids[1]] and first.ledger["kept_row_id"].to_list() == [ids[0]]
    longest = dedup_rows(df, DedupConfig(keep="longest", threshold=0.8))
    assert longest.ledger["row_id"].to_list() == [ids[0]] and longest.ledger["kept_row_id"].to_list() == [ids[1]]
    best = dedup_rows(df.with_columns(pl.Series("quality", [0.1, 0.9, 0.5])), DedupConfig(keep="quality"))
    assert best.ledger["row_id"].to_list() == [ids[0]]
    from bakeoff.workspace import BakeoffError

    with pytest.raises(BakeoffError, match="quality"):
        dedup_rows(df.drop("quality"), DedupConfig(keep="quality"))


def test_result_independent_of_batch_size_and_threads():
    texts = _corpus(seed=1)
    ref = dedup_texts(texts, DedupConfig(batch_size=100_000))
    old = numba.get_num_threads()
    try:
        for batch, threads in [(1, 1), (7, 2), (64, 1), (500, min(2, numba.config.NUMBA_NUM_THREADS))]:
            numba.set_num_threads(threads)
            got = dedup_texts(texts, DedupConfig(batch_size=batch))
            np.testing.assert_array_equal(got.partner, ref.partner)
            np.testing.assert_array_equal(got.similarity, ref.similarity)
            np.testing.assert_array_equal(got.stage, ref.stage)
    finally:
        numba.set_num_threads(old)


def _rows(prompts: list[str], answers: list[str]) -> pl.DataFrame:
    return with_ids(conform(pl.DataFrame({
        "kind": ["sft"] * len(prompts),
        "messages": [[{"role": "user", "content": p}, {"role": "assistant", "content": a}]
                     for p, a in zip(prompts, answers)],
    })))


def test_dedup_rows_ledger_scope_and_commit(ws):
    from bakeoff.steps import commit_step

    p = "What was the total revenue of the company in the year 2021 according to the table above"
    df = _rows([p, p + "?", p.upper(), "A completely different question about invoices and receipts"],
               ["42", "forty-two and some more words to make it differ", "42", "7"])
    # scope=prompt: rows 1 and 2 duplicate row 0's prompt; scope=response: only row 2
    out = dedup_rows(df, DedupConfig(scope="prompt"))
    ids = df["id"].to_list()
    assert out.rows["id"].to_list() == [ids[0], ids[3]]
    assert set(out.ledger["row_id"]) == {ids[1], ids[2]}
    assert set(out.ledger["stage"]) == {"dedup-exact"}  # '?' and case vanish in normalisation
    assert out.ledger["kept_row_id"].to_list() == [ids[0], ids[0]]
    assert out.ledger["cluster_id"].to_list() == [ids[0], ids[0]]
    assert out.ledger["similarity"].to_list() == [1.0, 1.0]
    resp = dedup_rows(df, DedupConfig(scope="response"))
    assert resp.ledger["row_id"].to_list() == [ids[2]]
    # whole conversation, near stage with the rule and verified similarity
    # (every turn must match: the similarity is the lowest turn's Jaccard)
    df2 = _rows([p, p + " please"], ["the answer is 42 million dollars", "the answer is 42 million dollars"])
    near = dedup_rows(df2, DedupConfig(scope="all", threshold=0.7))
    assert near.ledger["stage"].to_list() == ["dedup-minhash"]
    assert near.ledger["rule"].to_list() == ["jaccard>=0.7"]
    assert near.ledger["similarity"][0] == pytest.approx(_jac(p, p + " please"))
    assert "every one of the 2 segment(s)" in near.ledger["detail"][0]
    # the same answer to another question (one word changed) is not a duplicate
    df3 = _rows([p, p.replace("2021", "2022")], ["the answer is 42 million dollars"] * 2)
    assert dedup_rows(df3, DedupConfig(scope="all", threshold=0.7)).ledger.height == 0
    assert near.report["removed_near"] == 1 and near.report["largest_clusters"][0]["removed"] == 1

    v1 = ws.commit_version("docs", df, operation="ingest")
    v2 = commit_step(ws, v1.ref, "dedup", DedupConfig(scope="prompt").to_dict(), out)
    assert v2.rows == 2 and ws.ledger(v2.ref).height == 2


def test_demo_planted_duplicates_precision_recall(ws):
    """Planted exact and near duplicates of the demo corpus (ground truth) are
    found; nothing is removed without a verified partner."""
    demo = pytest.importorskip("bakeoff.demo_data")
    info = demo.make_demo_workspace(ws, seed=0, scale=1.0)
    truth = demo.load_ground_truth(info["ground_truth"])
    df = ws.load(info["datasets"]["fin-train"])
    out = dedup_rows(df, DedupConfig(scope="all", threshold=0.8))
    planted = {t["line"]: t["kind"] for t in truth
               if t["kind"] in ("exact-duplicate", "near-duplicate") and t.get("dataset") == "fin-train"}
    assert len(planted) >= 20
    removed = df.join(out.ledger.select(pl.col("row_id").alias("id"), "stage"), on="id")
    got = dict(zip(removed["source_line"].to_list(), removed["stage"].to_list()))
    hits = set(got) & set(planted)
    recall, precision = len(hits) / len(planted), len(hits) / max(len(got), 1)
    assert recall == 1.0, sorted(set(planted) - set(got))
    assert precision >= 0.95, sorted(set(got) - set(planted))
    # planted exact copies are caught by the exact stage, reworded ones by MinHash
    stage_of = {"exact-duplicate": "dedup-exact", "near-duplicate": "dedup-minhash"}
    assert all(got[line] == stage_of[kind] for line, kind in planted.items())
    # whatever was removed beyond the plan still has a verified partner
    texts = df.select(conversation_text())["text"]
    pos = {i: k for k, i in enumerate(df["id"].to_list())}
    for rid, kid in zip(out.ledger["row_id"], out.ledger["kept_row_id"]):
        assert _jac(texts[pos[rid]], texts[pos[kid]]) >= 0.8
