"""Semantic dedup on Ray (a partitioned search) against the local step: the
same removed rows, partners, cosines, ledger and report, with the exact flat
index and with a forced IVF index (where which pairs are found depends on the
cells and the batches), on the demo corpus and on real rows; and the driver
never receives the vectors.

One local Ray instance (2 CPUs, no dashboard) serves the module; without the
``ray`` extra the tests skip with the reason.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from bakeoff.curate.semantic import SemanticDedupConfig, semantic_dedup_rows
from bakeoff.executor import Executor
from bakeoff.workspace import Workspace

RAY = Executor("ray", num_cpus=2)
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
#: report fields that describe the executor rather than the result
PATH_FIELDS = ("seconds", "embeddings", "ray")


@pytest.fixture(scope="module")
def ray_instance(tmp_path_factory):
    """One local Ray for the module; the kill hook's folder is set before it
    starts (workers inherit the environment of the instance)."""
    import os

    ray = pytest.importorskip("ray", reason="the 'ray' extra is not installed (pip install 'bakeoff[ray]')")
    from bakeoff.curate.on_ray import KILL_ENV

    kill_dir = tmp_path_factory.mktemp("kill")
    old = os.environ.get(KILL_ENV)
    os.environ[KILL_ENV] = str(kill_dir)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
             configure_logging=True)
    try:
        yield ray, kill_dir
    finally:
        ray.shutdown()
        if old is None:
            os.environ.pop(KILL_ENV, None)
        else:
            os.environ[KILL_ENV] = old


@pytest.fixture(scope="module")
def demo_rows(tmp_path_factory) -> pl.DataFrame:
    """The demo's finance training file (planted exact and near duplicates)."""
    from bakeoff.curate.ingest import ingest
    from bakeoff.demo_data import generate

    root = tmp_path_factory.mktemp("semray-demo")
    paths = generate(root / "raw", seed=0, scale=0.5)
    ws = Workspace(root / "ws")
    return ws.load(ingest(ws, [paths["fin-train"]], "fin-train").version.ref)


@pytest.fixture(scope="module")
def real_rows(tmp_path_factory) -> pl.DataFrame:
    """Alpaca rows from ../shared/data, each with a lightly edited copy somewhere
    later in the file (one or two words replaced): ~2,000 rows of one shape for
    the most part, with duplicates across many batches."""
    src = SHARED / "alpaca_en_demo.json"
    if not src.exists():
        pytest.skip(f"real data not found: {src}")
    from bakeoff.curate.ingest import ingest

    rng = random.Random(7)
    records = json.loads(src.read_text())
    edited = []
    for rec in records:
        words = rec["output"].split()
        for _ in range(rng.choice([1, 2, 8])):
            if words:
                words[rng.randrange(len(words))] = rng.choice(["alpha", "beta", "gamma", "delta"])
        edited.append({**rec, "output": " ".join(words)})
    rows = records + edited
    rng.shuffle(rows)
    root = tmp_path_factory.mktemp("semray-real")
    path = root / "alpaca_edited.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ws = Workspace(root / "ws")
    return ws.load(ingest(ws, [path], "alpaca").version.ref)


def _same_result(df: pl.DataFrame, cfg: SemanticDedupConfig) -> tuple:
    local = semantic_dedup_rows(df, SemanticDedupConfig(**vars(cfg)), show_progress=False)
    on_ray = semantic_dedup_rows(df, SemanticDedupConfig(**vars(cfg)), executor=RAY)
    assert on_ray.ledger.equals(local.ledger)
    assert on_ray.rows.equals(local.rows)
    strip = lambda r: {k: v for k, v in r.items() if k not in PATH_FIELDS}  # noqa: E731
    assert strip(on_ray.report) == strip(local.report)
    for field in ("requested", "chunks", "segments_longer_than_window", "window_tokens"):
        assert on_ray.report["embeddings"][field] == local.report["embeddings"][field], field
    return local, on_ray


def test_demo_corpus_flat_and_ivf(ray_instance, demo_rows):
    flat, _ = _same_result(demo_rows, SemanticDedupConfig(threshold=0.9, model="hashing", keep="longest"))
    assert flat.ledger.height > 5 and flat.report["search"]["index"] == "flat"
    ivf, _ = _same_result(demo_rows, SemanticDedupConfig(threshold=0.9, model="hashing", index="ivf",
                                                         nprobe=2, batch_size=32))
    assert ivf.report["search"]["index"].startswith("ivf(")


def test_keep_quality_and_a_killed_worker(ray_instance, demo_rows):
    """keep=quality (a column with missing scores and ties) gives the local
    result even when a worker dies mid-step (Ray retries its work); a
    non-numeric score column is the local one-line error."""
    from bakeoff.workspace import BakeoffError

    _, kill_dir = ray_instance
    scores = pl.Series("quality", [None if i % 7 == 0 else float(i % 4) for i in range(demo_rows.height)])
    rows = demo_rows.with_columns(scores)
    (kill_dir / "kill-once").touch()  # the first batch that sees it kills its worker
    local, _ = _same_result(rows, SemanticDedupConfig(threshold=0.9, model="hashing", keep="quality"))
    assert not (kill_dir / "kill-once").exists()  # the worker did die
    assert local.ledger.height > 5
    bad = demo_rows.with_columns(pl.lit("high").alias("quality"))
    with pytest.raises(BakeoffError, match="keep=quality: column 'quality' is not numeric"):
        semantic_dedup_rows(bad, SemanticDedupConfig(model="hashing", keep="quality"), executor=RAY)


def test_real_rows_flat_and_forced_ivf(ray_instance, real_rows):
    """With nprobe=1 over many small batches, IVF misses pairs that flat finds:
    the Ray search must miss exactly the same ones (cells and batch structure)."""
    base = dict(threshold=0.85, model="hashing", batch_size=128)
    flat, _ = _same_result(real_rows, SemanticDedupConfig(**base, index="flat"))
    ivf, _ = _same_result(real_rows, SemanticDedupConfig(**base, index="ivf", flat_max=100, nprobe=1))
    assert real_rows.height > 1500
    assert flat.ledger.height > 200
    assert ivf.report["search"]["index"].startswith("ivf(nlist=")
    assert 0 < ivf.ledger.height < flat.ledger.height  # the probes matter here: the test has teeth


def test_the_driver_never_receives_the_vectors(ray_instance, real_rows, monkeypatch):
    """Every object the driver gets from the cluster, summed, is a small
    fraction of the vectors (384 float32 per segment)."""
    import pyarrow as pa

    from bakeoff.curate.on_ray import dataset_from_table
    from bakeoff.curate.on_ray.semantic import semantic_dedup_on_ray

    ray, _ = ray_instance
    received: list[int] = []
    real_get = ray.get

    def size(obj) -> int:
        if isinstance(obj, (list, tuple)):
            return sum(size(o) for o in obj)
        if isinstance(obj, dict):
            return sum(size(o) for o in obj.values())
        if isinstance(obj, (pa.Table, np.ndarray)):
            return obj.nbytes
        if isinstance(obj, pl.DataFrame):
            return obj.estimated_size()
        return 0

    def get(refs, *args, **kwargs):
        out = real_get(refs, *args, **kwargs)
        received.append(size(out))
        return out

    table = real_rows.with_columns(pl.int_range(pl.len(), dtype=pl.Int64).alias("_row")).to_arrow()
    cfg = SemanticDedupConfig(threshold=0.85, model="hashing", index="ivf", flat_max=100, batch_size=128)
    monkeypatch.setattr(ray, "get", get)
    out = semantic_dedup_on_ray(dataset_from_table(ray, table), real_rows.height, cfg, RAY)
    monkeypatch.undo()
    vector_bytes = out.report["embeddings"]["requested"] * 384 * 4
    assert len(out.removed) > 0 and received
    assert sum(received) < vector_bytes / 20, (sum(received), vector_bytes)
    assert out.report["ray"]["driver_bytes_received"] < vector_bytes / 20
    assert out.removed.dtype == np.int64 and np.all(np.diff(out.removed) > 0)
