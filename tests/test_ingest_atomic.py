"""A write that fails or is killed part-way leaves no half version: the catalog
stays consistent and earlier versions stay readable."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import bakeoff.workspace as workspace_mod
from bakeoff.curate.ingest import ingest
from bakeoff.workspace import Workspace


def _file(tmp_path, name, n):
    f = tmp_path / name
    f.write_text("".join(json.dumps({"prompt": f"p{i} {name}", "completion": f"c{i}"}) + "\n" for i in range(n)))
    return f


def _assert_consistent(ws: Workspace, name: str, expected_rows: list[int]):
    versions = ws.versions(name)
    assert [v.rows for v in versions] == expected_rows
    for v in versions:
        assert ws.load(v).height == v.rows
    # no folder that the catalog does not point to survives a later write
    known = {v.path for v in versions}
    on_disk = {str(p.relative_to(ws.root)) for p in (ws.root / "versions" / name).iterdir()
               if not p.name.startswith(".tmp-")}
    assert on_disk == known


def test_failure_after_temp_folder_written_leaves_nothing(ws, tmp_path, monkeypatch):
    ingest(ws, [_file(tmp_path, "a.jsonl", 5)], "d")
    calls = []

    def failing_rename(src, dst):
        calls.append((src, dst))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(workspace_mod.os, "rename", failing_rename)
    with pytest.raises(OSError):
        ingest(ws, [_file(tmp_path, "b.jsonl", 7)], "d")
    monkeypatch.undo()
    assert calls, "the failure must happen after the temp folder was written"
    assert not any(p.name.startswith(".tmp-") for p in (ws.root / "versions" / "d").iterdir())
    _assert_consistent(ws, "d", [5])
    # the next write takes the next number and works
    v = ingest(ws, [_file(tmp_path, "c.jsonl", 3)], "d").version
    assert v.number == 2
    _assert_consistent(ws, "d", [5, 3])


CHILD = textwrap.dedent("""
    import os, sys, time
    import bakeoff.workspace as w
    from bakeoff.curate.ingest import ingest
    point = sys.argv[3]
    real_rename, real_fsync_dir = os.rename, w._fsync_dir

    def rename(src, dst):
        real_rename(src, dst)
        if point == "after-rename":   # folder in place, catalog row not committed
            print("READY", flush=True); time.sleep(60)

    def fsync_dir(path):
        real_fsync_dir(path)
        if point == "temp-written" and os.path.basename(str(path)).startswith(".tmp-"):
            print("READY", flush=True); time.sleep(60)

    w.os.rename = rename
    w._fsync_dir = fsync_dir
    ingest(w.Workspace(sys.argv[1]), [sys.argv[2]], "d")
    print("DONE", flush=True)
""")


@pytest.mark.parametrize("point", ["temp-written", "after-rename"])
def test_sigkill_mid_commit_keeps_catalog_consistent(tmp_path, point):
    root = tmp_path / "ws"
    ws = Workspace(root)
    ingest(ws, [_file(tmp_path, "a.jsonl", 4)], "d")
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(root), str(_file(tmp_path, "b.jsonl", 9)), point],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        deadline = time.time() + 120
        line = ""
        while time.time() < deadline:
            line = child.stdout.readline()
            if line.strip() in ("READY", "DONE") or not line:
                break
        assert line.strip() == "READY", line
        os.kill(child.pid, signal.SIGKILL)
        child.wait(30)
    finally:
        if child.poll() is None:
            child.kill()
    ws = Workspace(root)
    assert [v.rows for v in ws.versions("d")] == [4]
    assert ws.load("d@v1").height == 4 and ws.load("d").height == 4
    v = ingest(ws, [_file(tmp_path, "c.jsonl", 2)], "d").version
    assert v.ref == "d@v2"
    assert ws.load("d@v2").height == 2
    _assert_consistent(ws, "d", [4, 2])
