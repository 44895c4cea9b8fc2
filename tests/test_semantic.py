"""Semantic dedup: the kept-partner guarantee, agreement with a brute-force
greedy, determinism, keep policies, ledger, CLI, demo ground truth, and (slow)
paraphrases under the real all-MiniLM-L6-v2."""

from __future__ import annotations

import json
import random

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

from bakeoff.cli import cli
from bakeoff.curate.embeddings import embed_texts
from bakeoff.curate.semantic import SemanticDedupConfig, greedy_semantic, semantic_dedup_rows
from bakeoff.schema import conform, prompt_text, response_text, text_for_scope, with_ids
from bakeoff.workspace import BakeoffError

WORDS = ("revenue profit margin quarter table column total growth cost invoice amount due date client "
         "contract clause party term asset liability cash equity dividend tax rate share").split()


def make_rows(n_base: int = 120, seed: int = 0, extra: dict | None = None) -> pl.DataFrame:
    """Base texts plus light variants (a word appended or swapped): paraphrase-like
    neighbours at a range of similarities."""
    rng = random.Random(seed)
    texts, answers = [], []
    for b in range(n_base):
        base = " ".join(rng.choice(WORDS) for _ in range(14))
        texts.append(base)
        answers.append(f"answer {b % 7}")
        for _ in range(rng.choice([0, 0, 1, 2])):
            w = base.split()
            if rng.random() < 0.5:
                w.append(rng.choice(WORDS))
            else:
                w[rng.randrange(len(w))] = rng.choice(WORDS)
            texts.append(" ".join(w))
            answers.append(f"answer {b % 7}")  # a variant keeps its base's answer
    rows = [{"kind": "sft", "messages": [{"role": "user", "content": t},
                                         {"role": "assistant", "content": a}]}
            for t, a in zip(texts, answers)]
    df = with_ids(conform(pl.DataFrame(rows)))
    return df.with_columns(**(extra or {}))


def brute_force_greedy(vectors: np.ndarray, order: np.ndarray, threshold: float) -> np.ndarray:
    """The definition, all pairs: in order, a row is removed iff some already-kept row
    has cosine >= threshold with it; its partner is the most similar such row."""
    v = vectors.astype(np.float64)
    partner = np.full(len(v), -1)
    kept: list[int] = []
    for r in order:
        if kept:
            sims = v[kept] @ v[r]
            best = int(np.argmax(sims))  # first max = best-ranked among ties
            if sims[best] >= threshold:
                partner[r] = kept[best]
                continue
        kept.append(int(r))
    return partner


def test_guarantee_every_removed_row_has_a_kept_partner_above_threshold(ws):
    df = make_rows()
    cfg = SemanticDedupConfig(threshold=0.85, model="hashing")
    out = semantic_dedup_rows(df, cfg, ws=ws, show_progress=False)
    out.check_balance(df.height)
    led = out.ledger
    assert 0 < led.height < df.height
    assert set(led["stage"]) == {"dedup-semantic"} and set(led["rule"]) == {"cosine>=0.85"}
    kept_ids = set(out.rows["id"])
    assert kept_ids.isdisjoint(led["row_id"])
    assert set(led["kept_row_id"]) <= kept_ids          # the partner is itself kept
    assert (led["cluster_id"] == led["kept_row_id"]).all()
    # Recompute every ledger cosine independently: the lowest of the turns' cosines.
    def turn_cos(left, right, all_pairs=False):
        out = []
        for side in (prompt_text(), response_text()):
            texts = dict(zip(df["id"], df.select(side.alias("t"))["t"]))
            a = embed_texts([texts[i] for i in left], ws, model="hashing").astype(np.float64)
            b = embed_texts([texts[i] for i in right], ws, model="hashing").astype(np.float64)
            out.append(a @ b.T if all_pairs else np.einsum("ij,ij->i", a, b))
        return np.minimum(*out)
    cos = turn_cos(led["row_id"], led["kept_row_id"])
    assert (cos >= 0.85).all()
    np.testing.assert_allclose(cos, led["similarity"].to_numpy(), atol=1e-6)
    np.testing.assert_allclose(led["score"].to_numpy(), led["similarity"].to_numpy())
    # No two kept rows are duplicates of each other (the greedy is complete with a flat index).
    gram = turn_cos(out.rows["id"], out.rows["id"], all_pairs=True)
    np.fill_diagonal(gram, 0)
    assert gram.max() < 0.85


@pytest.mark.parametrize("keep", ["first", "longest"])
def test_matches_brute_force_greedy_and_is_deterministic(ws, keep):
    df = make_rows(seed=3)
    texts = df.select(text_for_scope("all"))["text"]
    vecs = embed_texts(texts.to_list(), ws, model="hashing")
    order = np.arange(df.height) if keep == "first" else np.lexsort((np.arange(df.height),
                                                                    -texts.str.len_chars().to_numpy()))
    expected = brute_force_greedy(vecs, order, 0.85)
    results = []
    for batch, index in ((1, "flat"), (7, "flat"), (100_000, "flat"), (64, "ivf")):
        cfg = SemanticDedupConfig(threshold=0.85, keep=keep, batch_size=batch, index=index,
                                  nprobe=10_000)  # ivf probing every cell is exact, so comparable
        partner, sim, _ = greedy_semantic(vecs, order, cfg, show_progress=False)
        results.append(partner)
    for partner in results:
        np.testing.assert_array_equal(partner, expected)
    a = semantic_dedup_rows(df, SemanticDedupConfig(threshold=0.85, keep=keep, model="hashing"), ws=ws)
    b = semantic_dedup_rows(df, SemanticDedupConfig(threshold=0.85, keep=keep, model="hashing", batch_size=5),
                            ws=ws)
    assert a.ledger.equals(b.ledger) and a.rows.equals(b.rows)


def test_ivf_with_few_probes_loses_recall_never_precision(ws):
    df = make_rows(n_base=400, seed=5)
    flat = semantic_dedup_rows(df, SemanticDedupConfig(threshold=0.85, model="hashing", index="flat"), ws=ws)
    ivf = semantic_dedup_rows(df, SemanticDedupConfig(threshold=0.85, model="hashing", index="ivf", nprobe=1),
                              ws=ws)
    assert ivf.report["search"]["index"].startswith("ivf")
    assert (ivf.ledger["similarity"] >= 0.85).all()
    assert set(ivf.ledger["kept_row_id"]) <= set(ivf.rows["id"])
    assert ivf.ledger.height >= 0.5 * flat.ledger.height


def test_keep_policies(ws):
    short = "quarterly revenue table for the northern region growth cost margin"
    long = short + " please"
    rows = [{"kind": "sft", "messages": [{"role": "user", "content": t}, {"role": "assistant", "content": "ok"}]}
            for t in (short, long)]
    df = with_ids(conform(pl.DataFrame(rows)))
    first = semantic_dedup_rows(df, SemanticDedupConfig(threshold=0.8, keep="first", model="hashing"), ws=ws)
    assert first.rows["id"].to_list() == [df["id"][0]]
    longest = semantic_dedup_rows(df, SemanticDedupConfig(threshold=0.8, keep="longest", model="hashing"), ws=ws)
    assert longest.rows["id"].to_list() == [df["id"][1]]
    scored = df.with_columns(quality=pl.Series([0.9, 0.1]))
    q = semantic_dedup_rows(scored, SemanticDedupConfig(threshold=0.8, keep="quality", model="hashing"), ws=ws)
    assert q.rows["id"].to_list() == [df["id"][0]]
    # The score may also live in `extra`.
    in_extra = df.with_columns(extra=pl.Series(['{"quality": 0.1}', '{"quality": 0.7}']))
    q2 = semantic_dedup_rows(in_extra, SemanticDedupConfig(threshold=0.8, keep="quality", model="hashing"), ws=ws)
    assert q2.rows["id"].to_list() == [df["id"][1]]
    with pytest.raises(BakeoffError, match="quality"):
        semantic_dedup_rows(df, SemanticDedupConfig(threshold=0.8, keep="quality", model="hashing"), ws=ws)
    with pytest.raises(BakeoffError):
        SemanticDedupConfig.from_dict({"threshold": 1.5})
    with pytest.raises(BakeoffError, match="unknown"):
        SemanticDedupConfig.from_dict({"treshold": 0.9})


def test_scope_and_empty_texts(ws):
    same_prompt = [{"kind": "sft", "messages": [{"role": "user", "content": "What was revenue in 2021?"},
                                                {"role": "assistant", "content": a}]}
                   for a in ("It was 10 million dollars.", "Completely different: the clause is void.")]
    prompts = [{"kind": "prompt", "messages": [{"role": "user", "content": p}]}
               for p in ("Summarise the contract.", "List the invoice fields.")]
    df = with_ids(conform(pl.DataFrame(same_prompt + prompts)))
    by_prompt = semantic_dedup_rows(df, SemanticDedupConfig(threshold=0.95, scope="prompt", model="hashing"), ws=ws)
    assert by_prompt.ledger["row_id"].to_list() == [df["id"][1]]
    # Prompt rows have no response: empty texts are never duplicates of each other.
    by_response = semantic_dedup_rows(df, SemanticDedupConfig(threshold=0.95, scope="response", model="hashing"),
                                      ws=ws)
    assert by_response.ledger.height == 0
    assert by_response.report["skipped_empty"] == 2


def test_cache_is_reused_across_runs(ws):
    df = make_rows(n_base=30)
    semantic_dedup_rows(df, SemanticDedupConfig(model="hashing"), ws=ws)
    again = semantic_dedup_rows(df, SemanticDedupConfig(model="hashing"), ws=ws)
    assert again.report["embeddings"]["computed"] == 0
    # every distinct turn text, embedded once and then read from the cache
    assert again.report["embeddings"]["cached"] == again.report["embeddings"]["unique"] >= df.height


def run(ws, *args):
    res = CliRunner().invoke(cli, ["--workspace", str(ws.root), *args], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res


def test_cli_writes_version_with_ledger_and_dry_run_writes_nothing(ws):
    df = make_rows(n_base=40)
    ws.commit_version("docs", df, operation="test")
    dry = json.loads(run(ws, "curate", "semantic", "docs@v1", "--threshold", "0.85", "--model", "hashing",
                         "--dry-run", "--json").stdout)
    assert dry["version"] is None and dry["removed"] > 0
    assert [v.ref for v in ws.versions("docs")] == ["docs@v1"]
    res = json.loads(run(ws, "curate", "semantic", "docs@v1", "--threshold", "0.85", "--model", "hashing",
                         "--keep", "longest", "--json").stdout)
    assert res["version"] == "docs@v2" and res["keep"] == "longest"
    v2 = ws.resolve("docs@v2")
    assert v2.operation == "dedup-semantic" and v2.params["threshold"] == 0.85
    led = ws.ledger(v2)
    assert led.height == res["removed"] and v2.rows + led.height == df.height
    human = run(ws, "curate", "semantic", "docs@v2", "--threshold", "0.85", "--model", "hashing", "--dry-run")
    assert "semantic dedup" in human.stdout
    bad = CliRunner().invoke(cli, ["--workspace", str(ws.root), "curate", "semantic", "nope@v1"])
    assert bad.exit_code != 0


def test_demo_planted_duplicates_are_found(ws):
    """On the demo's fin-train, the planted exact and near-duplicates are what
    semantic dedup removes (the hashing embedder at cosine 0.9)."""
    from bakeoff.demo_data import load_ground_truth, make_demo_workspace

    demo = make_demo_workspace(ws, scale=0.5)
    truth = [t for t in load_ground_truth(demo["ground_truth"])
             if t["dataset"] == "fin-train" and t["kind"] in ("exact-duplicate", "near-duplicate")]
    df = ws.load("fin-train")
    out = semantic_dedup_rows(df, SemanticDedupConfig(threshold=0.9, model="hashing"), ws=ws)
    removed_lines = set(df.filter(pl.col("id").is_in(out.ledger["row_id"].implode()))["source_line"])
    planted = {t["line"] for t in truth}
    assert planted, "the demo plants duplicates"
    recall = len(planted & removed_lines) / len(planted)
    precision = len(planted & removed_lines) / max(1, len(removed_lines))
    assert recall >= 0.9, (recall, sorted(planted - removed_lines))
    assert precision >= 0.8, (precision, sorted(removed_lines - planted))


@pytest.mark.slow
def test_minilm_detects_paraphrases(ws):
    pairs = [
        ("What was the company's total revenue in 2021?", "In 2021, what was the total revenue of the company?"),
        ("Extract the invoice number and the due date.", "Extract the due date and the invoice number."),
        ("Classify this contract clause into one category.", "Classify this clause of the contract into one category."),
    ]
    distinct = ["How many employees does the firm have?", "Translate the clause into French.",
                "What is the boiling point of water?"]
    texts = [t for p in pairs for t in p] + distinct
    rows = [{"kind": "sft", "messages": [{"role": "user", "content": t}, {"role": "assistant", "content": "ok"}]}
            for t in texts]
    df = with_ids(conform(pl.DataFrame(rows)))
    out = semantic_dedup_rows(df, SemanticDedupConfig(threshold=0.9, scope="prompt", model="all-MiniLM-L6-v2"),
                              ws=ws)
    ids = df["id"].to_list()
    removed = dict(zip(out.ledger["row_id"], out.ledger["kept_row_id"]))
    assert removed == {ids[1]: ids[0], ids[3]: ids[2], ids[5]: ids[4]}
    assert out.report["embeddings"]["computed"] == len(texts)


def test_different_numbers_are_never_semantic_duplicates(ws):
    """"$2.5 million" and "$2.6 million" embed almost alike; as answers to the same
    question they are different rows (so are questions about 2018 and 2019)."""
    q = "What was the revenue of the segment?"
    df = with_ids(conform(pl.DataFrame({"kind": "sft", "messages": [
        [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        for a in ("$2.5 million", "$2.6 million", "$2.5 million.")]})))
    out = semantic_dedup_rows(df, SemanticDedupConfig(threshold=0.5, model="hashing"), ws=ws, show_progress=False)
    assert out.ledger["row_id"].to_list() == [df["id"][2]]  # only the same answer again
