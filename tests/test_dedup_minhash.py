"""bakeoff.curate.minhash: signatures equal datasketch's, shingles, LSH params,
cross matches verified exactly."""

from __future__ import annotations

import random
import re

import numpy as np
import pytest
from datasketch import LeanMinHash, MinHash, MinHashLSH

from bakeoff.curate import minhash as mh

TEXTS = [
    "Hello, world! This is a test of the MinHash module.",
    "hello world -- this is a TEST of the minhash module",
    "",
    "   ...   ",
    "one",
    "two words",
    "a b c",
    "Ünïcödé STRASSE straße 日本語のテキスト ok — fine “quoted” İstanbul ΟΔΟΣ",
    "emoji 🙂 in text 𝔘𝔫𝔦 and tabs\tand\nnewlines",
    "x" * 200 + " yy " + "z" * 70,  # shingles longer than one SHA-1 block
    "word " * 40,
]


def _datasketch(shingle_set: set[bytes], num_perm: int, seed: int) -> MinHash:
    m = MinHash(num_perm=num_perm, seed=seed)
    m.update_batch(sorted(shingle_set))
    return m


@pytest.mark.parametrize("unit,ngram", [("word", 1), ("word", 3), ("word", 5), ("char", 1), ("char", 4)])
@pytest.mark.parametrize("num_perm,seed", [(128, 1), (64, 7)])
def test_signatures_equal_datasketch(unit, ngram, num_perm, seed):
    sig = mh.signatures(TEXTS, num_perm=num_perm, ngram=ngram, seed=seed, unit=unit)
    assert sig.dtype == np.uint64 and sig.shape == (len(TEXTS), num_perm)
    for i, text in enumerate(TEXTS):
        ref = _datasketch(mh.shingles(text, ngram, unit), num_perm, seed)
        assert ref.scheme == "affine32"
        np.testing.assert_array_equal(sig[i], ref.hashvalues, err_msg=f"{unit}/{ngram} text {i}")


def test_signatures_random_corpus_equal_datasketch():
    rng = random.Random(3)
    words = ["alpha", "beta", "gamma", "delta", "éclair", "x", "yy", "zeta9", "_u"]
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(0, 60))) for _ in range(60)]
    sig = mh.signatures(texts)
    for i, text in enumerate(texts):
        np.testing.assert_array_equal(sig[i], _datasketch(mh.shingles(text, 3, "word"), 128, 1).hashvalues)


def test_lean_minhash_interop():
    sig = mh.signatures(TEXTS[:2])
    a = LeanMinHash(seed=1, hashvalues=sig[0], scheme="affine32")
    b = LeanMinHash(seed=1, hashvalues=sig[1], scheme="affine32")
    ref_b = _datasketch(mh.shingles(TEXTS[1]), 128, 1)
    assert b.jaccard(ref_b) == 1.0
    assert a.jaccard(b) == 1.0  # same normalised text
    # serialise/deserialise through datasketch's byte format
    buf = bytearray(a.bytesize())
    a.serialize(buf)
    back = LeanMinHash.deserialize(buf)
    np.testing.assert_array_equal(back.hashvalues, sig[0])
    # an LSH index built by datasketch accepts our signatures
    lsh = MinHashLSH(threshold=0.8, num_perm=128)
    lsh.insert("ref", ref_b)
    assert lsh.query(a) == ["ref"]


def test_shingles_and_normalisation():
    assert mh.shingles("The cat, the CAT!", 2) == {b"the cat", b"cat the"}
    assert mh.shingles("Tiny", 3) == {b"tiny"}  # shorter than n: the whole text
    assert mh.shingles("  ", 3) == set()
    assert mh.shingles("abcd", 3, "char") == {b"abc", b"bcd"}
    norm = mh.normalize(TEXTS).to_list()
    for text, got in zip(TEXTS, norm):
        ref = re.sub(r"\W+", " ", "".join(c.lower()[0] for c in text)).strip()
        assert got == ref
    with pytest.raises(ValueError):
        mh.shingles("x", 3, "sentence")


def test_batch_size_does_not_change_sketches():
    a = mh.sketch(TEXTS, batch_size=10_000)
    b = mh.sketch(TEXTS, batch_size=3)
    np.testing.assert_array_equal(a.sig, b.sig)
    np.testing.assert_array_equal(a.hashes, b.hashes)
    np.testing.assert_array_equal(a.hoffs, b.hoffs)


def test_lsh_params_are_datasketch_choice():
    for t, p in [(0.8, 128), (0.5, 64), (0.9, 256)]:
        lsh = MinHashLSH(threshold=t, num_perm=p)
        assert mh.lsh_params(t, p, 0.5) == (lsh.b, lsh.r)


def _jaccard(a: str, b: str) -> float:
    sa, sb = mh.shingles(a), mh.shingles(b)
    return len(sa & sb) / len(sa | sb)


def test_cross_matches_verified_exactly():
    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(400)]
    corpus = [" ".join(rng.choice(vocab) for _ in range(50)) for _ in range(200)]
    queries, planted = [], []
    for q in range(40):
        src = rng.randrange(len(corpus))
        words = corpus[src].split()
        edits = q % 8  # 0..7 substitutions: some above 0.8, some below
        for _ in range(edits):
            words[rng.randrange(len(words))] = rng.choice(vocab)
        queries.append(" ".join(words))
        planted.append(src)
    got = mh.cross_matches(queries, corpus, threshold=0.8)
    assert got.columns == ["query_idx", "corpus_idx", "jaccard"]
    pairs = {(q, c): j for q, c, j in got.iter_rows()}
    for (q, c), j in pairs.items():  # every reported pair is a true one, with its exact Jaccard
        assert j == pytest.approx(_jaccard(queries[q], corpus[c]))
        assert j >= 0.8
    truth = {(q, c) for q in range(len(queries)) for c in range(len(corpus))
             if _jaccard(queries[q], corpus[c]) >= 0.8}
    assert truth, "the test should plant pairs above the threshold"
    assert len(truth & set(pairs)) / len(truth) >= 0.95
    empty = mh.cross_matches([], corpus)
    assert empty.height == 0 and empty.columns == ["query_idx", "corpus_idx", "jaccard"]


def test_normalized_corpus_sketches_a_subset():
    corpus = mh.NormalizedCorpus(TEXTS, batch_size=3)
    rows = np.array([0, 1, 7, 9, 10])
    sub = corpus.sketch(rows)
    ref = mh.sketch([TEXTS[i] for i in rows])
    np.testing.assert_array_equal(sub.sig, ref.sig)
    np.testing.assert_array_equal(sub.hashes, ref.hashes)
    assert (corpus.fingerprint[0] == corpus.fingerprint[1]).all()  # same normalised text
    assert not (corpus.fingerprint[0] == corpus.fingerprint[4]).all()
    assert corpus.lengths[2] == 0 and corpus.lengths[3] == 0
