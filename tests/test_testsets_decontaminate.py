"""Decontamination signals: exact, longest shared n-gram, MinHash, embedding NN."""

from __future__ import annotations

import random
import re

import numpy as np
import polars as pl
import pytest

from bakeoff.testsets.decontaminate import DecontamConfig, check_contamination, longest_shared_ngram
from testsets_synth import make_rows, paraphrase, user_texts, with_user_text


def _brute_longest(a: str, corpus: list[str], cap: int = 256) -> int:
    """Longest common run of words between a and any corpus text (reference implementation)."""
    wa = re.findall(r"\w+", a.lower())
    best = 0
    for c in corpus:
        wc = re.findall(r"\w+", c.lower())
        prev = [0] * (len(wc) + 1)
        for x in wa:
            cur = [0] * (len(wc) + 1)
            for j, y in enumerate(wc):
                if x == y:
                    cur[j + 1] = prev[j] + 1
                    best = max(best, cur[j + 1])
            prev = cur
    return min(best, cap)


def test_longest_shared_ngram_matches_brute_force():
    r = random.Random(0)
    vocab = [f"w{i}" for i in range(40)]
    corpus = [" ".join(r.choice(vocab) for _ in range(r.randint(20, 60))) for _ in range(30)]
    queries = []
    for i in range(25):
        src = corpus[r.randrange(len(corpus))].split()
        k = r.randint(3, len(src))
        start = r.randrange(len(src) - k + 1)
        # a copied run of k words inside fresh words
        queries.append(" ".join([*(r.choice(vocab) for _ in range(5)), *src[start:start + k],
                                 *(r.choice(vocab) for _ in range(5))]))
    cfg = DecontamConfig(boilerplate_min_docs=10_000)  # no boilerplate filtering: exact comparison
    length, match, _ = longest_shared_ngram(pl.Series(queries), pl.Series(corpus), cfg)
    for q, got, m in zip(queries, length, match):
        want = _brute_longest(q, corpus)
        assert got == (want if want >= cfg.ngram_report else 0), (q, got, want)
        if got:  # the named training row really holds an n-gram that long
            assert _brute_longest(q, [corpus[m]]) >= got


def test_boilerplate_ngrams_do_not_flag():
    """A long instruction shared by every training row is a template, not contamination."""
    template = "Using only the figures in the table below answer the following question about the company carefully"
    r = random.Random(1)
    train = [f"{template} {' '.join(str(r.randint(0, 10**6)) for _ in range(8))}" for _ in range(100)]
    test = [f"{template} {' '.join(str(r.randint(0, 10**6)) for _ in range(8))}" for _ in range(10)]
    length, _, info = longest_shared_ngram(pl.Series(test), pl.Series(train), DecontamConfig())
    assert info["boilerplate_max_df"] == 10
    assert (length < 13).all()
    # but a verbatim training row is still caught by its own n-grams
    length, _, _ = longest_shared_ngram(pl.Series([train[5]]), pl.Series(train), DecontamConfig())
    assert length[0] >= 13


def test_signals_on_planted_copies(ws):
    train = make_rows({"finance-tables": 200}, seed=1)
    clean = make_rows({"finance-tables": 60, "invoices": 30}, seed=2, style=1)
    r = random.Random(3)
    verbatim = train.sample(10, seed=4)
    src = train.sample(20, seed=5)
    para = with_user_text(src, [paraphrase(t, r, changes=2) for t in user_texts(src)])
    test = pl.concat([clean, verbatim, para])
    res = check_contamination(test, train, DecontamConfig(), ws)
    items = res.items
    assert items.height == test.height
    flagged = set(res.flagged["id"])
    assert set(verbatim["id"]) <= flagged
    for row in items.filter(pl.col("id").is_in(verbatim["id"].to_list())).iter_rows(named=True):
        assert "exact" in row["signals"] and row["exact_train_id"] == row["id"]
    caught = len(set(para["id"]) & flagged)
    assert caught >= 0.8 * para.height, caught
    # the paraphrase's match is the row it was made from
    by_id = dict(zip(para["id"], src["id"]))
    for row in items.filter(pl.col("id").is_in(para["id"].to_list()) & pl.col("flagged")).iter_rows(named=True):
        assert row["train_match_id"] == by_id[row["id"]]
    assert not (set(clean["id"]) & flagged), "clean held-out rows were flagged"
    assert res.summary["flagged"] == len(flagged)
    assert items["cosine"].is_not_null().all()


def test_no_overlap_flags_nothing(ws):
    train = make_rows({"finance-tables": 150}, seed=1)
    test = make_rows({"finance-tables": 40, "invoices": 40, "contracts": 40}, seed=9, style=1)
    res = check_contamination(test, train, DecontamConfig(), ws)
    assert res.flagged.height == 0
    assert np.all(res.items["ngram_len"].to_numpy() < 13)


def test_unknown_signal_is_rejected(ws):
    train = make_rows({"finance-tables": 5}, seed=1)
    with pytest.raises(ValueError, match="unknown contamination signals"):
        check_contamination(train, train, DecontamConfig(signals=("bogus",)), ws)
