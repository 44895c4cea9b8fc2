"""Nothing is written outside the workspace and nothing is deleted that bakeoff
did not write: names that become paths follow one rule, ``data export --force``
replaces only its own exports, and errors are one line (no traceback)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from bakeoff.cli import cli
from bakeoff.console import out
from bakeoff.curate.ingest import ingest
from bakeoff.data_cli import EXPORT_STAMP, export_version
from bakeoff.workspace import NAME_MAX, BakeoffError, parse_ref, validate_name


def _jsonl(path, recs):
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


def _pairs(n, tag="q"):
    return [{"prompt": f"{tag} {i}", "completion": f"a {i}"} for i in range(n)]


def bakeoff(*args, cwd=None):
    """The installed CLI in a subprocess: what a user sees on stderr, tracebacks included."""
    return subprocess.run([sys.executable, "-m", "bakeoff.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=300, cwd=cwd)


# --- the name rule -------------------------------------------------------------------------

@pytest.mark.parametrize("bad", ["fin\n", "../../x", "/abs/path", "..", ".hidden", "a/b", "", "a b",
                                 "x" * (NAME_MAX + 1), "fin\x00", "ｆｉｎ"])
def test_name_rule_rejects_path_tricks(bad):
    with pytest.raises(BakeoffError, match="invalid"):
        validate_name(bad, "experiment name")


def test_name_rule_accepts_names_in_use():
    for good in ("fin", "fin-train", "fin_v2.1", "A0", "x" * NAME_MAX):
        assert validate_name(good) == good
    assert parse_ref("fin@v12") == ("fin", 12)
    with pytest.raises(BakeoffError):
        parse_ref("fin@v1\nx")


def test_dataset_name_with_trailing_newline_or_too_long_is_refused(ws, tmp_path):
    f = _jsonl(tmp_path / "a.jsonl", _pairs(2))
    for bad in ("fin\n", "y" * 300):
        with pytest.raises(BakeoffError, match="invalid dataset name"):
            ingest(ws, [f], bad)
    assert ws.versions() == []


def test_experiment_name_cannot_leave_the_workspace(ws):
    from bakeoff.train.checkpoints import run_dir

    for bad in ("../../x", "/tmp/x", "a/../../b"):
        with pytest.raises(BakeoffError, match="invalid experiment name"):
            run_dir(ws, bad, "run1")
    assert run_dir(ws, "fin", "run1") == ws.runs_dir() / "fin" / "run1"


# --- export --force ---------------------------------------------------------------------------

@pytest.fixture
def one(ws, tmp_path):
    ingest(ws, [_jsonl(tmp_path / "a.jsonl", _pairs(3))], "d")
    return ws


def test_export_force_refuses_the_workspace_and_its_ancestors(one, tmp_path):
    ws = one
    for target in (ws.root, ws.root.parent, ws.root / "versions", ws.root / "catalog.duckdb"):
        for fmt in ("hf", "jsonl"):
            with pytest.raises(BakeoffError):
                export_version(ws, "d", fmt, target, force=True)
    assert ws.load("d").height == 3  # the workspace is intact


def test_export_force_refuses_a_directory_it_did_not_write(one, tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    with pytest.raises(BakeoffError, match="not a bakeoff export"):
        export_version(one, "d", "hf", precious, force=True)
    assert (precious / "thesis.tex").read_text() == "years of work"
    # through the CLI: one line, exit 1
    r = bakeoff("--workspace", one.root, "data", "export", "d", "--format", "hf", "--out", precious, "--force")
    assert r.returncode == 1 and "Traceback" not in r.stderr and "not a bakeoff export" in r.stderr
    assert (precious / "thesis.tex").exists()


def test_export_force_replaces_its_own_previous_export(one, tmp_path):
    out_dir = tmp_path / "hf"
    export_version(one, "d", "hf", out_dir)
    assert (out_dir / EXPORT_STAMP).is_file()
    with pytest.raises(BakeoffError, match="--force"):
        export_version(one, "d", "hf", out_dir)
    res = export_version(one, "d", "hf", out_dir, force=True)
    assert res["rows"] == 3 and (out_dir / EXPORT_STAMP).is_file()
    f = tmp_path / "x.jsonl"
    export_version(one, "d", "jsonl", f)
    export_version(one, "d", "jsonl", f, force=True)
    assert len(f.read_text().splitlines()) == 3
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


# --- CLI: --workspace anywhere, one-line errors, markup in user text -----------------------------

def test_workspace_option_after_the_command(tmp_path):
    f = _jsonl(tmp_path / "f.jsonl", _pairs(2))
    r = CliRunner().invoke(cli, ["data", "ingest", str(f), "--name", "d", "--workspace", str(tmp_path / "w"), "--json"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(cli, ["data", "list", "-w", str(tmp_path / "w"), "--json"])
    assert [d["name"] for d in json.loads(r.output)] == ["d"]


def test_name_too_long_and_bad_names_are_one_line_errors(tmp_path):
    f = _jsonl(tmp_path / "f.jsonl", _pairs(2))
    r = bakeoff("data", "ingest", f, "--name", "n" * 300, "--workspace", tmp_path / "w")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().startswith("error: invalid dataset name") and len(r.stderr.strip().splitlines()) == 1


def test_os_errors_are_one_line_with_advice(tmp_path):
    from bakeoff.cli import os_error_message
    import errno

    msg = os_error_message(OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x")))
    assert msg.startswith("the disk is full") and str(tmp_path) in msg
    long = tmp_path / ("n" * 300)
    r = bakeoff("--workspace", long, "data", "list")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith("error: a file name is too long"), r.stderr


MARKUP = "[/bold] [/] [bold]x[/bold] [link=file:///etc]y[/link] \\[z]"


def test_rich_markup_in_user_text_is_shown_literally(tmp_path, capsys):
    ws_dir = tmp_path / "w"
    f = _jsonl(tmp_path / "m.jsonl", [{"prompt": MARKUP, "completion": MARKUP,
                                       "meta": {"domain": MARKUP, "task": "[/]"}, MARKUP: 1}]
               + [{"prompt": 5, "completion": MARKUP}])
    (tmp_path / "m.jsonl").write_text(f.read_text() + MARKUP + "\n")
    runner = CliRunner()
    r = runner.invoke(cli, ["-w", str(ws_dir), "data", "ingest", str(f), "--name", "m"])
    assert r.exit_code == 0, r.output
    for args in (["data", "quarantine", "m"], ["data", "show", "m", "--rows", "1"]):
        r = runner.invoke(cli, ["-w", str(ws_dir), *args], terminal_width=400)
        assert r.exit_code == 0, (args, r.output, r.exception)
    from bakeoff.workspace import Workspace
    row_id = Workspace(ws_dir).load("m")["id"][0]
    r = runner.invoke(cli, ["-w", str(ws_dir), "data", "why", row_id])
    assert r.exit_code == 0, r.output
    # the raw text appears as written (quarantine table)
    with out.capture() as cap:
        from bakeoff.console import table
        out.print(table("t", ["raw"], [[MARKUP]]))
    assert MARKUP in cap.get()
