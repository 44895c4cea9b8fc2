"""Fault injection: ``kill -9`` at several points of ``data ingest``, ``curate
run`` and ``train sft --model tiny``, and a full disk. After each fault the
workspace is consistent (every catalog version readable, with its rows and
digest; no temp or orphan folder left once it is opened again), and rerunning
the command works."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest

from bakeoff.curate.ingest import ingest
from bakeoff.schema import version_digest
from bakeoff.workspace import Workspace

ENV = {**os.environ, "BAKEOFF_BATCH_BYTES": str(64 << 10), "BAKEOFF_LOCK_TIMEOUT": "120",
       "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING": "false",
       "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}


def bakeoff_cmd(root: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "bakeoff.cli", "--workspace", str(root), *map(str, args)]


def check_consistent(root: Path) -> Workspace:
    """Open the workspace (which sweeps leftovers) and check every version."""
    ws = Workspace(root)
    known = set()
    for v in ws.versions():
        known.add(v.path)
        df = ws.load(v)
        assert df.height == v.rows, v.ref
        assert version_digest(df) == v.digest, v.ref
        q = ws.quarantine(v)
        if v.operation == "ingest":
            assert v.counts["rows_in"] == v.rows + q.height, v.ref
    on_disk = {str(p.relative_to(ws.root)) for base in (ws.root / "versions").iterdir() for p in base.iterdir()}
    assert on_disk == known, on_disk - known  # no temp folder, no orphan vN
    return ws


def kill_when(cmd: list[str], ready: Callable[[], bool], timeout: float = 300) -> bool:
    """Run ``cmd`` and SIGKILL it as soon as ``ready()``; False if it finished first."""
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if ready():
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(30)
                return True
            time.sleep(0.01)
        assert proc.poll() is not None, "command did not finish"
        assert proc.returncode == 0, proc.stderr.read().decode()[-2000:]
        return False
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def after(seconds: float) -> Callable[[], bool]:
    start = time.monotonic()
    return lambda: time.monotonic() - start >= seconds


def exists(pattern_root: Path, pattern: str) -> Callable[[], bool]:
    return lambda: pattern_root.exists() and any(pattern_root.glob(pattern))


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """8k chat rows (~1.3 MB, ~20 batches at the test batch size) with some bad
    lines and repeated content."""
    d = tmp_path_factory.mktemp("corpus")
    f = d / "chat.jsonl"
    with open(f, "w") as fh:
        for i in range(8_000):
            if i % 997 == 5:
                fh.write('{"messages": [\n')
                continue
            k = i % 6_000  # a quarter of the rows repeat earlier content
            fh.write(json.dumps({"messages": [
                {"role": "user", "content": f"What was the revenue in quarter {k % 4 + 1} of year {2000 + k}?"},
                {"role": "assistant", "content": f"The revenue was {k * 13 % 1000} million ({k})."}],
                "meta": {"domain": "finance", "task": "qa"}}) + "\n")
    return f


def test_kill_ingest_at_several_points(tmp_path, corpus):
    root = tmp_path / "ws"
    run(bakeoff_cmd(root, "data", "ingest", corpus, "--name", "d"))  # v1, and the time one ingest takes
    start = time.monotonic()
    run(bakeoff_cmd(root, "data", "ingest", corpus, "--name", "d"))
    full = time.monotonic() - start
    base = root / "versions" / "d"
    points = {
        "temp folder created": exists(base, ".tmp-*"),
        "first batch written": exists(base, ".tmp-*/rows.parquet"),
        **{f"{f:.0%} of a run": after(f * full) for f in (0.5, 0.8, 0.95)},
    }
    killed = 0
    for label, ready in points.items():
        before = [v.ref for v in Workspace(root).versions("d")]
        killed += kill_when(bakeoff_cmd(root, "data", "ingest", corpus, "--name", "d"), ready)
        ws = check_consistent(root)
        after_kill = [v.ref for v in ws.versions("d")]
        assert after_kill[:len(before)] == before, label  # nothing committed earlier is lost
        v = ingest(ws, [corpus], "d").version  # the rerun works (in this process: faster)
        ws = check_consistent(root)
        assert ws.load(v).height == ws.load("d@v1").height and v.digest == ws.resolve("d@v1").digest
    assert killed >= 3


RECIPE = """
output: clean
steps:
  - filter: {}
  - dedup: {threshold: 0.8}
"""


def test_kill_curate_run_at_several_points(tmp_path, corpus):
    root = tmp_path / "ws"
    small = tmp_path / "small.jsonl"
    small.write_text("".join(corpus.read_text().splitlines(keepends=True)[:1500]))
    run(bakeoff_cmd(root, "data", "ingest", small, "--name", "d"))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE)
    cmd = bakeoff_cmd(root, "curate", "run", "d@v1", recipe, "--intermediate")
    start = time.monotonic()
    run(cmd)
    full = time.monotonic() - start
    points = {"temp folder of a result": exists(root / "versions", "clean*/.tmp-*"),
              **{f"{f:.0%} of a run": after(f * full) for f in (0.7,)}}
    for label, ready in points.items():
        kill_when(cmd, ready)
        check_consistent(root)
        run(cmd)  # the rerun works
        ws = check_consistent(root)
        assert ws.load("clean").height == ws.load("clean@v1").height, label


@pytest.fixture(scope="module")
def sft_data(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("sft")
    f = d / "sft.jsonl"
    f.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": f"what is {i} plus {i}?"},
        {"role": "assistant", "content": f"{2 * i} is {i} plus {i}."}]}) + "\n" for i in range(32)))
    return f


def test_kill_train_sft_then_resume(tmp_path, sft_data):
    """Killed right after its first checkpoint, mid-way through the second step:
    the run's checkpoints are complete, and ``--resume`` finishes the run."""
    from bakeoff.train.checkpoints import last_checkpoint, list_checkpoints

    root = tmp_path / "ws"
    run(bakeoff_cmd(root, "data", "ingest", sft_data, "--name", "d"))
    args = ["train", "sft", "--dataset", "d", "--model", "tiny", "--experiment_name", "e",
            "--max-steps", "3", "--save-steps", "1", "--json"]
    runs = root / "runs" / "e"
    assert kill_when(bakeoff_cmd(root, *args), exists(runs, "*/checkpoint-1/bakeoff_checkpoint.json"))
    ws = check_consistent(root)
    metas = list_checkpoints(ws, "e")
    assert metas, "the first checkpoint was complete when the run was killed"
    for m in metas:
        assert (Path(m.path) / "trainer_state.json").exists()
        assert any(Path(m.path).glob("*.safetensors"))
    run_dir = Path(metas[0].path).parent
    assert last_checkpoint(run_dir) is not None
    out = json.loads(run(bakeoff_cmd(root, *args, "--resume")).stdout)
    assert out["run_id"] == run_dir.name
    assert max(m.step for m in list_checkpoints(ws, "e")) == 3
    check_consistent(root)


def _mount_small_fs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None:
        return False
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                       capture_output=True, text=True)
    return r.returncode == 0


def test_disk_full_is_a_one_line_error_and_leaves_the_workspace_consistent(tmp_path, corpus):
    small = tmp_path / "small-fs"
    if not _mount_small_fs(small, "2m"):
        pytest.skip("cannot mount a small tmpfs here (needs root or CAP_SYS_ADMIN)")
    try:
        root = small / "ws"
        tiny = tmp_path / "tiny.jsonl"
        tiny.write_text("".join(corpus.read_text().splitlines(keepends=True)[:50]))
        big = tmp_path / "big.jsonl"  # ~4 MB that does not compress: more than the disk holds
        big.write_text("".join(json.dumps({"prompt": os.urandom(300).hex(), "completion": str(i)}) + "\n"
                               for i in range(6000)))
        run(bakeoff_cmd(root, "data", "ingest", tiny, "--name", "d"))
        r = subprocess.run(bakeoff_cmd(root, "data", "ingest", big, "--name", "d"), env=ENV,
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
        assert r.stderr.strip().splitlines()[-1].startswith("error: the disk is full"), r.stderr[-1000:]
        ws = check_consistent(root)
        assert [v.ref for v in ws.versions()] == ["d@v1"] and ws.load("d").height == 49  # line 6 is bad
        run(bakeoff_cmd(root, "data", "ingest", tiny, "--name", "d"))  # works again once there is room
        assert check_consistent(root).resolve("d").number == 2
    finally:
        subprocess.run(["umount", "-l", str(small)], capture_output=True)
