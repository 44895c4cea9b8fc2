"""Embeddings: shape and normalisation, the content-addressed cache, batching."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bakeoff.curate import embeddings as E


@pytest.fixture
def calls(monkeypatch):
    """Count model calls (and texts sent) of the hashing embedder."""
    seen: list[int] = []
    original = E.HashingEmbedder.encode

    def counting(self, texts):
        seen.append(len(texts))
        return original(self, texts)

    monkeypatch.setattr(E.HashingEmbedder, "encode", counting)
    return seen


TEXTS = ["The revenue grew by 12% in Q3.", "Revenue grew 12 percent in the third quarter.",
         "Please extract the invoice number.", "", "The revenue grew by 12% in Q3."]


def test_shape_dtype_norm_and_determinism(ws):
    v = E.embed_texts(TEXTS, ws, model="hashing")
    assert v.shape == (5, 384) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(v[0], v[4])  # identical texts, identical vectors
    # Related texts are closer than unrelated ones.
    assert v[0] @ v[1] > v[0] @ v[2]
    # Deterministic across processes' worth of state: a fresh embedder agrees.
    again = E.HashingEmbedder().encode(TEXTS)
    np.testing.assert_allclose(v, again, atol=1e-6)


def test_default_model_comes_from_env(ws, monkeypatch):
    monkeypatch.setenv(E.ENV_MODEL, "hashing")
    assert E.resolve_model_name(None) == "hashing"
    monkeypatch.delenv(E.ENV_MODEL)
    assert E.resolve_model_name(None) == "all-MiniLM-L6-v2"


def test_second_call_computes_nothing(ws, calls):
    first = E.embed_texts(TEXTS, ws, model="hashing")
    assert sum(calls) == 4  # the duplicate text is embedded once
    assert E.last_stats.computed == 4 and E.last_stats.cached == 0
    calls.clear()
    second = E.embed_texts(list(reversed(TEXTS)), ws, model="hashing")
    assert calls == []
    assert E.last_stats.computed == 0 and E.last_stats.cached == 4
    np.testing.assert_array_equal(second, first[::-1])


def test_only_new_texts_are_computed_and_cache_is_per_model(ws, calls):
    E.embed_texts(TEXTS[:2], ws, model="hashing")
    calls.clear()
    E.embed_texts(TEXTS, ws, model="hashing")
    assert sum(calls) == 2  # "" and the invoice text; the rest came from the cache
    keys_a = E.cache_keys(["x"], "hashing")[0]
    keys_b = E.cache_keys(["x"], "other-model")[0]
    assert keys_a != keys_b
    import hashlib
    assert keys_a == hashlib.sha256("hashing\x00x".encode()).hexdigest()
    shard_dir = ws.root / "cache" / "embeddings" / "hashing"
    assert shard_dir.is_dir() and list(shard_dir.glob("shard-*.parquet"))
    assert not list(shard_dir.glob(".*"))  # no temp files left behind


def test_batches_respect_batch_size(ws, calls):
    texts = [f"row {i} of the table" for i in range(25)]
    v = E.embed_texts(texts, ws, model="hashing", batch_size=10)
    assert sorted(calls, reverse=True) == [10, 10, 5]
    assert v.shape == (25, 384)


def test_without_workspace_nothing_is_cached(calls):
    E.embed_texts(TEXTS, None, model="hashing")
    E.embed_texts(TEXTS, None, model="hashing")
    assert sum(calls) == 8


def test_compaction_keeps_every_vector(ws, monkeypatch):
    monkeypatch.setattr(E, "COMPACT_AT", 3)
    texts = [f"text number {i}" for i in range(12)]
    for i in range(0, 12, 2):  # six writes -> compaction kicks in
        E.embed_texts(texts[i:i + 2], ws, model="hashing")
    shard_dir = ws.root / "cache" / "embeddings" / "hashing"
    assert len(list(shard_dir.glob("shard-*.parquet"))) <= 3
    v = E.embed_texts(texts, ws, model="hashing")
    assert E.last_stats.computed == 0
    np.testing.assert_allclose(v, E.HashingEmbedder().encode(texts), atol=1e-6)


def test_concurrent_writers_share_one_cache(ws, monkeypatch):
    """Threads filling the same cache (with compaction racing) lose nothing."""
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setattr(E, "COMPACT_AT", 2)
    texts = [f"shared text {i}" for i in range(60)]
    chunks = [texts[i:i + 20] for i in range(0, 60, 10)]  # overlapping slices
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda c: E.embed_texts(c, ws, model="hashing", batch_size=5), chunks))
    expected = E.HashingEmbedder().encode(texts)
    for i, r in enumerate(results):
        np.testing.assert_allclose(r, expected[i * 10:i * 10 + 20], atol=1e-6)
    E.embed_texts(texts, ws, model="hashing")
    assert E.last_stats.computed == 0


def test_empty_input(ws):
    assert E.embed_texts([], ws, model="hashing").shape == (0, 384)


def test_minilm_resolves_to_the_offline_package():
    path = Path(E.model_path("all-MiniLM-L6-v2"))
    assert (path / "modules.json").exists() and (path / "model.safetensors").exists()
    assert E.model_path("sentence-transformers/all-MiniLM-L6-v2") == str(path)


@pytest.mark.slow
def test_minilm_offline_embeds_and_caches(ws, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    v = E.embed_texts(["How much revenue did we make?", "What were our total sales?",
                       "The cat is asleep on the sofa."], ws, model="all-MiniLM-L6-v2")
    assert v.shape == (3, 384)
    assert v[0] @ v[1] > 0.5 > v[0] @ v[2]
    E.embed_texts(["What were our total sales?"], ws, model="all-MiniLM-L6-v2")
    assert E.last_stats.computed == 0
