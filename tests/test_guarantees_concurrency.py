"""Concurrent writers: several processes committing versions of one dataset at
once never lose a committed version, and a held lock is a one-line error."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import polars as pl
import pytest

from bakeoff.workspace import BakeoffError, Workspace

WRITER = textwrap.dedent("""
    import sys
    import polars as pl
    from bakeoff.schema import with_ids, conform
    from bakeoff.workspace import Workspace
    root, who, commits = sys.argv[1], sys.argv[2], int(sys.argv[3])
    for i in range(commits):
        ws = Workspace(root)   # every open sweeps too: the sweep must not race the others' commits
        rows = with_ids(conform(pl.DataFrame({
            "kind": ["sft"], "messages": [[{"role": "user", "content": f"{who}-{i}"},
                                           {"role": "assistant", "content": "a"}]]})))
        v = ws.commit_version("shared", rows, operation="stress")
        print(v.ref, flush=True)
""")


def test_concurrent_writers_keep_every_committed_version(tmp_path):
    """N processes x M commits on one dataset: every version a writer was told it
    committed is in the catalog and readable (before the sweep took the catalog
    lock, 6 x 40 lost 2 versions' folders)."""
    root = tmp_path / "ws"
    Workspace(root)
    n_proc, commits = 4, 12
    env = {**os.environ, "BAKEOFF_LOCK_TIMEOUT": "120"}
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(root), f"w{k}", str(commits)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for k in range(n_proc)]
    refs = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
        refs += out.split()
    assert len(refs) == len(set(refs)) == n_proc * commits
    ws = Workspace(root)
    versions = ws.versions("shared")
    assert sorted(v.ref for v in versions) == sorted(refs)
    assert [v.number for v in versions] == list(range(1, n_proc * commits + 1))
    contents = set()
    for v in versions:
        df = ws.load(v)  # raised FileNotFoundError for a swept version before the fix
        assert df.height == 1
        contents.add(df["messages"][0][0]["content"])
    assert len(contents) == n_proc * commits


HOLDER = textwrap.dedent("""
    import sys, time, duckdb
    con = duckdb.connect(sys.argv[1])
    print("HOLDING", flush=True)
    time.sleep(120)
""")


def test_held_lock_is_a_one_line_error_naming_the_holder(tmp_path, monkeypatch):
    root = tmp_path / "ws"
    Workspace(root)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(root / "catalog.duckdb")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "HOLDING"
        monkeypatch.setenv("BAKEOFF_LOCK_TIMEOUT", "1")
        with pytest.raises(BakeoffError) as exc:
            Workspace(root).versions()
        msg = str(exc.value)
        assert f"locked by pid {holder.pid}" in msg and "started at" in msg and "\n" not in msg
        # and through the CLI: one line on stderr, no traceback
        env = {**os.environ, "BAKEOFF_LOCK_TIMEOUT": "1"}
        r = subprocess.run([sys.executable, "-m", "bakeoff.cli", "--workspace", str(root), "data", "list"],
                           capture_output=True, text=True, env=env, timeout=120)
        assert r.returncode == 1 and "Traceback" not in r.stderr
        assert r.stderr.startswith("error: the workspace is locked by pid"), r.stderr
    finally:
        holder.kill()
        holder.wait()


def test_stale_temp_folder_is_swept_on_open_but_a_live_writers_is_kept(tmp_path):
    import fcntl

    root = tmp_path / "ws"
    ws = Workspace(root)
    base = root / "versions" / "d"
    dead, live = base / ".tmp-dead", base / ".tmp-live"
    for d in (dead, live):
        d.mkdir(parents=True)
        (d / "rows.parquet").write_bytes(b"x" * 1000)
        (d / ".writer.lock").touch()
    fd = os.open(live / ".writer.lock", os.O_RDWR)  # a live writer holds its flock
    fcntl.flock(fd, fcntl.LOCK_EX)
    child = subprocess.run([sys.executable, "-c", "import sys; from bakeoff.workspace import Workspace; "
                            "Workspace(sys.argv[1])", str(root)], capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, child.stderr
    assert not dead.exists()  # swept at once, not after an hour
    assert live.exists()
    os.close(fd)
    Workspace(root)
    assert not live.exists()
    del ws


SWEEPER = textwrap.dedent("""
    import sys, time
    import polars as pl
    import bakeoff.workspace as w
    from bakeoff.schema import with_ids, conform
    ws = w.Workspace(sys.argv[1])
    (ws.root / "versions" / "d" / "v99").mkdir(parents=True)  # an orphan for the sweep to remove
    real_rmtree = w.shutil.rmtree
    def rmtree(path, *a, **k):
        if str(path).endswith("v99"):  # the sweep deleting the orphan
            print("SWEEPING", flush=True)
            time.sleep(30)
        real_rmtree(path, *a, **k)
    w.shutil.rmtree = rmtree
    rows = with_ids(conform(pl.DataFrame({"kind": ["sft"], "messages": [[{"role": "user", "content": "q"},
                                                                         {"role": "assistant", "content": "a"}]]})))
    ws.commit_version("d", rows, operation="test")
""")


def test_sweep_runs_under_the_catalog_lock(tmp_path, monkeypatch):
    """The cause of lost versions: the sweep listed the catalog, released the lock,
    then deleted. While a sweep deletes, no other process may commit."""
    root = tmp_path / "ws"
    Workspace(root)
    child = subprocess.Popen([sys.executable, "-c", SWEEPER, str(root)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "SWEEPING"
        monkeypatch.setenv("BAKEOFF_LOCK_TIMEOUT", "0.5")
        with pytest.raises(BakeoffError, match=f"locked by pid {child.pid}"):
            Workspace(root)  # a writer would commit here, between the sweep's list and its delete
    finally:
        child.kill()
        child.wait()
