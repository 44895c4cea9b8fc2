"""The coverage report as partials of chunks of rows, merged, and on Ray
(a partial per block on the workers): the same report as the local one.

Reports are compared whole and exactly (as JSON): the diversity figures are
rounded to 4 decimals in the report; unrounded, the merged per-cell
diversity (float64 sums added per chunk) is held to within 1e-9 of the
whole-frame one. One local Ray instance (2 CPUs, no dashboard) serves the
module; without the ``ray`` extra the Ray tests skip with the reason.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bakeoff.curate.coverage import (cell_diversity, coverage_partial, coverage_report, load_objectives,
                                     merge_partials, report_from_partial)
from bakeoff.executor import Executor
from bakeoff.workspace import Workspace

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
DEMO_OBJECTIVES = ROOT / "curate" / "demo_objectives.yaml"
RAY = Executor("ray", num_cpus=2)
BLOCK = 37  # rows per block: many blocks, so that merging is exercised


@pytest.fixture(scope="module")
def ray_instance(tmp_path_factory, monkeypatch_module):
    """One local Ray for the module, with the kill hook's folder (workers
    inherit the environment of the instance)."""
    ray = pytest.importorskip("ray", reason="the 'ray' extra is not installed (pip install 'bakeoff[ray]')")
    from bakeoff.curate.on_ray import KILL_ENV

    kill_dir = tmp_path_factory.mktemp("kill")
    monkeypatch_module.setenv(KILL_ENV, str(kill_dir))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
             configure_logging=True)
    yield kill_dir
    ray.shutdown()


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Workspace:
    """The demo workspace: ``pool`` (four domains, off-objective ones among
    them) and ``fin-train``."""
    from bakeoff.demo_data import make_demo_workspace

    ws = Workspace(tmp_path_factory.mktemp("covray") / "ws")
    make_demo_workspace(ws, scale=0.5)
    return ws


@pytest.fixture(scope="module")
def real(tmp_path_factory) -> tuple[Workspace, str]:
    """~2,000 real rows: TAT-QA (finance tables, labelled) and the DPO demo
    (preference rows, unlabelled)."""
    from bakeoff.curate.ingest import ingest

    paths = [DATA / "tatqa_dev.jsonl", DATA / "dpo_en_demo.json"]
    for p in paths:
        if not p.exists():
            pytest.skip(f"{p} not present (the real data lives in ../shared/data)")
    ws = Workspace(tmp_path_factory.mktemp("covray-real") / "ws")
    return ws, ingest(ws, paths, "real").version.ref


def _source(ws: Workspace, ref: str):
    from bakeoff.curate.on_ray.rows import RowSource

    return RowSource([ws.version_dir(ws.resolve(ref)) / "rows.parquet"])


def _same(local: dict, on_ray: dict) -> None:
    on_ray = dict(on_ray)
    on_ray.pop("ray")
    assert json.dumps(on_ray, indent=1) == json.dumps(local, indent=1)


def _chunk_partials(df: pl.DataFrame, obj, ws, per: int, **kw) -> list:
    df = df.with_row_index("_row")
    prototypes: dict = {}
    return [coverage_partial(df.slice(s, per), obj, ws, prototypes=prototypes, **kw)
            for s in range(0, df.height, per)]


# --- partials and merge (no Ray) -------------------------------------------------------------

@pytest.mark.parametrize("diversity", [True, False])
def test_partials_of_chunks_merge_to_the_whole_report(demo, diversity):
    obj = load_objectives(DEMO_OBJECTIVES)
    df = demo.load("pool")
    whole = coverage_partial(df, obj, demo, diversity=diversity, examples=7)
    parts = _chunk_partials(df, obj, demo, BLOCK, diversity=diversity, examples=7)
    random.Random(0).shuffle(parts)  # the order blocks come back in is any
    merged = merge_partials(parts)
    local = coverage_report(df, obj, demo, diversity=diversity, examples=7, dataset="pool")
    assert report_from_partial(whole, obj, dataset="pool") == local
    assert json.dumps(report_from_partial(merged, obj, dataset="pool")) == json.dumps(local)
    # the test has teeth: off-objective rows of several domains, examples of each, gaps
    assert len(local["axes"]["domain"]["off_objective"]) >= 2 and len(local["off_objective"]["examples"]) == 7
    assert {e["domain"] for e in local["off_objective"]["examples"]} >= {"invoices", "contracts"}
    if diversity:
        exact, summed = cell_diversity(whole), cell_diversity(merged)
        assert exact.keys() == summed.keys() and sum(v is not None for v in exact.values()) >= 3
        for cell, value in exact.items():
            assert value is None or abs(summed[cell] - value) < 1e-9, cell
    else:
        assert local["diversity"] == {"measured": False, "overall": None}


def test_no_rows(ws):
    obj = load_objectives(DEMO_OBJECTIVES)
    from bakeoff.schema import empty_frame

    rep = coverage_report(empty_frame(), obj, ws)
    assert rep["rows"] == 0 and rep["off_objective"]["rows"] == 0 and rep["lengths"]["by_domain"] == {}
    assert [c["count"] for c in rep["cells"]] == [0, 0] and {g["kind"] for g in rep["gaps"]} == {"cell", "axis"}
    assert rep["diversity"] == {"measured": False, "overall": None}


# --- on Ray ------------------------------------------------------------------------------

@pytest.mark.parametrize("diversity", [True, False])
def test_coverage_on_ray_equals_local_on_the_demo(ray_instance, demo, diversity):
    from bakeoff.curate.on_ray.coverage import coverage_on_ray

    obj = load_objectives(DEMO_OBJECTIVES)
    local = coverage_report(demo.load("pool"), obj, demo, model="hashing", diversity=diversity, examples=7,
                            dataset="pool@v1")
    on_ray = coverage_on_ray(_source(demo, "pool"), obj, RAY, model="hashing", diversity=diversity, examples=7,
                             dataset="pool@v1", rows_per_block=BLOCK)
    assert on_ray["ray"]["blocks"] >= -(-local["rows"] // BLOCK) > 4
    _same(local, on_ray)
    assert local["gaps"] and local["off_objective"]["rows"] > 20


def test_coverage_on_ray_equals_local_on_real_rows(ray_instance, real, monkeypatch):
    """TAT-QA and DPO rows in blocks of 37; the driver reads no rows (a
    Parquet read there fails)."""
    from bakeoff.curate.on_ray.coverage import coverage_on_ray

    ws, ref = real
    obj = load_objectives(DEMO_OBJECTIVES)
    df = ws.load(ref)
    local = coverage_report(df, obj, ws, model="hashing", dataset=ref)

    def refuse(*args, **kwargs):
        raise AssertionError("coverage on Ray read rows on the driver")

    monkeypatch.setattr(pl, "read_parquet", refuse)
    monkeypatch.setattr(pl, "scan_parquet", refuse)
    monkeypatch.setattr(pq.ParquetFile, "iter_batches", refuse)
    monkeypatch.setattr(pq.ParquetFile, "read_row_group", refuse)
    on_ray = coverage_on_ray(_source(ws, ref), obj, RAY, model="hashing", dataset=ref, rows_per_block=BLOCK)
    monkeypatch.undo()
    _same(local, on_ray)
    assert 1900 <= local["rows"] == df.height and local["diversity"]["measured"]
    assert {"label", "keyword"} <= set(local["axes"]["domain"]["values"]["finance-tables"]["by_method"])
    assert local["off_objective"]["rows"] >= 250  # the DPO rows are not finance tables


def test_a_block_sends_the_driver_a_few_bytes_per_row(real):
    """What a worker sends back for a block of the real rows: one row holding
    the pickled partial, ~12 bytes per row plus the counts and cell sums --
    a few percent of the rows' texts, and no vector."""
    import pickle

    from bakeoff.curate.on_ray.coverage import _PartialReport

    ws, ref = real
    df = ws.load(ref)
    actor = _PartialReport(load_objectives(DEMO_OBJECTIVES), "hashing", True, 5)
    out = actor(df.with_row_index("_row").with_columns(pl.col("_row").cast(pl.Int64) + 100).to_arrow())
    assert out.num_rows == 1 and out["rows"][0].as_py() == df.height
    blob = out["partial"][0].as_py()
    part = pickle.loads(blob)
    assert part.first_row == 100 and part.rows == df.height and part.lengths.height == df.height
    texts = df.select(pl.concat_str(
        [pl.col(c).list.eval(pl.element().struct.field("content")).list.join("") for c in ("messages", "chosen")],
        ignore_nulls=True).str.len_bytes().sum()).item()
    assert len(blob) < 16 * df.height + 64_000 < 0.05 * texts, (len(blob), texts)
    assert actor(pa.table({"_row": pa.array([], pa.int64())})).num_rows == 0


def test_coverage_on_ray_of_no_rows(ray_instance, demo, tmp_path):
    from bakeoff.curate.on_ray.coverage import coverage_on_ray
    from bakeoff.curate.on_ray.rows import RowSource

    path = tmp_path / "empty.parquet"
    pq.write_table(pq.read_schema(demo.version_dir(demo.resolve("pool")) / "rows.parquet").empty_table(), path)
    obj = load_objectives(DEMO_OBJECTIVES)
    from bakeoff.schema import empty_frame

    _same(coverage_report(empty_frame(), obj, demo), coverage_on_ray(RowSource([path]), obj, RAY))


def test_recipe_and_cli_coverage_on_ray_equal_local(ray_instance, demo, tmp_path):
    """A recipe whose coverage step reads the filter step's output (a scratch
    file), and ``curate coverage --executor ray``: the local reports."""
    from click.testing import CliRunner

    from bakeoff.cli import cli
    from bakeoff.curate.recipe import parse_recipe, run_recipe

    recipe = parse_recipe({"name": "cov", "steps": [
        {"filter": {"language": {"enabled": False}}},
        {"coverage": {"objectives": str(DEMO_OBJECTIVES), "html": str(tmp_path / "cov.html"), "examples": 4}}]})
    local = run_recipe(demo, "pool", recipe, name="cov-local")
    on_ray = run_recipe(demo, "pool", recipe, name="cov-ray", executor=RAY)
    assert on_ray.version.digest == local.version.digest
    key = next(k for k in local.reports if k.endswith("coverage"))
    assert local.reports[key]["rows"] == local.version.rows
    _same(local.reports[key], on_ray.reports[key])

    env = {"BAKEOFF_WORKSPACE": str(demo.root)}
    out = {}
    for kind in ("local", "ray"):
        res = CliRunner().invoke(cli, ["curate", "coverage", "fin-train", "--objectives", str(DEMO_OBJECTIVES),
                                       "--model", "hashing", "--executor", kind, "--json"], env=env)
        assert res.exit_code == 0, res.output
        out[kind] = json.loads(res.stdout)
    _same(out["local"], out["ray"])
    assert out["local"]["gaps"]


def test_an_actor_killed_mid_report_is_replaced(ray_instance, demo):
    """A worker of the pool dies on a block (as a machine lost mid-step):
    Ray starts another and runs the block again -- the same report."""
    from bakeoff.curate.on_ray.coverage import coverage_on_ray

    obj = load_objectives(DEMO_OBJECTIVES)
    local = coverage_report(demo.load("pool"), obj, demo, model="hashing", dataset="pool@v1")
    (ray_instance / "kill-once").touch()  # the first block that sees it kills its actor
    on_ray = coverage_on_ray(_source(demo, "pool"), obj, RAY, model="hashing", dataset="pool@v1",
                             rows_per_block=BLOCK)
    assert not (ray_instance / "kill-once").exists()  # an actor did die
    _same(local, on_ray)
