"""Bad input never crashes an ingest and never disappears: each kind of bad
record is quarantined with its reason and file:line, and rows_in = accepted +
quarantined. Unreadable files are a one-line error."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys

import pytest

from bakeoff.curate.ingest import ingest
from bakeoff.workspace import BakeoffError


def msgs(*pairs):
    return [{"role": r, "content": c} for r, c in pairs]


GOOD = {"messages": msgs(("user", "q"), ("assistant", "a"))}

# (line content, expected reason fragment)
BAD_LINES = [
    ('{"messages": [{"role": "user", "content": "q"}', "malformed JSON"),
    ('[1, 2, 3]', "not a JSON object"),
    ('"just a string"', "not a JSON object"),
    (json.dumps({"other": 1}), "missing field messages"),
    (json.dumps({"messages": None}), "missing field messages"),
    (json.dumps({"messages": "hello"}), "must be a list of turns, got a string"),
    (json.dumps({"messages": 42}), "must be a list of turns, got a number"),
    (json.dumps({"messages": []}), "empty messages"),
    (json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": 5}]}),
     "turn 2 has no string 'content'"),
    (json.dumps({"messages": [{"role": "user", "content": "q"}, {"content": "a"}]}), "turn 2 has no string 'role'"),
    (json.dumps({"messages": [{"role": "user", "content": "q"}, "a"]}), "turn 2 is not a turn object"),
    (json.dumps({"messages": msgs(("user", "   "), ("assistant", "a"))}), "empty turn in messages (turn 1, user)"),
    (json.dumps({"messages": msgs(("user", "q"), ("assistant", ""))}), "empty turn in messages (turn 2, assistant)"),
    (json.dumps({"messages": msgs(("user", "a"), ("user", "b"), ("assistant", "c"))}), "two user turns in a row"),
    (json.dumps({"messages": msgs(("user", "a"), ("assistant", "b"), ("assistant", "c"))}),
     "two assistant turns in a row"),
    (json.dumps({"messages": msgs(("assistant", "a"), ("user", "b"), ("assistant", "c"))}),
     "starts with an assistant turn"),
    (json.dumps({"messages": msgs(("user", "a"))}), "does not end with an assistant turn"),
    (json.dumps({"messages": msgs(("user", "a"), ("system", "s"), ("assistant", "c"))}), "system turn after the start"),
    (json.dumps({"messages": msgs(("user", "a"), ("wizard", "b"))}), "unknown role 'wizard'"),
    (json.dumps({**GOOD, "meta": "finance"}), "meta must be an object"),
    (json.dumps({**GOOD, "meta": {"domain": ["a", "b"]}}), "domain label must be a string"),
    (json.dumps({**GOOD, "meta": {"tags": [1, 2]}}), "tags must be a list of strings"),
]


def test_each_bad_line_is_quarantined_with_reason_and_line(ws, tmp_path):
    lines = [json.dumps(GOOD)]
    for text, _ in BAD_LINES:
        lines.append(text)
    lines.append("")  # blank lines are not records
    lines.append(json.dumps({"messages": msgs(("user", "x"), ("assistant", "y"))}))
    data = ("\n".join(lines) + "\n").encode()
    data += b'{"messages": [{"role": "user", "content": "caf\xe9"}, {"role": "assistant", "content": "a"}]}\n'
    f = tmp_path / "bad.jsonl"
    f.write_bytes(data)
    res = ingest(ws, [f], "bad")
    n_records = 2 + len(BAD_LINES) + 1
    assert res.rows_in == n_records
    assert res.rows_in == res.accepted + res.quarantined
    assert (res.accepted, res.quarantined) == (2, len(BAD_LINES) + 1)
    q = ws.quarantine(res.version).sort("source_line")
    assert q["source_file"].unique().to_list() == [str(f)]
    got = dict(zip(q["source_line"].to_list(), q["reason"].to_list()))
    for i, (text, why) in enumerate(BAD_LINES):
        assert why in got[i + 2], (text, got[i + 2])
    utf8_line = len(lines) + 1
    assert got[utf8_line].startswith("invalid UTF-8")
    raw = dict(zip(q["source_line"].to_list(), q["raw"].to_list()))
    assert raw[2] == BAD_LINES[0][0]  # the raw text is kept for browsing
    assert "caf\\xe9" in raw[utf8_line]
    assert ws.resolve("bad").counts["quarantined"] == res.quarantined
    assert ws.load(res.version)["source_line"].to_list() == [1, len(lines)]


@pytest.mark.parametrize("fmt,record,why", [
    ("alpaca", {"instruction": "i"}, "missing field output"),
    ("alpaca", {"instruction": "i", "output": ["x"]}, "output must be a string, got a list"),
    ("alpaca", {"instruction": " ", "output": "o"}, "empty instruction"),
    ("alpaca", {"instruction": "i", "output": "o", "history": [["only one"]]}, "history must be a list"),
    ("sharegpt", {"conversations": [{"from": "gpt", "value": "a"}]}, "starts with an assistant turn"),
    ("sharegpt", {"conversations": [{"from": "human", "value": "q"}], "chosen": {"from": "gpt", "value": "c"}},
     None),  # a file with chosen but without rejected is plain sft; this conversation has no answer
    ("completion", {"prompt": "p", "completion": ""}, "empty turn in completion"),
    ("completion", {"prompt": "p"}, "missing field completion"),
    ("preference", {"prompt": "p", "chosen": "c"}, "missing field rejected"),
    ("preference", {"prompt": "p", "chosen": msgs(("user", "c")), "rejected": "r"}, "chosen must hold assistant turns only"),
    ("preference", {"prompt": msgs(("user", "p"), ("assistant", "x")), "chosen": "c", "rejected": "r"},
     "does not end with a user turn"),
    ("prompt", {"prompt": ""}, "empty turn in prompt"),
])
def test_format_specific_bad_records(ws, tmp_path, fmt, record, why):
    f = tmp_path / "x.jsonl"
    f.write_text(json.dumps(record) + "\n")
    res = ingest(ws, [f], "x", fmt=fmt)
    assert res.rows_in == 1 == res.accepted + res.quarantined
    assert res.quarantined == 1
    reason = ws.quarantine(res.version)["reason"][0]
    assert why is None or why in reason, reason


def test_json_array_bad_elements_and_truncation(ws, tmp_path):
    good = {"instruction": "i", "output": "o"}
    f = tmp_path / "arr.json"
    f.write_text("[\n" + json.dumps(good) + ",\n  7,\n" + json.dumps(good)[:-1] + "\n")  # truncated
    res = ingest(ws, [f], "arr", fmt="alpaca")
    assert res.rows_in == res.accepted + res.quarantined
    assert res.accepted == 1 and res.quarantined == 2
    q = ws.quarantine(res.version)
    assert q["source_line"].to_list() == [3, 4]
    assert "not a JSON object" in q["reason"][0] and "malformed JSON" in q["reason"][1]
    assert q["raw"][1].startswith('{"instruction"')


def test_invalid_utf8_in_csv_and_json_array(ws, tmp_path):
    c = tmp_path / "u.csv"
    c.write_bytes(b"instruction,output\nq1,a1\nq\xff2,a2\nq3,a3\n")
    res = ingest(ws, [c], "u")
    assert (res.rows_in, res.accepted, res.quarantined) == (3, 2, 1)
    assert ws.load(res.version)["source_line"].to_list() == [2, 4]
    q = ws.quarantine(res.version)
    assert q["source_line"].to_list() == [3] and q["reason"][0].startswith("invalid UTF-8")
    j = tmp_path / "u.json"
    j.write_bytes(b'[{"instruction": "a", "output": "b"},\n {"instruction": "\xc3(", "output": "b"}]')
    res = ingest(ws, [j], "uj")
    assert (res.rows_in, res.accepted, res.quarantined) == (2, 1, 1)
    assert ws.quarantine(res.version)["source_line"].to_list() == [2]


def test_strict_refuses_and_writes_nothing(ws, tmp_path):
    f = tmp_path / "s.jsonl"
    f.write_text(json.dumps(GOOD) + "\n{oops\n")
    with pytest.raises(BakeoffError, match=r"--strict: 1 of 2 records quarantined.*s\.jsonl:2"):
        ingest(ws, [f], "s", strict=True)
    assert ws.versions("s") == []
    clean = tmp_path / "clean.jsonl"
    clean.write_text(json.dumps(GOOD) + "\n")
    assert ingest(ws, [clean], "s", strict=True).accepted == 1


@pytest.mark.parametrize("setup,match", [
    (lambda p: None, "no such file"),
    (lambda p: p.mkdir(), "directory has no input files"),
    (lambda p: p.write_bytes(b"\x00\x01garbage"), "unsupported file type"),
    (lambda p: p.with_suffix(".gz").write_bytes(b"not gzip") or None, None),
])
def test_unreadable_files_are_one_line_errors(ws, tmp_path, setup, match):
    p = tmp_path / "input.bin"
    setup(p)
    target = p.with_suffix(".gz") if match is None else p
    with pytest.raises(BakeoffError) as e:
        ingest(ws, [target], "u")
    assert "\n" not in str(e.value)
    if match:
        assert match in str(e.value)
    assert ws.versions("u") == []


def test_broken_parquet_and_gzip(ws, tmp_path):
    pq = tmp_path / "x.parquet"
    pq.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(BakeoffError, match="cannot read Parquet"):
        ingest(ws, [pq], "p")
    gz = tmp_path / "x.jsonl.gz"
    gz.write_bytes(gzip.compress(b'{"prompt": "p", "completion": "c"}\n')[:-8])
    with pytest.raises(BakeoffError, match="gzip"):
        ingest(ws, [gz], "g")


def test_cli_errors_are_one_line_and_strict_exits_nonzero(tmp_path):
    env = {**os.environ, "BAKEOFF_WORKSPACE": str(tmp_path / "ws")}
    f = tmp_path / "s.jsonl"
    f.write_text(json.dumps(GOOD) + "\n{oops\n")
    code = ("import sys; from bakeoff.cli import main; sys.argv = ['bakeoff'] + sys.argv[1:]; main()")
    run = lambda *args: subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env)
    r = run("data", "ingest", str(tmp_path / "missing.jsonl"), "--name", "m")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error:") and "no such file" in r.stderr
    r = run("data", "ingest", str(f), "--name", "s", "--strict", "--json")
    assert r.returncode == 1 and "Traceback" not in r.stderr and r.stdout == ""
    from click.testing import CliRunner

    from bakeoff.cli import cli

    r = CliRunner().invoke(cli, ["--workspace", env["BAKEOFF_WORKSPACE"], "data", "ingest", str(f),
                                 "--name", "s", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["version"] == "s@v1" and (doc["rows_in"], doc["accepted"], doc["quarantined"]) == (2, 1, 1)
    assert doc["detected"] == {str(f): "messages"}
