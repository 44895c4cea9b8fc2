"""Decontamination: is a test item (nearly) a training row?

Every test item is checked against the training version with four signals:

- ``exact``     its id (a content hash) or its normalised text equals a training row's;
- ``ngram``     the longest word n-gram it shares with any training row
                (flagged at 13 words, reported from 8 — the GPT-3 / PaLM convention);
- ``minhash``   MinHash Jaccard of word-shingle sets (flagged at >= 0.8), LSH
                candidates verified exactly (``bakeoff.curate.minhash.cross_matches``);
- ``embedding`` cosine to the nearest training row (reported always, flagged above
                ``cosine_flag``, 0.95 by default) via a faiss inner-product index.

Text checked: every non-system turn of the conversation (prompt and answer) plus
the chosen answer of preference rows. System prompts are left out by default: a
shared instruction template is not contamination, and 13 words of it would flag
every item.

For the same reason n-grams that occur in many training rows (more than
``max(boilerplate_min_docs, boilerplate_frac × rows)``) count as template
boilerplate, not as shared content: a verbatim copy of a training row still shares
its row-specific n-grams, while two rows that only share "Using the table below,
answer the following question ..." do not.

The n-gram signal is vectorized: words become 64-bit hashes (polars), every
n-gram of every row gets a polynomial rolling hash computed from prefix sums in
numpy (``H(i,n) = (Q[i+n] - Q[i]) · B^-i`` mod 2^64, B odd so it is invertible),
training n-grams are sorted once per n and test n-grams looked up with
``searchsorted``. The longest shared length per item is a binary search over n,
done for all items at once, round by round (items that share no 8-gram skip it).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import polars as pl

from bakeoff.console import log
from bakeoff.workspace import Workspace

SIGNALS = ("exact", "ngram", "minhash", "embedding")

_B = np.uint64(0x9E3779B97F4A7C15)  # odd: invertible mod 2^64
_B_INV = np.uint64(pow(int(_B), -1, 1 << 64))
_TOKEN_SEED = 0x5EED


@dataclass
class DecontamConfig:
    """Thresholds of the contamination check."""

    ngram_flag: int = 13
    ngram_report: int = 8
    ngram_cap: int = 256              # longest lengths are exact up to this many words
    boilerplate_frac: float = 0.01
    boilerplate_min_docs: int = 10
    minhash_threshold: float = 0.8
    minhash_ngram: int = 3
    num_perm: int = 128
    cosine_flag: float = 0.95
    embedding_model: str | None = None
    include_system: bool = False
    signals: tuple[str, ...] = SIGNALS

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ContaminationResult:
    """``items``: one row per test item (input order) with every signal's score and
    training match; ``flagged``: the items at least one signal flags."""

    items: pl.DataFrame
    config: DecontamConfig
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def flagged(self) -> pl.DataFrame:
        return self.items.filter(pl.col("flagged"))


# --- text ---------------------------------------------------------------------------

def item_text(include_system: bool = False) -> pl.Expr:
    """The text of a row that contamination is judged on (see module docstring)."""
    roles = ["user", "assistant", "tool"] + (["system"] if include_system else [])

    def join(col: str, filt: bool) -> pl.Expr:
        msgs = pl.col(col)
        if filt:
            msgs = msgs.list.eval(pl.element().filter(pl.element().struct.field("role").is_in(roles)))
        return msgs.list.eval(pl.element().struct.field("content")).list.join("\n").fill_null("")

    return pl.concat_str([join("messages", True), join("chosen", False)], separator="\n") \
        .str.strip_chars().alias("text")


def normalised_text(expr: pl.Expr) -> pl.Expr:
    """Lower-case, words only, single spaces: equal for trivially different copies."""
    return expr.str.to_lowercase().str.replace_all(r"[^\w]+", " ").str.strip_chars()


def base_id(expr: pl.Expr) -> pl.Expr:
    """A row id without its ``~N`` duplicate suffix: the content hash itself."""
    return expr.str.replace(r"~\d+$", "")


# --- hashed word n-grams --------------------------------------------------------------

class _Tokens:
    """Rows as one flat array of 64-bit word hashes plus row offsets, with the
    prefix sums that give any n-gram's rolling hash in O(1)."""

    def __init__(self, texts: pl.Series):
        words = texts.fill_null("").str.to_lowercase().str.extract_all(r"\w+")
        self.lengths = words.list.len().fill_null(0).to_numpy().astype(np.int64)
        flat = words.explode().drop_nulls()
        tok = flat.hash(seed=_TOKEN_SEED).to_numpy().astype(np.uint64) if flat.len() else np.zeros(0, np.uint64)
        self.starts = np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64) \
            if self.lengths.size else np.zeros(0, np.int64)
        self.ends = self.starts + self.lengths
        self.doc = np.repeat(np.arange(self.lengths.size, dtype=np.int64), self.lengths)
        n = tok.size
        with np.errstate(over="ignore"):
            pw = np.cumprod(np.full(n, _B, dtype=np.uint64)) if n else np.zeros(0, np.uint64)
            pw = np.concatenate([[np.uint64(1)], pw[:-1]]) if n else pw          # B^i
            ipw = np.cumprod(np.full(n, _B_INV, dtype=np.uint64)) if n else np.zeros(0, np.uint64)
            self.inv_pow = np.concatenate([[np.uint64(1)], ipw[:-1]]) if n else ipw  # B^-i
            self.prefix = np.concatenate([[np.uint64(0)], np.cumsum(tok * pw, dtype=np.uint64)])

    def positions(self, n: int, docs: np.ndarray | None = None) -> np.ndarray:
        """Start positions of every n-gram (of the given rows only, if ``docs``)."""
        if docs is None:
            return np.nonzero(np.arange(self.doc.size) + n <= self.ends[self.doc])[0]
        counts = np.maximum(self.lengths[docs] - n + 1, 0)
        if counts.sum() == 0:
            return np.zeros(0, np.int64)
        offs = np.repeat(self.starts[docs], counts)
        within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        return offs + within

    def hashes(self, pos: np.ndarray, n: int) -> np.ndarray:
        with np.errstate(over="ignore"):
            return (self.prefix[pos + n] - self.prefix[pos]) * self.inv_pow[pos]


class _NgramIndex:
    """Training n-grams of one length: sorted distinct hashes, the number of rows
    holding each (document frequency) and one row that does. Built lazily per n."""

    def __init__(self, tokens: _Tokens, max_df: int):
        self.tokens = tokens
        self.max_df = max_df
        self._cache: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def at(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if n not in self._cache:
            pos = self.tokens.positions(n)
            h = self.tokens.hashes(pos, n)
            d = self.tokens.doc[pos]
            order = np.lexsort((d, h))
            h, d = h[order], d[order]
            # one (hash, row) pair per row, then per hash: df and the first row
            keep = np.ones(h.size, bool)
            keep[1:] = (h[1:] != h[:-1]) | (d[1:] != d[:-1])
            h, d = h[keep], d[keep]
            uniq, first, df = np.unique(h, return_index=True, return_counts=True)
            self._cache[n] = (uniq, df, d[first])
        return self._cache[n]

    def lookup(self, hashes: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """For each hash: shared (and not boilerplate)? and a training row holding it."""
        uniq, df, doc = self.at(n)
        if uniq.size == 0 or hashes.size == 0:
            return np.zeros(hashes.size, bool), np.full(hashes.size, -1, np.int64)
        idx = np.clip(np.searchsorted(uniq, hashes), 0, uniq.size - 1)
        hit = (uniq[idx] == hashes) & (df[idx] <= self.max_df)
        return hit, np.where(hit, doc[idx], -1)


def _any_hit(test: _Tokens, index: _NgramIndex, docs: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """For the given test rows: shares a (non-boilerplate) n-gram? and with which training row."""
    found = np.zeros(docs.size, bool)
    match = np.full(docs.size, -1, np.int64)
    pos = test.positions(n, docs)
    if pos.size == 0:
        return found, match
    hit, tdoc = index.lookup(test.hashes(pos, n), n)
    local = np.searchsorted(docs, test.doc[pos])  # docs is sorted
    found[np.unique(local[hit])] = True
    # the first matching position's training row per test row
    hl, ht = local[hit], tdoc[hit]
    if hl.size:
        first = np.unique(hl, return_index=True)[1]
        match[hl[first]] = ht[first]
    return found, match


def longest_shared_ngram(test_texts: pl.Series, train_texts: pl.Series, config: DecontamConfig,
                         ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Per test text: length of the longest word n-gram it shares with any training
    text (0 when below ``ngram_report``), and the training index holding it (-1)."""
    test, train = _Tokens(test_texts), _Tokens(train_texts)
    n_train = int(train.lengths.size)
    max_df = max(config.boilerplate_min_docs, int(np.ceil(config.boilerplate_frac * n_train)))
    index = _NgramIndex(train, max_df)
    n_items = int(test.lengths.size)
    length = np.zeros(n_items, np.int64)
    match = np.full(n_items, -1, np.int64)
    base = config.ngram_report
    docs = np.arange(n_items, dtype=np.int64)
    found, m = _any_hit(test, index, docs, base)
    cand = docs[found]
    lo = np.full(cand.size, base, np.int64)
    hi = np.minimum(test.lengths[cand], config.ngram_cap)
    best = m[found]
    rounds = 0
    while cand.size and np.any(lo < hi):
        rounds += 1
        mid = (lo + hi + 1) // 2
        active = lo < hi
        for n in np.unique(mid[active]):
            sel = np.nonzero(active & (mid == n))[0]
            ok, mm = _any_hit(test, index, cand[sel], int(n))
            lo[sel[ok]] = n
            best[sel[ok]] = mm[ok]
            hi[sel[~ok]] = n - 1
    length[cand] = lo
    match[cand] = best
    info = {"boilerplate_max_df": max_df, "ngram_lengths_indexed": len(index._cache),
            "search_rounds": rounds}
    return length, match, info


# --- MinHash ------------------------------------------------------------------------------

def minhash_matches(test_texts: list[str], train_texts: list[str], config: DecontamConfig,
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Per test text: best MinHash-verified Jaccard >= threshold with a training text
    (0 when none) and that training index (-1)."""
    from bakeoff.curate.minhash import cross_matches

    jac = np.zeros(len(test_texts), np.float64)
    match = np.full(len(test_texts), -1, np.int64)
    if not test_texts or not train_texts:
        return jac, match
    pairs = cross_matches(test_texts, train_texts, threshold=config.minhash_threshold,
                          num_perm=config.num_perm, ngram=config.minhash_ngram, unit="word")
    if pairs.height:
        best = (pairs.sort(["query_idx", "jaccard", "corpus_idx"], descending=[False, True, False])
                .unique("query_idx", keep="first", maintain_order=True))
        q = best["query_idx"].to_numpy().astype(np.int64)
        jac[q] = best["jaccard"].to_numpy()
        match[q] = best["corpus_idx"].to_numpy().astype(np.int64)
    return jac, match


# --- embeddings ---------------------------------------------------------------------------

def nearest_neighbours(queries: np.ndarray, corpus: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Cosine (inner product of normalised rows) to the k nearest corpus rows, via faiss."""
    import faiss

    if corpus.shape[0] == 0 or queries.shape[0] == 0:
        return (np.zeros((queries.shape[0], k), np.float32), np.full((queries.shape[0], k), -1, np.int64))
    index = faiss.IndexFlatIP(corpus.shape[1])
    index.add(np.ascontiguousarray(corpus, dtype=np.float32))
    sims, idx = index.search(np.ascontiguousarray(queries, dtype=np.float32), min(k, corpus.shape[0]))
    return sims, idx


# --- the check ------------------------------------------------------------------------------

def check_contamination(test: pl.DataFrame, train: pl.DataFrame, config: DecontamConfig | None = None,
                        ws: Workspace | None = None, *, test_emb: np.ndarray | None = None,
                        train_emb: np.ndarray | None = None) -> ContaminationResult:
    """Check every row of ``test`` against ``train`` (both in the row schema).

    Embeddings can be passed in when the caller already has them (the builder does,
    for domain similarity); otherwise they are computed with ``embed_texts``.
    """
    config = config or DecontamConfig()
    unknown = set(config.signals) - set(SIGNALS)
    if unknown:
        raise ValueError(f"unknown contamination signals {sorted(unknown)}; known: {SIGNALS}")
    text = item_text(config.include_system)
    t = test.select(pl.col("id"), text)
    r = train.select(pl.col("id"), text)
    n = t.height
    train_ids = r["id"]

    cols: dict[str, Any] = {"id": t["id"]}
    # exact: id (content hash, ignoring the ~N copy suffix) or normalised text
    exact = np.full(n, -1, np.int64)
    if "exact" in config.signals and n and r.height:
        rk = r.with_row_index("_j").select(
            "_j", base_id(pl.col("id")).alias("bid"), normalised_text(pl.col("text")).alias("norm"))
        tk = t.with_row_index("_i").select(
            "_i", base_id(pl.col("id")).alias("bid"), normalised_text(pl.col("text")).alias("norm"))
        by_id = tk.join(rk.select("bid", "_j").unique("bid", keep="first"), on="bid", how="inner")
        by_text = tk.filter(pl.col("norm") != "").join(
            rk.select("norm", "_j").unique("norm", keep="first"), on="norm", how="inner")
        for hits in (by_text, by_id):  # id matches win
            exact[hits["_i"].to_numpy()] = hits["_j"].to_numpy()

    ngram_len = np.zeros(n, np.int64)
    ngram_match = np.full(n, -1, np.int64)
    info: dict[str, Any] = {}
    if "ngram" in config.signals and n and r.height:
        log(f"decontaminate: longest shared word n-grams of {n} items vs {r.height} training rows")
        ngram_len, ngram_match, info = longest_shared_ngram(t["text"], r["text"], config)

    jac = np.zeros(n)
    jac_match = np.full(n, -1, np.int64)
    if "minhash" in config.signals and n and r.height:
        log("decontaminate: MinHash Jaccard (LSH candidates, verified)")
        jac, jac_match = minhash_matches(t["text"].to_list(), r["text"].to_list(), config)

    cos = np.full(n, np.nan)
    cos_match = np.full(n, -1, np.int64)
    if "embedding" in config.signals and n and r.height:
        from bakeoff.curate.embeddings import embed_texts

        if test_emb is None:
            test_emb = embed_texts(t["text"].to_list(), ws=ws, model=config.embedding_model)
        if train_emb is None:
            train_emb = embed_texts(r["text"].to_list(), ws=ws, model=config.embedding_model)
        sims, idx = nearest_neighbours(test_emb, train_emb, k=1)
        cos, cos_match = sims[:, 0].astype(np.float64), idx[:, 0].astype(np.int64)

    def ids_of(ix: np.ndarray) -> pl.Series:
        """Training ids at indices ``ix`` (null where -1)."""
        if not n or not r.height:
            return pl.Series([None] * n, dtype=pl.String)
        picked = train_ids.gather(np.where(ix >= 0, ix, 0))
        return pl.select(pl.when(pl.Series(ix >= 0)).then(picked)).to_series()

    flags = {
        "exact": exact >= 0,
        "ngram": ngram_len >= config.ngram_flag,
        "minhash": jac >= config.minhash_threshold,
        "embedding": np.nan_to_num(cos, nan=-1.0) >= config.cosine_flag,
    }
    items = pl.DataFrame({
        "id": t["id"],
        "exact_train_id": ids_of(exact),
        "ngram_len": ngram_len,
        "ngram_train_id": ids_of(ngram_match),
        "minhash_jaccard": np.round(jac, 4),
        "minhash_train_id": ids_of(jac_match),
        "cosine": np.round(cos, 4),
        "cosine_train_id": ids_of(cos_match),
    })
    flag_df = pl.DataFrame({k: v for k, v in flags.items()}) if n else pl.DataFrame(
        {k: pl.Series([], dtype=pl.Boolean) for k in flags})
    items = pl.concat([items, flag_df.rename({k: f"_{k}" for k in flags})], how="horizontal")
    items = items.with_columns(
        pl.concat_list([pl.when(pl.col(f"_{k}")).then(pl.lit(k)) for k in SIGNALS])
        .list.drop_nulls().alias("signals"),
    ).with_columns(
        (pl.col("signals").list.len() > 0).alias("flagged"),
        # the training row to show beside a flagged item: the strongest signal's match
        pl.coalesce("exact_train_id",
                    pl.when(pl.col("_ngram")).then("ngram_train_id"),
                    pl.when(pl.col("_minhash")).then("minhash_train_id"),
                    pl.when(pl.col("_embedding")).then("cosine_train_id"),
                    pl.when(pl.col("ngram_len") > 0).then("ngram_train_id"))
        .alias("train_match_id"),
    ).drop([f"_{k}" for k in flags])

    flagged = items.filter("flagged")
    by_signal = {k: int(flags[k].sum()) for k in SIGNALS if k in config.signals}
    summary = {
        "items": n,
        "training_rows": r.height,
        "flagged": flagged.height,
        "flagged_by_signal": by_signal,
        "reported_ngram": int(((ngram_len >= config.ngram_report) & (ngram_len < config.ngram_flag)).sum()),
        "cosine_mean": None if not n or np.all(np.isnan(cos)) else round(float(np.nanmean(cos)), 4),
        "ngram_index": info,
        "config": config.to_dict(),
    }
    return ContaminationResult(items=items, config=config, summary=summary)


def flagged_records(result: ContaminationResult, test: pl.DataFrame, train: pl.DataFrame,
                    limit: int | None = None, snippet: int = 200) -> list[dict[str, Any]]:
    """Flagged (and n-gram-reported) items with their training match, for reports."""
    cfg = result.config
    shown = result.items.filter(pl.col("flagged") | (pl.col("ngram_len") >= cfg.ngram_report))
    shown = shown.sort(["flagged", "ngram_len", "minhash_jaccard"], descending=True, nulls_last=True)
    if limit is not None:
        shown = shown.head(limit)
    text = item_text(cfg.include_system)
    t_text = dict(test.select("id", text).iter_rows())
    r_text = dict(train.select("id", text).iter_rows()) if shown.height else {}

    def cut(s: str | None) -> str:
        s = re.sub(r"\s+", " ", s or "").strip()
        return s if len(s) <= snippet else s[: snippet - 1] + "…"

    records = []
    for row in shown.iter_rows(named=True):
        records.append({
            "id": row["id"], "flagged": row["flagged"], "signals": row["signals"],
            "ngram_len": row["ngram_len"], "minhash_jaccard": row["minhash_jaccard"],
            "cosine": row["cosine"], "train_match_id": row["train_match_id"],
            "text": cut(t_text.get(row["id"])), "train_text": cut(r_text.get(row["train_match_id"])),
        })
    return records


def contamination_json(row: dict[str, Any]) -> str:
    """The ``contamination`` column of a kept-but-flagged item."""
    return json.dumps({k: row[k] for k in ("signals", "ngram_len", "minhash_jaccard", "cosine",
                                          "train_match_id")}, default=str)


# --- checking an existing test set -------------------------------------------------------

def check_testset(ws: Workspace, testset_ref: str, train_ref: str, config: DecontamConfig | None = None,
                  html: str | None = None) -> dict[str, Any]:
    """Run the contamination check on any test set version against a training
    version — also a hand-written one brought in with ``data ingest`` (no slice,
    reference or scoring columns needed: the text checked is the conversation).

    Returns a JSON-ready report: ``flagged`` lists each flagged item id with the
    signal(s) that flagged it and its training match; ``items`` the flagged and
    n-gram-reported items with text snippets. ``html``: path, "auto" or None.
    """
    config = config or DecontamConfig()
    test_v, train_v = ws.resolve(testset_ref), ws.resolve(train_ref)
    test, train = ws.load(test_v), ws.load(train_v)
    result = check_contamination(test, train, config, ws)
    flagged = result.flagged
    report: dict[str, Any] = {
        "testset": test_v.ref, "train": train_v.ref,
        "summary": {k: v for k, v in result.summary.items() if k != "config"},
        "config": config.to_dict(),
        "flagged": [
            {"id": r["id"], "signals": r["signals"], "train_match_id": r["train_match_id"],
             "ngram_len": r["ngram_len"], "minhash_jaccard": r["minhash_jaccard"], "cosine": r["cosine"]}
            for r in flagged.iter_rows(named=True)],
        "items": flagged_records(result, test, train),
    }
    if "slice" in test.columns and flagged.height:
        report["flagged_by_slice"] = dict(
            test.join(flagged.select("id"), on="id").group_by("slice").len().iter_rows())
    if html:
        from bakeoff.testsets.report import write_check_html

        report["html"] = str(write_check_html(ws, report, None if html == "auto" else html))
    return report
