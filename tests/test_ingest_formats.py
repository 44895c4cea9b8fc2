"""Ingest: every input format and file type, detection, --map, labels, extra."""

from __future__ import annotations

import gzip
import json

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bakeoff.curate.ingest import ingest
from bakeoff.workspace import BakeoffError


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def msgs(*pairs):
    return [{"role": r, "content": c} for r, c in pairs]


def check_balance(res):
    assert res.rows_in == res.accepted + res.quarantined


def test_messages_format_keeps_labels_and_extra(ws, tmp_path):
    f = write_jsonl(tmp_path / "m.jsonl", [
        {"messages": msgs(("system", "be brief"), ("user", "2+2?"), ("assistant", "4")),
         "meta": {"domain": "math", "task": "arithmetic", "tags": ["easy"], "group": "g1"}, "uid": 17},
        {"messages": msgs(("user", "hi"), ("assistant", "hello"), ("user", "bye"), ("assistant", "ciao")),
         "domain": "chat"},
    ])
    res = ingest(ws, [f], "m")
    check_balance(res)
    assert (res.rows_in, res.accepted, res.quarantined) == (2, 2, 0)
    assert res.detected == {str(f): "messages"}
    df = ws.load(res.version)
    r0, r1 = df.to_dicts()
    assert r0["kind"] == "sft" and [m["role"] for m in r0["messages"]] == ["system", "user", "assistant"]
    assert (r0["domain"], r0["task"], r0["tags"]) == ("math", "arithmetic", ["easy"])
    assert json.loads(r0["extra"]) == {"uid": 17, "meta": {"group": "g1"}}
    assert r0["source_file"] == str(f) and r0["source_line"] == 1
    assert r1["domain"] == "chat" and r1["extra"] is None and len(r1["messages"]) == 4
    v = ws.resolve("m@v1")
    assert v.operation == "ingest" and v.params["format"] == "auto" and v.params["detected"] == res.detected


def test_alpaca_with_input_system_history(ws, tmp_path):
    f = tmp_path / "a.json"
    f.write_text(json.dumps([
        {"instruction": "Translate", "input": "chat", "output": "cat", "system": "You translate."},
        {"instruction": "Name a color", "input": "", "output": "red",
         "history": [["hi", "hello"], ["how are you", "fine"]]},
    ], indent=2))
    res = ingest(ws, [f], "a")
    check_balance(res)
    assert res.detected[str(f)] == "alpaca" and res.accepted == 2
    r0, r1 = ws.load(res.version).to_dicts()
    assert r0["messages"] == msgs(("system", "You translate."), ("user", "Translate\n\nchat"), ("assistant", "cat"))
    assert r1["messages"] == msgs(("user", "hi"), ("assistant", "hello"), ("user", "how are you"),
                                  ("assistant", "fine"), ("user", "Name a color"), ("assistant", "red"))
    # line numbers of a pretty-printed JSON array point at each element's start
    assert [r0["source_line"], r1["source_line"]] == [2, 8]


def test_sharegpt_sft_and_preference(ws, tmp_path):
    sft = write_jsonl(tmp_path / "s.jsonl", [
        {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}], "system": "sys"},
    ])
    pref = tmp_path / "p.json"
    pref.write_text(json.dumps([
        {"conversations": [{"from": "human", "value": "which?"}],
         "chosen": {"from": "gpt", "value": "good"}, "rejected": {"from": "gpt", "value": "bad"}},
    ]))
    res = ingest(ws, [sft, pref], "s")
    check_balance(res)
    assert res.detected == {str(sft): "sharegpt", str(pref): "sharegpt-preference"}
    a, b = ws.load(res.version).to_dicts()
    assert a["kind"] == "sft" and a["messages"] == msgs(("system", "sys"), ("user", "q"), ("assistant", "a"))
    assert b["kind"] == "preference" and b["messages"] == msgs(("user", "which?"))
    assert b["chosen"] == msgs(("assistant", "good")) and b["rejected"] == msgs(("assistant", "bad"))


def test_completion_and_preference_strings_and_lists(ws, tmp_path):
    comp = write_jsonl(tmp_path / "c.jsonl", [
        {"prompt": "Capital of France?", "completion": "Paris"},
        {"prompt": msgs(("user", "1+1")), "completion": msgs(("assistant", "2"))},
    ])
    pref = write_jsonl(tmp_path / "p.jsonl", [
        {"prompt": "Say hi", "chosen": "hi!", "rejected": "no"},
        {"prompt": msgs(("system", "s"), ("user", "u")), "chosen": msgs(("assistant", "c")),
         "rejected": msgs(("assistant", "r"))},
    ])
    res = ingest(ws, [comp, pref], "cp")
    check_balance(res)
    assert res.detected == {str(comp): "completion", str(pref): "preference"}
    rows = ws.load(res.version).to_dicts()
    assert rows[0]["messages"] == msgs(("user", "Capital of France?"), ("assistant", "Paris"))
    assert rows[1]["messages"] == msgs(("user", "1+1"), ("assistant", "2"))
    assert rows[2]["kind"] == "preference" and rows[2]["chosen"] == msgs(("assistant", "hi!"))
    assert rows[3]["messages"] == msgs(("system", "s"), ("user", "u"))


def test_prompt_kind(ws, tmp_path):
    plain = write_jsonl(tmp_path / "pr.jsonl", [{"prompt": "Write a haiku"}, {"prompt": "Sum 2 and 3"}])
    res = ingest(ws, [plain], "prompts")
    assert res.detected[str(plain)] == "prompt" and res.accepted == 2
    assert ws.load(res.version)["kind"].to_list() == ["prompt", "prompt"]
    # --format prompt on messages: trailing assistant turns dropped; no assistant turn is fine
    m = write_jsonl(tmp_path / "m.jsonl", [
        {"messages": msgs(("user", "q1"), ("assistant", "a1"))},
        {"messages": msgs(("system", "s"), ("user", "q2"))},
        {"messages": msgs(("assistant", "only"))},
    ])
    res = ingest(ws, [m], "prompts2", fmt="prompt")
    check_balance(res)
    assert (res.accepted, res.quarantined) == (2, 1)
    rows = ws.load(res.version).to_dicts()
    assert rows[0]["messages"] == msgs(("user", "q1")) and rows[1]["messages"] == msgs(("system", "s"), ("user", "q2"))
    q = ws.quarantine(res.version)
    assert q["source_line"].to_list() == [3] and "assistant" in q["reason"][0]


def test_detection_ambiguous_and_unknown(ws, tmp_path):
    amb = write_jsonl(tmp_path / "amb.jsonl", [
        {"messages": msgs(("user", "q"), ("assistant", "a")), "instruction": "x", "output": "y"}])
    with pytest.raises(BakeoffError) as e:
        ingest(ws, [amb], "amb")
    msg = str(e.value)
    assert "ambiguous" in msg and "alpaca" in msg and "messages" in msg and "\n" not in msg
    unk = write_jsonl(tmp_path / "unk.jsonl", [{"text": "hello"}])
    with pytest.raises(BakeoffError, match="cannot detect the format.*text"):
        ingest(ws, [unk], "unk")
    # an explicit --format resolves the ambiguity
    res = ingest(ws, [amb], "amb", fmt="alpaca")
    assert res.accepted == 1 and json.loads(ws.load(res.version)["extra"][0]) == {
        "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    with pytest.raises(BakeoffError, match="unknown format"):
        ingest(ws, [amb], "amb", fmt="yaml")


def test_map_fields_and_turn_keys(ws, tmp_path):
    f = write_jsonl(tmp_path / "custom.jsonl", [
        {"question": "Q?", "answer": {"text": "A!"}, "category": "faq"},
    ])
    res = ingest(ws, [f], "mapped", mapping={"instruction": "question", "output": "answer.text", "domain": "category"})
    assert res.detected[str(f)] == "alpaca"
    row = ws.load(res.version).row(0, named=True)
    assert row["messages"] == msgs(("user", "Q?"), ("assistant", "A!")) and row["domain"] == "faq"
    g = write_jsonl(tmp_path / "turns.jsonl", [
        {"dialog": [{"speaker": "user", "text": "hey"}, {"speaker": "assistant", "text": "yo"}]}])
    res = ingest(ws, [g], "turns", fmt="messages", mapping={"messages": "dialog", "role": "speaker", "content": "text"})
    assert res.accepted == 1 and ws.load(res.version)["messages"][0].to_list() == msgs(("user", "hey"), ("assistant", "yo"))
    with pytest.raises(BakeoffError, match="--map"):
        ingest(ws, [g], "turns", mapping={"bogus": "x"})


def test_mapped_label_wins_over_the_rows_own_label(ws, tmp_path):
    """--map task=meta.answer_type takes effect even where meta.task is set (as in
    TAT-QA), and a mapping that no record has is an error, never a silent fallback."""
    f = write_jsonl(tmp_path / "labelled.jsonl", [
        {"messages": msgs(("user", f"q{i}"), ("assistant", "a")), "meta": {"task": "qa", "answer_type": t}}
        for i, t in enumerate(["arithmetic", "span"])])
    res = ingest(ws, [f], "mapped-label", mapping={"task": "meta.answer_type"})
    assert sorted(ws.load(res.version)["task"].to_list()) == ["arithmetic", "span"]
    res = ingest(ws, [f], "own-label")
    assert ws.load(res.version)["task"].to_list() == ["qa", "qa"]
    with pytest.raises(BakeoffError, match="--map task=meta.nothere"):
        ingest(ws, [f], "bad-label", mapping={"task": "meta.nothere"})


def test_meta_stamps_only_missing_labels(ws, tmp_path):
    f = write_jsonl(tmp_path / "m.jsonl", [
        {"messages": msgs(("user", "a"), ("assistant", "b")), "meta": {"domain": "own", "tags": ["x"]}},
        {"messages": msgs(("user", "c"), ("assistant", "d"))},
    ])
    res = ingest(ws, [f], "stamp", meta={"domain": "finance", "task": "qa", "tags": "t1,t2"})
    rows = ws.load(res.version).to_dicts()
    assert (rows[0]["domain"], rows[0]["task"], rows[0]["tags"]) == ("own", "qa", ["x"])
    assert (rows[1]["domain"], rows[1]["task"], rows[1]["tags"]) == ("finance", "qa", ["t1", "t2"])
    assert ws.resolve("stamp").params["meta"] == {"domain": "finance", "task": "qa", "tags": "t1,t2"}
    with pytest.raises(BakeoffError, match="--meta"):
        ingest(ws, [f], "stamp", meta={"colour": "red"})


def test_file_types_give_the_same_ids(ws, tmp_path):
    records = [
        {"messages": msgs(("user", "line one\nline two"), ("assistant", "ok")), "meta": {"domain": "d"}},
        {"messages": msgs(("user", "second"), ("assistant", "fine")), "meta": {"domain": "d"}},
    ]
    jl = write_jsonl(tmp_path / "r.jsonl", records)
    js = tmp_path / "r.json"
    js.write_text(json.dumps(records))
    gz = tmp_path / "r.jsonl.gz"
    gz.write_bytes(gzip.compress(jl.read_bytes()))
    pq = tmp_path / "r.parquet"
    pl.DataFrame(records).write_parquet(pq)
    pqgz = tmp_path / "r.parquet.gz"
    pqgz.write_bytes(gzip.compress(pq.read_bytes()))
    csv = tmp_path / "r.csv"
    pl.DataFrame({"messages": [json.dumps(r["messages"]) for r in records], "domain": ["d", "d"]}).write_csv(csv)
    csvgz = tmp_path / "r.csv.gz"
    csvgz.write_bytes(gzip.compress(csv.read_bytes()))
    tsv = tmp_path / "r.tsv"
    pl.DataFrame({"messages": [json.dumps(r["messages"]) for r in records], "domain": ["d", "d"]}).write_csv(
        tsv, separator="\t")
    ids = None
    for i, path in enumerate([jl, js, gz, pq, pqgz, csv, csvgz, tsv]):
        res = ingest(ws, [path], f"ft{i}")
        check_balance(res)
        assert res.accepted == 2, (path, res.to_dict())
        df = ws.load(res.version)
        assert df["domain"].to_list() == ["d", "d"]
        if ids is None:
            ids = df["id"].to_list()
        assert df["id"].to_list() == ids, path
    assert ws.load("ft3")["source_line"].to_list() == [1, 2]  # Parquet: row numbers


def test_csv_line_numbers_and_blank_lines(ws, tmp_path):
    f = tmp_path / "qa.csv"
    f.write_text('instruction,output,note\n"multi\nline question",answer one,x\n\nq2,a2,"n1\nn2\nn3"\nq3,,z\n')
    res = ingest(ws, [f], "csv")
    check_balance(res)
    assert res.detected[str(f)] == "alpaca"
    df = ws.load(res.version)
    # header is line 1; the first record spans lines 2-3; line 4 is blank
    assert df["source_line"].to_list() == [2, 5]
    assert json.loads(df["extra"][1]) == {"note": "n1\nn2\nn3"}
    q = ws.quarantine(res.version)
    assert q["source_line"].to_list() == [8] and q["reason"][0] == "missing field output"


def test_directory_and_multiple_files(ws, tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    write_jsonl(d / "a.jsonl", [{"prompt": "p", "completion": "c"}])
    write_jsonl(d / "b.jsonl", [{"instruction": "i", "output": "o"}])
    (d / "notes.txt").write_text("ignored")
    res = ingest(ws, [d], "dir")
    assert res.accepted == 2 and sorted(res.detected.values()) == ["alpaca", "completion"]


def test_duplicate_content_gets_distinct_ids(ws, tmp_path):
    rec = {"messages": msgs(("user", "same"), ("assistant", "same"))}
    f = write_jsonl(tmp_path / "d.jsonl", [rec, rec, rec])
    ids = ws.load(ingest(ws, [f], "dups").version)["id"].to_list()
    assert len(set(ids)) == 3 and ids[1] == ids[0] + "~2" and ids[2] == ids[0] + "~3"


def test_reingest_makes_next_version(ws, tmp_path):
    f = write_jsonl(tmp_path / "x.jsonl", [{"prompt": "p", "completion": "c"}])
    v1 = ingest(ws, [f], "x").version
    v2 = ingest(ws, [f], "x").version
    assert (v1.number, v2.number) == (1, 2) and v1.digest == v2.digest


def test_fast_and_exact_tiers_agree(tmp_path):
    """The fast tier (one typed parse) must accept exactly what the exact tier
    accepts and build the same rows."""
    import duckdb

    from bakeoff.curate import formats, readers

    records = [
        {"messages": msgs(("system", "s"), ("user", "q"), ("assistant", "a")), "meta": {"domain": "d", "tags": "t"}},
        {"messages": msgs(("user", "q"), ("assistant", "a"), ("user", "q2"), ("assistant", "a2")), "x": [1]},
        {"messages": [{"role": "human", "content": "q"}, {"role": "gpt", "content": "a"}]},
        {"messages": msgs(("user", "q"), ("assistant", "a")), "meta": {"content": 5}},  # suspect, but fine
        {"messages": msgs(("user", "q"), ("tool", "t"), ("assistant", "a"))},
        {"messages": [{"role": "user", "content": "q", "name": "bob"}, {"role": "assistant", "content": "a"}]},
        {"messages": msgs(("user", "q"), ("user", "q"), ("assistant", "a"))},
        {"messages": msgs(("user", "q"))},
        {"messages": [{"role": "user", "content": None}, {"role": "assistant", "content": "a"}]},
        {"messages": msgs(("user", "\n \t"), ("assistant", "a"))},
        # labels (the fast tier types them as strings; anything else is suspect)
        {"messages": msgs(("user", "q"), ("assistant", "a")), "meta": {"domain": "  fin ", "task": "qa", "doctype": ""}},
        {"messages": msgs(("user", "q"), ("assistant", "a")), "meta": {"domain": None, "task": "\u00e9\"x"}},
        {"messages": msgs(("user", "q"), ("assistant", "a")), "meta": {"domain": 5}},
        {"messages": msgs(("user", "q"), ("assistant", "a")), "meta": {"task": ["a"]}},
        {"messages": msgs(("user", "q"), ("assistant", "a")), "meta": {"doctype": {"a": 1}}},
        {"messages": msgs(("user", "q"), ("assistant", "a")), "meta": "string"},
        {"messages": msgs(("user", "q"), ("assistant", "a")), "meta": {"domain": True, "x": 1}},
        {"messages": msgs(("user", "q"), ("assistant", "a")), "meta": {"domain": "d", "zz": "u"}},
        # an unknown role whose name reads as a valid order (was accepted by the fast tier)
        {"messages": [{"role": "user,assistant", "content": "q"}]},
        {"messages": [{"role": "user", "content": "q"}, {"role": "Assistant ", "content": "a"}]},
    ]
    f = tmp_path / "mix.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in records))
    recs = readers.read_records(f)
    # roles_as_is: the fast tier's shortcut for files whose sampled roles need no
    # normalising; forced on here, where rows have aliases and bad turns anyway
    for fmt, roles_as_is in (("messages", False), ("messages", True), ("prompt", False), ("prompt", True)):
        con = duckdb.connect()
        con.register("recs", recs.table)
        formats.install_macros(con)
        n, stats = formats.key_stats(con)
        plan = formats.plan_for(con, fmt, {}, n, stats)
        assert not plan.roles_as_is  # the sample sees 'human'
        plan.roles_as_is = roles_as_is
        exact = con.sql(formats.build_query(plan)).pl().sort("source_line")
        fast = con.sql(formats.build_query(plan, fast=True)).pl().sort("source_line")
        accepted_fast = fast.filter(pl.col("reason").is_null())
        accepted_exact = exact.filter(pl.col("reason").is_null())
        # the fast tier never accepts what the exact tier rejects, and builds the same rows
        assert set(accepted_fast["source_line"]) <= set(accepted_exact["source_line"])
        if fmt == "messages":  # the clean rows really take the fast tier (row 4 is only suspect)
            assert accepted_fast["source_line"].to_list() == [1, 2, 3, 5, 6, 11, 12, 18, 20]
            assert accepted_exact["source_line"].to_list() == [1, 2, 3, 4, 5, 6, 11, 12, 13, 17, 18, 20]
        same = accepted_exact.filter(pl.col("source_line").is_in(accepted_fast["source_line"].implode()))
        cols = ["source_line", "kind", "messages", "domain", "doctype", "task", "tags", "extra"]
        assert accepted_fast.select(cols).equals(same.select(cols)), fmt
        # and the two-tier convert equals the exact query, with the suspect test
        # run by DuckDB or (records given, as ingest does) by polars
        for given_records in (None, recs.table):
            good, bad = formats.convert(con, plan, given_records)
            assert good.select(cols).equals(accepted_exact.select(cols))
            assert bad.equals(exact.filter(pl.col("reason").is_not_null()).select(bad.columns))
        con.close()


@pytest.mark.parametrize("fmt,records", [
    ("alpaca", [{"instruction": "i", "input": "x", "output": "o", "system": "s"}, {"instruction": "i", "output": "o"}]),
    ("sharegpt", [{"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}]),
    ("completion", [{"prompt": "p", "completion": "c"}, {"prompt": msgs(("user", "p")), "completion": "c"}]),
    ("preference", [{"prompt": "p", "chosen": "c", "rejected": "r"},
                    {"prompt": msgs(("system", "s"), ("user", "p")), "chosen": {"role": "assistant", "content": "c"},
                     "rejected": msgs(("assistant", "r"))}]),
    ("prompt", [{"prompt": "p"}, {"prompt": msgs(("user", "p"), ("assistant", "a"), ("user", "p2"))}]),
])
def test_clean_records_take_the_fast_tier(tmp_path, fmt, records):
    import duckdb

    from bakeoff.curate import formats, readers

    f = tmp_path / "x.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in records))
    con = duckdb.connect()
    con.register("recs", readers.read_records(f).table)
    formats.install_macros(con)
    plan = formats.plan_for(con, fmt, {}, *formats.key_stats(con))
    # message lists whose roles need no normalising (sharegpt's are 'human'/'gpt')
    assert plan.roles_as_is == (fmt in ("completion", "preference", "prompt"))
    fast = con.sql(formats.build_query(plan, fast=True)).pl()
    exact = con.sql(formats.build_query(plan)).pl()
    assert fast["reason"].null_count() == len(records) == exact["reason"].null_count()
    cols = ["kind", "messages", "chosen", "rejected"]
    assert fast.select(cols).equals(exact.select(cols))


def test_bom_crlf_and_json_lines_under_a_json_name(ws, tmp_path):
    rec = {"prompt": "p", "completion": "c"}
    f = tmp_path / "crlf.jsonl"
    f.write_bytes(b"\xef\xbb\xbf" + (json.dumps(rec) + "\r\n").encode() * 2 + b"\r\n")
    res = ingest(ws, [f], "crlf")
    assert (res.rows_in, res.accepted) == (2, 2)
    g = tmp_path / "lines.json"
    g.write_text(json.dumps(rec) + "\n" + json.dumps({"prompt": "q", "completion": "d"}) + "\n")
    res = ingest(ws, [g], "lines")
    assert (res.rows_in, res.accepted) == (2, 2) and ws.load(res.version)["source_line"].to_list() == [1, 2]


# --- the text tests: the same answer from DuckDB's RE2 and polars' Rust regex ------------------

_KEYS = ["role", "content", "domain", "task", "doctype", "", "a b", "x-y", "q\"t", "b\\s", "é", "(.*)", "[", "#"]


@st.composite
def _record_text(draw) -> str:
    """A JSON object (valid, as record text always is) whose keys come from a
    small pool (so the suspect keys occur), with every kind of value, nested,
    and with random whitespace between tokens."""
    leaf = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8) \
        | st.sampled_from(_KEYS)
    value = st.recursive(leaf, lambda kids: st.lists(kids, max_size=3)
                         | st.dictionaries(st.sampled_from(_KEYS) | st.text(max_size=4), kids, max_size=3),
                         max_leaves=8)
    obj = draw(st.dictionaries(st.sampled_from(_KEYS), value, max_size=5))
    ws = draw(st.sampled_from(["", " ", "\t", "\n ", "\r\n"]))
    text = json.dumps(obj, ensure_ascii=draw(st.booleans()), separators=("," + ws, ws + ":" + ws))
    return text


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(texts=st.lists(_record_text(), min_size=1, max_size=30), keys=st.sets(st.sampled_from(_KEYS), min_size=1))
def test_text_tests_agree_in_duckdb_and_polars(texts, keys):
    """``formats.text_matches`` (polars) gives what DuckDB's regexp_matches gives
    for the suspect and empty-key patterns on valid JSON record text, so moving
    a test from one engine to the other changes no decision."""
    import duckdb
    import pyarrow as pa

    from bakeoff.curate import formats

    table = pa.table({"source_line": pa.array(range(1, len(texts) + 1), pa.int64()),
                      "raw": pa.array(texts, pa.large_string())})
    con = duckdb.connect()
    con.register("recs", table)
    for pattern in (formats.suspect_pattern(keys), formats.EMPTY_KEY_PATTERN):
        in_duckdb = [r[0] for r in con.execute("SELECT regexp_matches(raw, ?) FROM recs ORDER BY source_line",
                                               [pattern]).fetchall()]
        assert formats.text_matches(table, pattern).to_pylist() == in_duckdb, pattern
    # and the suspect pattern finds exactly the keys holding a non-string, non-null value
    # (checked on the parsed record, top level, the level the typed parse reads)
    pattern = formats.suspect_pattern(keys)
    hits = formats.text_matches(table, pattern).to_pylist()
    for text, hit in zip(texts, hits):
        top = json.loads(text)
        if any(k in keys and v is not None and not isinstance(v, str) for k, v in top.items()):
            assert hit, (text, pattern)
    con.close()
