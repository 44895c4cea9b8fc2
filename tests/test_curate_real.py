"""Curation on real data: the default recipe on the public files in ../shared/data
(skipped where absent), defects planted into real rows, and near-dedup recall on
real near-duplicates (Debian package descriptions) against a brute-force check.

What the numbers mean and the hand-judged precision per filter are in README
"Curation on real data".
"""

from __future__ import annotations

import copy
import json
import random
import re
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

import polars as pl
import pytest

from bakeoff import demo_data
from bakeoff.curate import filters as F
from bakeoff.curate.dedup import DedupConfig, dedup_rows
from bakeoff.curate.ingest import ingest
from bakeoff.curate.recipe import default_recipe_path, load_recipe, run_recipe
from bakeoff.schema import conform, with_ids

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def need(name: str) -> Path:
    p = DATA / name
    if not p.exists():
        pytest.skip(f"{p} not present (the real data lives in ../shared/data)")
    return p


def _recipe_run(ws, path: Path, name: str):
    res = ingest(ws, [path], name)
    out = run_recipe(ws, res.version, load_recipe(default_recipe_path()))
    return ws.load(res.version), out, ws.ledger(out.version.ref)


# --- the default recipe on the real files -----------------------------------------------

def test_tatqa_default_recipe_keeps_the_corpus(ws):
    """TAT-QA has no real noise: several questions share each table, and extractive
    answers are copied from it. The recipe keeps >= 97 %."""
    df, out, ledger = _recipe_run(ws, need("tatqa_dev.jsonl"), "tatqa")
    assert df.height == 1668
    assert out.version.rows >= 0.97 * df.height, ledger.group_by("stage", "rule").len()
    # what it removes is a duplicate in every turn: same question and answer about the same table
    dup = ledger.filter(pl.col("stage").str.starts_with("dedup"))
    assert dup.height == ledger.filter(pl.col("stage") != "filter").height
    for row in ledger.iter_rows(named=True):
        assert "reason" in json.loads(row["detail"]) or json.loads(row["detail"]).get("filters")


def test_tatqa_coverage_finds_the_arithmetic_behind_the_qa_label(ws):
    """Every TAT-QA row is labelled task=qa; 718 of them are arithmetic questions
    (meta.answer_type). The coverage report finds most of them from the question."""
    from bakeoff.curate.coverage import assign_rows, load_objectives

    df = ws.load(ingest(ws, [need("tatqa_dev.jsonl")], "tatqa").version)
    a = assign_rows(df, load_objectives("demo_objectives.yaml"), ws, model="hashing")
    truth = df.select(pl.col("extra").str.json_path_match("$.meta.answer_type"))["extra"]
    found = (a["task"] == "arithmetic")
    recall = (found & (truth == "arithmetic")).sum() / (truth == "arithmetic").sum()
    precision = (found & (truth == "arithmetic")).sum() / found.sum()
    assert recall >= 0.85 and precision >= 0.8, (recall, precision)


def _normalised_exact_groups(df: pl.DataFrame) -> int:
    """Rows that repeat an earlier row's every turn (after lowercasing and
    collapsing punctuation): what exact dedup must remove."""
    seen, dups = set(), 0
    for row in df.iter_rows(named=True):
        turns = [m["content"] for m in row["messages"]] + [m["content"] for m in row["chosen"] or []] \
            + [m["content"] for m in row["rejected"] or []]
        key = tuple(" ".join(re.sub(r"\W+", " ", t.lower()).split()) for t in turns)
        dups += key in seen
        seen.add(key)
    return dups


_REFUSAL_WORDS = re.compile(r"(?i)\b(as an ai|an ai|language model|sorry|apologi[sz]e|unfortunately|cannot|can't|unable)\b")


@pytest.mark.parametrize("name", ["alpaca_en_demo.json", "dpo_en_demo.json"])
def test_alpaca_and_dpo_lose_only_real_duplicates_and_defects(ws, name):
    """Only real exact duplicates, real refusals and real cut-off answers go;
    each kind was hand-judged (README)."""
    df, out, ledger = _recipe_run(ws, need(name), name.split("_")[0])
    rules = dict(ledger.group_by("rule").len().iter_rows())
    assert set(rules) <= {"exact-normalized", "refusal", "truncated"}, rules
    # exact duplicates: exactly the rows that repeat every turn of an earlier row (of
    # those the filters kept)
    filtered = ledger.filter(pl.col("stage") == "filter")["row_id"]
    assert rules.get("exact-normalized", 0) == _normalised_exact_groups(df.filter(~pl.col("id").is_in(filtered.implode())))
    removed = df.join(ledger.select(pl.col("row_id").alias("id"), "rule"), on="id")
    answers = removed.select("rule", pl.coalesce(pl.col("chosen").list.last().struct.field("content"),
                                                 pl.col("messages").list.last().struct.field("content")).alias("a"))
    for rule, a in answers.iter_rows():
        if rule == "refusal":
            assert _REFUSAL_WORDS.search(a), a
        if rule == "truncated":  # ends without an end mark, or inside a code block
            assert a.rstrip()[-1] not in ".!?" or a.count("```") % 2 == 1, a
    assert rules.get("truncated", 0) <= 5 and out.version.rows >= 0.95 * df.height


# --- defects planted into real rows ---------------------------------------------------------

def _real_rows(n: int, seed: int = 0) -> list[list[dict]]:
    """Conversations from the real files (TAT-QA and Alpaca), as message lists."""
    rows = []
    for line in need("tatqa_dev.jsonl").read_text(encoding="utf-8").splitlines():
        rows.append(json.loads(line)["messages"])
    for rec in json.loads(need("alpaca_en_demo.json").read_text(encoding="utf-8")):
        user = rec["instruction"] + ("\n\n" + rec["input"] if rec["input"] else "")
        rows.append([{"role": "user", "content": user}, {"role": "assistant", "content": rec["output"]}])
    rng = random.Random(seed)
    return rng.sample(rows, n)


def test_planted_defects_in_real_rows_are_caught():
    """Every filter kind of the one noise table (bakeoff.demo_data.NOISE), planted
    into 40 real rows each, caught with recall >= 0.95 per kind by the default
    filters (off-by-default filters switched on); the same rows undamaged are not hit."""
    kinds = {k: nk for k, nk in demo_data.NOISE.items() if nk.caught_by.startswith("filter:")}
    per_kind = 40
    base = _real_rows(per_kind * (len(kinds) + 1), seed=1)
    rng = random.Random(7)
    convs, truth = [], []
    for k, (kind, nk) in enumerate(kinds.items()):
        for i in range(per_kind):
            msgs = copy.deepcopy(base[k * per_kind + i])
            nk.plant(rng, msgs, i)
            convs.append(msgs)
            truth.append(kind)
    clean = base[len(kinds) * per_kind:]
    df = with_ids(conform(pl.DataFrame({"kind": ["sft"] * (len(convs) + len(clean)),
                                        "messages": convs + clean})))
    cfg = F.FilterSuiteConfig.from_dict({name: {"enabled": True} for name in F.FILTERS})
    frame, _ = F.detect(df, cfg)
    recall = defaultdict(list)
    for kind, hit in zip(truth, frame.head(len(convs)).iter_rows(named=True)):
        recall[kind].append(hit[f"{kinds[kind].caught_by.removeprefix('filter:')}.hit"])
    low = {k: sum(v) / len(v) for k, v in recall.items() if sum(v) / len(v) < 0.95}
    assert not low, low
    # the clean real rows: no filter but the structural ones may hit
    hit_cols = [c for c in frame.columns if c.endswith(".hit")]
    clean_hits = frame.tail(len(clean)).select(pl.any_horizontal(hit_cols)).to_series()
    assert clean_hits.sum() <= 1, frame.tail(len(clean)).filter(clean_hits).select("_r").to_series().to_list()


def test_mojibake_in_real_rows_is_repaired_not_dropped():
    base = _real_rows(30, seed=3)
    rng = random.Random(0)
    damaged = copy.deepcopy(base)
    for i, msgs in enumerate(damaged):
        demo_data.NOISE["mojibake"].plant(rng, msgs, i)
    df = with_ids(conform(pl.DataFrame({"kind": ["sft"] * len(damaged), "messages": damaged})))
    out = F.filter_rows(df, F.FilterSuiteConfig.from_dict({"control": {"action": "drop"}}))
    # repaired, and control judged the repaired text (C1 characters of the mojibake gone)
    assert not set(out.ledger["rule"]) & {"mojibake", "control"}
    rep = out.report["filter"]["filters"]["mojibake"]
    assert rep["detected"] >= 29 and rep["repaired"] == rep["detected"]


def test_planted_copies_of_real_rows_are_removed():
    """Verbatim and near copies (a few words changed in the long turns) of real
    rows are removed; different questions over one table are not."""
    base = _real_rows(200, seed=5)
    rng = random.Random(2)
    copies, near = [], []
    for i, msgs in enumerate(base[:40]):
        copies.append(copy.deepcopy(msgs))
        m = copy.deepcopy(msgs)
        for turn in m:
            for part in demo_data._paragraph_split(turn):
                words = part.split(" ")
                if len(words) >= 60:  # change 1 word in 60 of a long part: every segment stays >= 0.8 alike
                    for k in rng.sample(range(len(words)), len(words) // 60):
                        words[k] = words[k].upper() + "x"
                    turn["content"] = turn["content"].replace(part, " ".join(words), 1)
        if m != msgs:
            near.append(m)
    df = with_ids(conform(pl.DataFrame({"kind": "sft", "messages": base + copies + near})))
    out = dedup_rows(df, DedupConfig())
    gone = set(out.ledger["row_id"])
    planted = set(df["id"][len(base):])
    assert planted <= gone
    # beyond the plan only real repeats in the sample go (Alpaca has a few exact copies)
    extra = out.ledger.filter(pl.col("row_id").is_in(list(gone - planted)))
    assert set(extra["stage"]) <= {"dedup-exact"}, extra


# --- near-dedup recall on real near-duplicates ---------------------------------------------

def _debian_descriptions(n: int) -> list[str]:
    lists = sorted(Path("/var/lib/apt/lists").glob("*_debian_dists_bookworm_main_i18n_Translation-en.lz4"))
    if not lists or shutil.which("lz4cat") is None:
        pytest.skip("Debian descriptions not built: run `apt-get update -o Acquire::Languages=en` (needs lz4cat)")
    text = subprocess.run(["lz4cat", str(lists[0])], capture_output=True, text=True, check=True).stdout
    docs = []
    for rec in text.split("\n\n"):
        lines = rec.split("\n")
        body = [ln for ln in lines if ln.startswith("Description-en:")] + [ln for ln in lines if ln.startswith(" ")]
        if body:
            docs.append("\n".join(body).removeprefix("Description-en:").strip())
    return docs[:n]


def brute_force_pairs(shingle_sets: list[set], threshold: float) -> dict[int, list[tuple[int, float]]]:
    """Every pair with exact Jaccard >= threshold, by prefix filtering: sort each
    set's tokens rarest first; two sets with J >= t must share a token among the
    first |s| - ceil(t |s|) + 1 of each. Exact (no pair is missed), not sampled."""
    import math

    freq = defaultdict(int)
    for s in shingle_sets:
        for g in s:
            freq[g] += 1
    index = defaultdict(list)
    out = defaultdict(list)
    for j, s in enumerate(shingle_sets):
        if not s:
            continue
        toks = sorted(s, key=lambda g: (freq[g], g))
        prefix = toks[: len(toks) - math.ceil(threshold * len(toks)) + 1]
        cands = {i for g in prefix for i in index[g]}
        for i in cands:
            other = shingle_sets[i]
            jac = len(s & other) / len(s | other)
            if jac >= threshold - 1e-12:
                out[j].append((i, jac))
        for g in prefix:
            index[g].append(j)
    return out


def test_debian_near_dedup_recall_matches_brute_force(tmp_path):
    """20k real package descriptions: the greedy MinHash dedup removes the same
    rows as the same greedy run on *every* pair with exact Jaccard >= 0.8."""
    from bakeoff.curate import minhash as mh
    from bakeoff.curate.dedup_cmd import dedup_file

    docs = _debian_descriptions(20_000)
    path = tmp_path / "debian.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    res = dedup_file(path, ledger_path=tmp_path / "removed.parquet", config=DedupConfig(exact=False))
    got = set(pl.read_parquet(tmp_path / "removed.parquet")["row"].to_list())
    sets = [{g for g in mh.shingles(d)} for d in docs]
    pairs = brute_force_pairs(sets, 0.8)
    removed = set()
    for j in range(len(docs)):  # the same greedy: removed iff an earlier kept row matches
        if any(i not in removed for i, _ in pairs.get(j, [])):
            removed.add(j)
    assert removed, "the sample has near-duplicates"
    recall = len(got & removed) / len(removed)
    precision = len(got & removed) / max(len(got), 1)
    assert recall >= 0.99 and precision >= 0.99, (recall, precision, len(removed), len(got), res["removed_near"])
