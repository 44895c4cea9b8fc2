"""Noise filters: precision/recall against the demo corpus's planted noise, each
filter on hand-made rows, actions (drop/flag/repair/redact), the ledger, config
files and the `curate filter` command."""

from __future__ import annotations

import json

import polars as pl
import pytest
from click.testing import CliRunner

from bakeoff.curate import filters as F
from bakeoff.demo_data import FILES, NOISE, generate, load_ground_truth
from bakeoff.schema import conform, with_ids
from bakeoff.workspace import BakeoffError, Workspace

#: planted kind -> the filter that must catch it (unless ingest quarantined the row): from the
#: one table of noise kinds
CATCH = {k: nk.caught_by.removeprefix("filter:") for k, nk in NOISE.items() if nk.caught_by.startswith("filter:")}
#: every filter on, the ones off by default too
ALL_ON = {name: {"enabled": True} for name in F.FILTERS}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from bakeoff.curate.ingest import ingest

    root = tmp_path_factory.mktemp("filters")
    paths = generate(root / "raw", seed=0)
    ws = Workspace(root / "ws")
    res = ingest(ws, [paths["fin-train"]], "fin-train")
    truth = [t for t in load_ground_truth(paths["ground-truth"]) if t["file"] == FILES["fin-train"]]
    return ws, res.version.ref, truth


def rows(*convs, kind="sft", **cols) -> pl.DataFrame:
    """Rows from (user, assistant) pairs or message lists."""
    out = []
    for c in convs:
        msgs = c if isinstance(c, list) else [{"role": "user", "content": c[0]},
                                              {"role": "assistant", "content": c[1]}]
        out.append({"kind": kind, "messages": msgs, **cols})
    return with_ids(conform(pl.DataFrame(out, schema_overrides={"messages": pl.List(
        pl.Struct({"role": pl.String, "content": pl.String}))})))


def hits(df: pl.DataFrame, name: str, **opts) -> list[bool]:
    cfg = F.FilterSuiteConfig.from_dict({"only": [name], name: opts})
    frame, _ = F.detect(df, cfg)
    return frame[f"{name}.hit"].to_list()


# --- against the planted ground truth -------------------------------------------------

def test_recall_on_planted_noise(demo):
    ws, ref, truth = demo
    df = ws.load(ref)
    quarantined = set(ws.quarantine(ref)["source_line"].to_list())
    frame, _ = F.detect(df, F.FilterSuiteConfig.from_dict(ALL_ON))
    frame = frame.with_columns(df["source_line"])
    by_line = {r["source_line"]: r for r in frame.iter_rows(named=True)}
    missed = []
    for t in truth:
        if t["kind"] not in CATCH:
            continue
        if t["line"] in quarantined:  # ingest already refused it (empty turn, bad roles)
            continue
        row = by_line[t["line"]]
        if not row[f"{CATCH[t['kind']]}.hit"]:
            missed.append(t)
    assert not missed, missed
    # every kind really reached the filters (not all quarantined)
    reached = {t["kind"] for t in truth if t["kind"] in CATCH and t["line"] not in quarantined}
    assert reached >= set(CATCH) - {"empty", "bad-structure"}


def test_precision_on_clean_rows(demo):
    ws, ref, truth = demo
    df = ws.load(ref)
    noisy = {t["line"] for t in truth if t["defect"]}
    frame, active = F.detect(df)
    frame = frame.with_columns(df["source_line"])
    clean = frame.filter(~pl.col("source_line").is_in(list(noisy)))
    assert clean.height >= 450
    any_hit = clean.select(pl.any_horizontal([f"{f.name}.hit" for f in active])).to_series()
    # clean rows include off-objective rows and PII-shaped decoys that fail their checksums
    assert any_hit.sum() <= 2, clean.filter(any_hit).select("source_line", "_r").to_dicts()
    decoys = {t["line"] for t in truth if t["kind"].startswith("decoy")}
    assert decoys and not frame.filter(pl.col("source_line").is_in(list(decoys)))["pii.hit"].any()


def test_filter_rows_on_demo_balances_and_explains(demo):
    ws, ref, truth = demo
    df = ws.load(ref)
    out = F.filter_rows(df)
    assert df.height == out.rows.height + out.ledger.height
    assert out.rows["id"].n_unique() == out.rows.height
    led = out.ledger
    assert set(led["stage"].unique()) == {"filter"}
    assert set(led["rule"].unique()) <= set(F.FILTERS)
    assert set(led["row_id"].to_list()) <= set(df["id"].to_list())
    for d in led["detail"].to_list():
        assert led["rule"].to_list()[0] and json.loads(d)["filters"]
    # repaired and redacted rows stay, with new ids; planted PII is gone
    text = out.rows.select(F.prompt_text() + F.response_text())["prompt_text"].str.join("\n").item()
    for t in truth:
        if t["kind"].startswith("pii-"):
            assert t["detail"] not in text
    from ftfy.badness import badness
    kept_text = out.rows.select(pl.concat_str([F.prompt_text(), F.response_text()]))
    assert not any(badness(x) for x in kept_text.to_series().to_list())
    rep = out.report["filter"]
    assert rep["filters"]["mojibake"]["repaired"] >= 10 and rep["filters"]["pii"]["redacted"] >= 14
    assert rep["rewritten"] == rep["filters"]["mojibake"]["repaired"] + rep["filters"]["pii"]["redacted"]
    old_ids = set(df["id"].to_list())
    new_ids = set(out.rows["id"].to_list()) - old_ids
    assert len(new_ids) == rep["rewritten"]
    # the overlap matrix is symmetric with the hit counts on its diagonal
    m = rep["overlap"]["matrix"]
    names = rep["overlap"]["filters"]
    assert all(m[i][i] == rep["filters"][n]["hits"] for i, n in enumerate(names))
    assert all(m[i][j] == m[j][i] for i in range(len(m)) for j in range(len(m)))
    for f in rep["filters"].values():
        assert len(f["examples"]) == min(3, f["hits"])


# --- each filter ----------------------------------------------------------------------------

def test_structure():
    df = pl.concat([
        rows(("q", "a")),
        rows([{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}]),
        rows([{"role": "user", "content": "q"}, {"role": "user", "content": "q2"},
              {"role": "assistant", "content": "a"}]),
        rows([{"role": "system", "content": "s"}, {"role": "user", "content": "q"},
              {"role": "assistant", "content": "a"}, {"role": "user", "content": "q2"},
              {"role": "assistant", "content": "a2"}]),
        rows([{"role": "user", "content": "q"}], kind="prompt"),
        rows(("q", "a"), kind="prompt"),
    ])
    assert hits(df, "structure") == [False, True, True, False, False, True]


def test_empty_and_length():
    df = rows(("question?", "   \n"), ("question?", "fine answer."), ("", "answer."), ("q" * 50, "x" * 500))
    assert hits(df, "empty") == [True, False, True, False]
    assert hits(df, "empty", roles="response") == [True, False, False, False]
    assert hits(df, "length", max_chars=100, roles="response") == [False, False, False, True]
    assert hits(df, "length", min_chars=20, roles="prompt") == [True, True, False, False]


def test_length_in_tokens():
    from bakeoff.curate.embeddings import model_path

    try:
        tok = model_path("all-MiniLM-L6-v2")
    except Exception:  # noqa: BLE001
        pytest.skip("no local tokenizer")
    df = rows(("q", "one two three"), ("q", " ".join(["word"] * 40)))
    assert hits(df, "length", max_tokens=20, tokenizer=tok, roles="response") == [False, True]
    with pytest.raises(BakeoffError, match="tokenizer"):
        hits(df, "length", max_tokens=20)


def test_control():
    df = rows(("q", "clean\ttabs\nand lines"), ("q", "bell\x07"), ("q", "zero\u200bwidth"), ("q", "esc \x1b[31m"),
              ("q\x00", "fine"))
    assert hits(df, "control") == [False, True, True, True, True]
    assert hits(df, "control", roles="response") == [False, True, True, True, False]
    out = F.filter_rows(df, {"only": ["control"], "control": {"action": "repair"}})
    assert out.rows.height == 5 and out.report["filter"]["rewritten"] == 4
    assert not F.detect(out.rows, F.FilterSuiteConfig.from_dict({"only": ["control"]}))[0]["control.hit"].any()


def test_mojibake_matches_ftfy_and_repairs():
    from ftfy.badness import badness

    from bakeoff.demo_data import mojibake

    texts = ["The company’s revenue was €1,200 — up 5%.", "café naïve résumé Zürich São Paulo", "plain ascii",
             "“smart quotes” and ±5 µs", "Ð¿Ñ€Ð¸Ð²ÐµÑ‚", "Ã¼ber", "Â£100", "I ❤ unicode 😀"]
    texts += [mojibake(t) for t in texts[:4]]
    ours = pl.Series(texts).str.count_matches(F.ftfy_badness_re()).to_list()
    assert ours == [badness(t) for t in texts]
    df = rows(*[("question", t) for t in texts])
    h = hits(df, "mojibake")
    assert h == [badness(t) > 0 for t in texts] and sum(h) >= 6
    out = F.filter_rows(df, {"only": ["mojibake"]})
    fixed = out.rows.select(F.response_text())["response_text"].to_list()
    assert "The company’s revenue was €1,200 — up 5%." in fixed
    assert out.report["filter"]["filters"]["mojibake"]["repaired"] + \
        out.report["filter"]["filters"]["mojibake"]["unrepairable"] == sum(h)


def test_repetition():
    prose = ("Revenue rose in 2023 because prices went up while volumes held steady across the main "
             "segments, and margins improved as input costs eased.")
    looped = prose + " " + " ".join(["This is the final answer."] * 8)
    lines = "Answer: 12%.\n" + "\n".join(["See the table above."] * 6)
    symbols = "# # # # heading ... more ... and ... more # # words"
    df = rows(("q", prose), ("q", looped), ("q", lines), ("q", symbols))
    assert hits(df, "repetition") == [False, True, True, True]
    frac = F.dup_ngram_fraction(pl.Series([prose, looped, "a b c d e a b c d e", "short"]), 5)
    assert frac[0] == 0.0 and frac[1] > 0.5 and frac[2] == pytest.approx(2 / 6) and frac[3] == 0.0


def test_refusal():
    df = rows(("q", "As an AI language model, I cannot browse."), ("q", "I'm sorry, but I can't help with that."),
              ("q", "I cannot answer that without the table."), ("q", "Revenue was $5 million."),
              ("q", "The company cannot pay its debts, so it was unable to refinance."))
    assert hits(df, "refusal") == [True, True, True, False, False]
    assert hits(df, "refusal", extra_patterns=["company cannot pay"]) == [True, True, True, False, True]


def test_pii_detection_and_validation():
    df = rows(("mail me at jane.doe@example.com", "ok."), ("q", "call +1 (415) 555-0134 today."),
              ("q", "card 4539 1488 0343 6467 on file."), ("q", "card 4539 1488 0343 6468 on file."),
              ("q", "IBAN DE89 3704 0044 0532 0130 00."), ("q", "IBAN DE88 3704 0044 0532 0130 00."),
              ("q", "Revenue of 1,234.5 and (276.4 - 250.1) / 250.1 = 10.52%, dated 2024-03-15."),
              ("q", "phone 415-555-0199."))
    frame, _ = F.detect(df, F.FilterSuiteConfig.from_dict({"only": ["pii"]}))
    assert frame["pii.hit"].to_list() == [True, True, True, False, True, False, False, True]
    assert frame["pii.detail"].to_list()[:6] == ["email", "phone", "card", None, "iban", None]
    assert F.luhn_ok(pl.Series(["4539148803436467", "4539148803436468", "79927398713"])).to_list() == \
        [True, False, False]  # the last is Luhn-valid but too short for a card
    assert F.iban_ok(pl.Series(["DE89 3704 0044 0532 0130 00", "GB82 WEST 1234 5698 7654 32",
                                "GB83 WEST 1234 5698 7654 32"])).to_list() == [True, True, False]
    assert hits(df, "pii", kinds=["email"]) == [True] + [False] * 7


def test_pii_actions():
    df = rows(("mail jane.doe@example.com please", "Paid with 4539-1488-0343-6467, IBAN GB82 WEST 1234 5698 7654 32."),
              ("q", "Reference 4539 1488 0343 6468 is not a card."))
    out = F.filter_rows(df, {"only": ["pii"]})  # default: redact
    assert out.rows.height == 2
    msgs = out.rows["messages"].to_list()[0]
    assert msgs[0]["content"] == "mail [EMAIL] please"
    assert msgs[1]["content"] == "Paid with [CARD], IBAN [IBAN]."
    assert out.rows["messages"].to_list()[1] == df["messages"].to_list()[1]
    assert out.rows["id"][0] != df["id"][0] and out.rows["id"][1] == df["id"][1]
    assert "@" not in json.dumps(out.report)  # examples are shown redacted
    dropped = F.filter_rows(df, {"only": ["pii"], "pii": {"action": "drop"}})
    assert dropped.rows.height == 1 and dropped.ledger["rule"].to_list() == ["pii"]
    flagged = F.filter_rows(df, {"only": ["pii"], "pii": {"action": "flag"}})
    assert flagged.rows["tags"].to_list()[0] == ["flag:pii"] and flagged.ledger.height == 0
    assert F.redact_pii("call +44 20 7946 0958 or 555-0100") == "call [PHONE] or 555-0100"


def test_echo_and_truncated():
    q = "Table...\n\nQuestion: By how much did revenue change from 2021 to 2022?"
    df = rows((q, "By how much did revenue change from 2021 to 2022?"),
              (q, "Revenue increased by $12.5 million."),
              (q, "Revenue increased from $100 million in 2021 to"),
              (q, "The change was (112.5 - 100"),
              (q, "Here is code:\n```python\nprint(1)"),
              (q, "Steps:\n- look up revenue\n- subtract the values"),
              (q, "12.5"),
              ([{"role": "user", "content": "Classify: termination, warranty"},
                {"role": "assistant", "content": "termination"}]))
    assert hits(df, "echo") == [True, False, False, False, False, False, False, False]
    assert hits(df, "truncated") == [False, False, True, True, True, False, False, False]


def test_language():
    df = rows(("q", "Der Umsatz belief sich im Jahr 2022 auf 1.234 Millionen Euro und stieg damit deutlich."),
              ("q", "The revenue in 2022 was 1,234 million euros, a clear increase over the prior year."),
              ("q", '{"vendor": "Müller Elektrotechnik GmbH", "date": "2023-01-02", "total": 12.5}'),
              ("q", "vendor: Nordic Coffee Roasters AB\ndate: 2023-01-02\ncurrency: SEK\ntotal: 99.0"),
              ("q", "Oui."))
    frame, _ = F.detect(df, F.FilterSuiteConfig.from_dict({"only": ["language"]}))
    assert frame["language.hit"].to_list() == [True, False, False, False, False]
    assert frame["language.detail"][0] == "de"
    assert hits(df, "language", expected=["de"])[:2] == [False, True]


def test_may_rewrite_lets_through_every_turn_a_rewrite_changes(demo):
    """A rewrite (repair, redact) runs only on the turns its filter's may_rewrite
    lets through: on every turn of the demo corpus (planted mojibake, control
    characters, PII) and a few edge cases, no turn it holds back would change."""
    ws, ref, _ = demo
    turns = ws.load(ref).select(pl.col("messages").list.eval(pl.element().struct.field("content"))
                                .explode().drop_nulls().unique())["messages"]
    turns = pl.concat([turns, pl.Series(["Ring é020 7946 0958 now", "IBAN: GB82 WEST 1234 5698 7654 32.",
                                         "Café naïve déjà vu", "cafÃ© and naÃ¯ve", "a\u200bb", "x@y.io"])])
    for name, cls in F.FILTERS.items():
        if cls.rewrite_action is None:
            continue
        f = cls()
        fn = f.rewriter()
        held_back = turns.filter(~turns.to_frame("t").select(f.may_rewrite(pl.col("t")).fill_null(True)).to_series())
        changed = [t for t in held_back.to_list() if fn(t) != t]
        assert not changed, (name, changed[:3])


def test_language_batch_classifier_is_langid():
    """classify_batch (one numba pass) gives langid.classify's language and
    probability for every text: the filter's sample sentences, a long text (cut
    at 1,000 characters as the filter cuts it), an empty one, and the turns of
    the real files where present."""
    from pathlib import Path

    from bakeoff.curate.filters.language import LanguageConfig, classify_batch

    texts = ["Der Umsatz belief sich auf 1.234 Millionen Euro und stieg damit deutlich.",
             "Le chiffre d'affaires était de 41 millions d'euros.", "这是一个中文句子，用来测试语言识别。",
             "Hyvää päivää, mitä kuuluu? Tämä on suomea.", "current assets less current liabilities.",
             "El ingreso fue de 12 millones de dólares en el año.", "", "ok", "Ünïcödé … ✓ " * 200]
    data = Path(__file__).resolve().parents[2] / "shared" / "data" / "alpaca_en_demo.json"
    if data.exists():  # real text, not ours
        texts += [r[k] for r in json.loads(data.read_text(encoding="utf-8"))[:300] for k in ("instruction", "output")]
    langs = sorted(set(LanguageConfig().candidates))
    got_lang, got_prob = classify_batch(pl.Series(texts, dtype=pl.String), langs)
    ident = F.langid_identifier()
    ident.set_languages(langs)
    for text, lang, prob in zip(texts, got_lang, got_prob):
        want_lang, want_prob = ident.classify(text[:1000])
        assert (lang, prob) == (want_lang, pytest.approx(want_prob, abs=1e-9)), text[:80]
    assert got_lang[:4] == ["de", "fr", "zh", "fi"]


# --- configuration ---------------------------------------------------------------------------

def test_config_file_and_errors(tmp_path):
    p = tmp_path / "filters.yaml"
    p.write_text("pii: {action: drop, kinds: [email]}\nlanguage: {enabled: false}\nlength: {max_chars: 100}\n")
    cfg = F.load_filter_config(p)
    assert cfg["pii"].action == "drop" and cfg["pii"].kinds == ["email"]
    assert not cfg["language"].enabled and cfg["length"].max_chars == 100 and cfg["refusal"].enabled
    with pytest.raises(BakeoffError, match="unknown filter"):
        F.parse_filter_config({"nope": {}})
    with pytest.raises(BakeoffError, match="unknown option"):
        F.parse_filter_config({"pii": {"colour": "red"}})
    with pytest.raises(BakeoffError, match="action"):
        F.filter_rows(rows(("q", "a.")), {"refusal": {"action": "redact"}})
    with pytest.raises(BakeoffError, match="roles"):
        F.filter_rows(rows(("q", "a.")), {"refusal": {"roles": "assistant"}})
    with pytest.raises(BakeoffError, match="not found"):
        F.load_filter_config(tmp_path / "missing.yaml")


def test_empty_input():
    df = rows(("q", "a.")).head(0)
    out = F.filter_rows(df)
    assert out.rows.height == 0 and out.ledger.height == 0


# --- command ---------------------------------------------------------------------------------

def test_filter_command_dry_run_and_write(demo):
    from bakeoff.cli import cli

    ws, ref, truth = demo
    runner = CliRunner()
    name = ref.split("@")[0]
    before = [v.ref for v in ws.versions(name)]
    res = runner.invoke(cli, ["-w", str(ws.root), "curate", "filter", ref, "--dry-run", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["dry_run"] and "version" not in doc
    assert [v.ref for v in ws.versions(name)] == before
    assert doc["rows_in"] == doc["rows_out"] + doc["dropped"]
    assert all(len(f["examples"]) == min(3, f["hits"]) for f in doc["filters"].values())
    many = json.loads(runner.invoke(cli, ["-w", str(ws.root), "curate", "filter", ref, "--dry-run", "--json",
                                          "--examples", "8"]).stdout)
    assert all(len(f["examples"]) == min(8, f["hits"]) for f in many["filters"].values())

    res = runner.invoke(cli, ["-w", str(ws.root), "curate", "filter", ref, "--json"])
    assert res.exit_code == 0, res.output
    doc2 = json.loads(res.stdout)
    v = ws.resolve(doc2["version"])
    assert v.parents == [ref] and v.operation == "filter"
    led = ws.ledger(v)
    assert led.height == doc2["dropped"] == ws.resolve(ref).rows - v.rows
    assert set(led["row_id"].to_list()) <= set(ws.load(ref)["id"].to_list())
    # people's rendering works too
    res = runner.invoke(cli, ["-w", str(ws.root), "curate", "filter", ref, "--dry-run"])
    assert res.exit_code == 0 and "overlap" in res.output and "refusal" in res.output


def test_loud_summary_and_reason_in_words():
    """A filter step that drops more than a quarter of its rows says so; every
    ledger row says why in words."""
    df = rows(("q", "I'm sorry, but I can't help with that request."), ("q", "As an AI, I cannot do that."),
              ("q", "Net income was $12.4 million."))
    out = F.filter_rows(df)
    assert "more than 25%" in out.report["filter"]["warning"]["message"]
    for d in out.ledger["detail"].to_list():
        reason = json.loads(d)["reason"]
        assert reason.startswith("refusal: the answer declines") and "says:" in reason
    assert "warning" not in F.filter_rows(df.tail(1)).report["filter"]
