"""The demo corpus: deterministic, the right sizes, every planted defect recorded
(and nothing unrecorded), and ingest keeps its invariants on it."""

from __future__ import annotations

import csv
import gzip
import hashlib
import itertools
import json
import re
from collections import Counter

import ftfy
import pytest

from bakeoff import demo_data
from bakeoff.demo_data import (CONTRACT_LABELS, FILES, NOISE_KINDS, _word_jaccard3, generate,
                               load_ground_truth, luhn_valid)

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b]")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    paths = generate(out, seed=0)
    lines = paths["fin-train"].read_text(encoding="utf-8").splitlines()
    truth = load_ground_truth(paths["ground-truth"])
    return paths, lines, truth


def _digest(paths) -> dict[str, str]:
    return {k: hashlib.sha256(p.read_bytes()).hexdigest() for k, p in paths.items()}


def test_deterministic_for_a_seed(tmp_path, corpus):
    paths, _, _ = corpus
    again = generate(tmp_path / "a", seed=0)
    assert _digest(again) == _digest(paths)
    other = generate(tmp_path / "b", seed=1)
    assert _digest(other)["fin-train"] != _digest(paths)["fin-train"]


def test_sizes_and_formats(corpus):
    paths, lines, _ = corpus
    assert set(paths) == set(FILES)
    assert 550 <= len(lines) <= 700
    pool_fin = json.loads(paths["pool-finance"].read_text())
    with gzip.open(paths["pool-invoices"], "rt", encoding="utf-8") as fh:
        invoices = [json.loads(x) for x in fh]
    with open(paths["pool-contracts"], newline="", encoding="utf-8") as fh:
        contracts = list(csv.DictReader(fh))
    assert 350 <= len(pool_fin) + len(invoices) + len(contracts) <= 450
    prefs = json.loads(paths["prefs"].read_text())
    assert 180 <= len(prefs) <= 220
    prompts = [json.loads(x) for x in paths["prompts"].read_text().splitlines()]
    assert 90 <= len(prompts) <= 110

    assert {"instruction", "input", "output", "meta"} <= set(pool_fin[0])
    assert invoices[0]["conversations"][0]["from"] == "human"
    assert {c["completion"] for c in contracts} <= set(CONTRACT_LABELS)
    assert {"conversations", "chosen", "rejected"} <= set(prefs[0])
    assert all(p["chosen"]["value"] != p["rejected"]["value"] for p in prefs)
    assert all(p["prompt"].rstrip().endswith("?") and p["reference"] for p in prompts)
    # invoice answers are consistent with the document
    for inv in invoices[:30]:
        fields = json.loads(inv["fields"])
        assert f"{fields['total']:.2f}" in inv["conversations"][0]["value"]
        assert abs(fields["subtotal"] + fields["tax"] - fields["total"]) < 0.011


def test_scale_and_time(tmp_path):
    import time

    t = time.perf_counter()
    paths = generate(tmp_path / "big", seed=3, scale=2.0)
    assert time.perf_counter() - t < 5
    n = len(paths["fin-train"].read_text().splitlines())
    assert 1100 <= n <= 1400
    small = generate(tmp_path / "small", seed=3, scale=0.1)
    truth = load_ground_truth(small["ground-truth"])
    assert {t["kind"] for t in truth if t["defect"] and t["file"] == FILES["fin-train"]} == set(NOISE_KINDS)


def test_every_noise_kind_planted(corpus):
    _, _, truth = corpus
    kinds = Counter(t["kind"] for t in truth if t["file"] == FILES["fin-train"] and t["defect"])
    assert set(kinds) == set(NOISE_KINDS)
    assert all(v >= 4 for v in kinds.values())
    assert len({(t["file"], t["line"]) for t in truth}) == len(truth)  # one record per row


def _answer(rec):
    a = [m for m in rec["messages"] if m["role"] == "assistant"]
    return a[-1]["content"] if a else None


def test_planted_defects_are_where_the_ground_truth_says(corpus):
    _, lines, truth = corpus
    for t in truth:
        if t["file"] != FILES["fin-train"]:
            continue
        line = lines[t["line"] - 1]
        kind = t["kind"]
        if kind == "malformed-json":
            with pytest.raises(json.JSONDecodeError):
                json.loads(line)
            continue
        rec = json.loads(line)
        assert rec["uid"] == t["uid"]
        text = "\n".join(m["content"] for m in rec["messages"])
        ans = _answer(rec)
        if kind == "mojibake":
            assert ftfy.is_bad(text)
            assert not ftfy.is_bad(ftfy.fix_text(text))
        elif kind == "empty":
            assert ans is not None and ans.strip() == ""
        elif kind == "truncated":
            assert ans and (ans[-1] not in ".!?%" or ans.count("(") != ans.count(")"))
        elif kind == "refusal":
            assert ans in demo_data._REFUSALS  # including paraphrases without "cannot"
        elif kind == "pii-email":
            assert re.search(r"[\w.]+@[\w.]+\.\w+", text)
        elif kind == "pii-card":
            assert luhn_valid(t["detail"]) and t["detail"] in text
        elif kind == "pii-iban" or kind == "pii-phone":
            assert t["detail"] in text
        elif kind == "control":
            assert _CONTROL.search(ans)
        elif kind == "repetition":
            assert max(Counter(re.split(r"(?<=\.)\s+", ans)).values()) >= 6
        elif kind == "exact-duplicate":
            assert line == lines[t["original_line"] - 1] and t["original_line"] < t["line"]
        elif kind == "near-duplicate":
            orig = json.loads(lines[t["original_line"] - 1])
            otext = "\n".join(m["content"] for m in orig["messages"])
            assert otext != text and _word_jaccard3(otext, text) >= 0.85
            assert t["original_line"] < t["line"]
        elif kind == "echo":
            assert ans in text.replace(ans, "", 1)
        elif kind == "bad-structure":
            assert rec["messages"][-1]["role"] != "assistant"
        elif kind == "decoy-card":
            assert not luhn_valid(t["detail"])


def test_clean_rows_are_clean(corpus):
    """Nothing unrecorded: rows outside the ground truth parse, have a non-empty
    answer, no control characters, no mojibake, no refusal, and no two of them are
    near-duplicates."""
    _, lines, truth = corpus
    noisy = {t["line"] for t in truth if t["file"] == FILES["fin-train"]}
    clean = [json.loads(x) for i, x in enumerate(lines, 1) if i not in noisy]
    assert len(clean) >= 400
    texts = []
    for rec in clean:
        text = "\n".join(m["content"] for m in rec["messages"])
        ans = _answer(rec)
        assert ans and ans.strip() and ans.rstrip()[-1] in ".!?\""
        assert not _CONTROL.search(text) and not ftfy.is_bad(text)
        assert "@" not in text and "language model" not in text
        texts.append(text)
    assert len(set(texts)) == len(texts)
    # no accidental near-duplicates among the clean finance rows
    def shingles(t):
        w = t.lower().split()
        return {tuple(w[i:i + 3]) for i in range(len(w) - 2)}
    sets = [shingles(t) for t in texts[:300]]
    worst = max(len(a & b) / len(a | b) for a, b in itertools.combinations(sets, 2))
    assert worst < 0.8


def test_pool_is_held_out_except_recorded_leaks(corpus):
    paths, lines, truth = corpus
    pool = json.loads(paths["pool-finance"].read_text())
    leaks = [t for t in truth if t["kind"] == "leak"]
    assert leaks
    raw_lines = paths["pool-finance"].read_text().splitlines()
    for t in leaks:
        rec = json.loads(raw_lines[t["line"] - 1].rstrip(","))
        assert rec["uid"] == t["uid"]
        orig = json.loads(lines[t["original_line"] - 1])
        assert rec["output"] == _answer(orig)
    malformed = {t["line"] for t in truth if t["kind"] == "malformed-json"}
    found = (re.search(r"shows (.+?)’s selected", x) for i, x in enumerate(lines[:80], 1) if i not in malformed)
    train_companies = {m.group(1) for m in found if m}
    assert len(train_companies) >= 10
    fresh = [r for r in pool if not r["uid"].startswith("pool-leak")]
    assert not any(c in r["input"] for r in fresh for c in train_companies)


# --- ingest ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def demo_ws(tmp_path_factory):
    pytest.importorskip("bakeoff.curate.ingest")
    from bakeoff.demo_data import make_demo_workspace
    from bakeoff.workspace import Workspace

    ws = Workspace(tmp_path_factory.mktemp("demows") / "ws")
    return ws, make_demo_workspace(ws, seed=0)


def test_make_demo_workspace_ingests_everything(demo_ws):
    ws, result = demo_ws
    assert set(result["datasets"]) == {"fin-train", "pool", "prefs", "prompts"}
    for name, ref in result["datasets"].items():
        info = result["ingest"][name]
        assert info["rows_in"] == info["accepted"] + info["quarantined"]
        v = ws.resolve(ref)
        assert v.rows == info["accepted"]
        assert ws.quarantine(ref).height == info["quarantined"]
    kinds = {name: set(ws.load(ref)["kind"].unique()) for name, ref in result["datasets"].items()}
    assert kinds == {"fin-train": {"sft"}, "pool": {"sft"}, "prefs": {"preference"}, "prompts": {"prompt"}}


def test_ingested_rows_keep_labels_and_sources(demo_ws):
    ws, result = demo_ws
    pool = ws.load(result["datasets"]["pool"])
    assert set(pool["domain"].unique()) == {"finance-tables", "invoices", "contracts"}
    assert set(pool.filter(pool["domain"] == "invoices")["doctype"].unique()) == {"invoice", "receipt"}
    assert set(pool.filter(pool["domain"] == "contracts")["task"].unique()) == {"classification"}
    train = ws.load(result["datasets"]["fin-train"])
    assert train["source_line"].null_count() == 0
    # the unknown column uid survives in extra
    assert train["extra"].str.contains('"uid"').all()


def test_ingest_accounts_for_every_planted_row(demo_ws):
    """Each planted fin-train row is either an accepted row at its source line or
    quarantined at that line (malformed JSON always is)."""
    ws, result = demo_ws
    ref = result["datasets"]["fin-train"]
    rows = ws.load(ref)
    q = ws.quarantine(ref)
    accepted_lines = set(rows["source_line"].to_list())
    q_lines = set(q["source_line"].to_list())
    truth = load_ground_truth(result["ground_truth"])
    for t in truth:
        if t["file"] != FILES["fin-train"]:
            continue
        assert (t["line"] in accepted_lines) != (t["line"] in q_lines), t
        if t["kind"] == "malformed-json":
            assert t["line"] in q_lines
    n_lines = len(open(result["files"]["fin-train"], encoding="utf-8").read().splitlines())
    assert len(accepted_lines) + len(q_lines) == n_lines
    # exact duplicates share the content hash of their original
    ids = dict(zip(rows["source_line"], rows["id"]))
    for t in truth:
        if t["kind"] == "exact-duplicate" and t["line"] in ids:
            assert ids[t["line"]].split("~")[0] == ids[t["original_line"]].split("~")[0]
