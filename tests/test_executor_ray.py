"""The executor switch and curation on Ray: the same versions (content digest)
and the same ledgers as the local path, a worker killed mid-dedup, and a local
default that never imports Ray.

One local Ray instance (2 CPUs, no dashboard) serves the module; without the
``ray`` extra the Ray tests skip with the reason.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from bakeoff.executor import Executor, resolve_executor
from bakeoff.workspace import BakeoffError, Workspace

RAY = Executor("ray", num_cpus=2)


@pytest.fixture(scope="module")
def ray_instance(tmp_path_factory):
    """One local Ray for the module; the kill hook's folder is set before it
    starts (workers inherit the environment of the instance)."""
    ray = pytest.importorskip("ray", reason="the 'ray' extra is not installed (pip install 'bakeoff[ray]')")
    from bakeoff.curate.on_ray import KILL_ENV

    kill_dir = tmp_path_factory.mktemp("kill")
    old = os.environ.get(KILL_ENV)
    os.environ[KILL_ENV] = str(kill_dir)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
             configure_logging=True)
    try:
        yield kill_dir
    finally:
        ray.shutdown()
        if old is None:
            os.environ.pop(KILL_ENV, None)
        else:
            os.environ[KILL_ENV] = old


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo's finance training file (with planted noise and duplicates), ingested."""
    from bakeoff.curate.ingest import ingest
    from bakeoff.demo_data import generate

    root = tmp_path_factory.mktemp("rayws")
    paths = generate(root / "raw", seed=0, scale=0.5)
    ws = Workspace(root / "ws")
    ref = ingest(ws, [paths["fin-train"]], "fin-train").version.ref
    return ws, ref


def _ledger(ws: Workspace, ref: str) -> pl.DataFrame:
    cols = ["row_id", "stage", "rule", "score", "kept_row_id", "similarity", "cluster_id", "detail"]
    return ws.ledger(ref).select(cols).sort(["stage", "row_id"])


def test_default_recipe_local_and_ray_write_the_same_version(ray_instance, demo):
    from bakeoff.curate.recipe import default_recipe_path, load_recipe, run_recipe

    ws, ref = demo
    recipe = load_recipe(default_recipe_path())
    local = run_recipe(ws, ref, recipe, name="local")
    on_ray = run_recipe(ws, ref, recipe, name="ray", executor=RAY)
    assert local.version.rows < ws.resolve(ref).rows  # the recipe removed rows (the test has teeth)
    assert {s["step"]: s["removed"] > 0 for s in local.steps if s["step"] in ("filter", "dedup")} == \
        {"filter": True, "dedup": True}
    assert on_ray.version.digest == local.version.digest
    assert _ledger(ws, on_ray.version.ref).equals(_ledger(ws, local.version.ref))
    assert [s["removed"] for s in on_ray.steps] == [s["removed"] for s in local.steps]


@pytest.mark.parametrize("options", [{"keep": "longest"}, {"scope": "prompt", "threshold": 0.6}])
def test_dedup_on_ray_equals_local(ray_instance, demo, options):
    from bakeoff.curate.dedup import DedupConfig, dedup_rows

    ws, ref = demo
    df = ws.load(ref)
    cfg = DedupConfig(**options)
    local, on_ray = dedup_rows(df, cfg), dedup_rows(df, cfg, executor=RAY)
    assert local.ledger.height > 0
    assert on_ray.ledger.equals(local.ledger)
    assert on_ray.rows.equals(local.rows)


def test_dedup_plain_texts_chains_like_local(ray_instance):
    """A~B, B~C, A!~C: the greedy keeps A and C (C's only partner was removed);
    connected components would remove C. Ray must do what local does."""
    from bakeoff.curate.dedup import DedupConfig, dedup_texts
    from bakeoff.curate.dedup_key import Segments
    from bakeoff.curate.on_ray.minhash import dedup_segments_on_ray

    base = [f"w{i}" for i in range(40)]
    a = " ".join(base)
    b = " ".join(base[:36] + ["x1", "x2", "x3", "x4"])
    c = " ".join(base[:32] + ["x1", "x2", "x3", "x4"] + ["y1", "y2", "y3", "y4"])
    texts = pl.Series("text", [a, b, c, "something else entirely here", a.upper()])
    cfg = DedupConfig(threshold=0.75)
    local = dedup_texts(texts, cfg)
    seg = Segments(texts, pl.Series([], dtype=pl.String), np.arange(6, dtype=np.int64), np.zeros(5, np.int64))
    on_ray = dedup_segments_on_ray(seg, cfg, np.arange(5), RAY)
    assert local.partner.tolist() == [-1, 0, -1, -1, 0]  # C kept; the upper-case copy is exact
    assert on_ray.partner.tolist() == local.partner.tolist()
    assert on_ray.stage.tolist() == local.stage.tolist()
    assert np.allclose(on_ray.similarity, local.similarity)


def test_worker_killed_mid_dedup_leaves_the_workspace_consistent(ray_instance, demo):
    from bakeoff.curate.dedup import DedupConfig, dedup_rows
    from bakeoff.steps import commit_step

    ws, ref = demo
    df = ws.load(ref)
    expected = dedup_rows(df, DedupConfig())
    before = [v.ref for v in ws.versions()]
    (ray_instance / "kill-once").touch()  # the first batch that sees it kills its worker
    try:
        output = dedup_rows(df, DedupConfig(), executor=RAY)
    except Exception:  # noqa: BLE001 - a lost worker may fail the step: nothing may be written then
        assert [v.ref for v in ws.versions()] == before
        output = dedup_rows(df, DedupConfig(), executor=RAY)  # the rerun completes
    assert not (ray_instance / "kill-once").exists()  # the worker did die
    assert [v.ref for v in ws.versions()] == before
    version = commit_step(ws, ref, "dedup", {}, output, name="after-kill")
    assert output.ledger.equals(expected.ledger)
    assert ws.load(version).height == expected.rows.height
    assert ws.ledger(version).height == expected.ledger.height


def test_filter_and_semantic_cli_on_ray(ray_instance, demo):
    from click.testing import CliRunner

    from bakeoff.cli import cli

    ws, ref = demo
    env = {"BAKEOFF_WORKSPACE": str(ws.root)}
    runner = CliRunner()
    refs = {}
    for kind in ("local", "ray"):
        res = runner.invoke(cli, ["curate", "filter", ref, "--executor", kind, "--json"], env=env)
        assert res.exit_code == 0, res.output
        filtered = ws.versions("fin-train")[-1]
        res = runner.invoke(cli, ["curate", "semantic", filtered.ref, "--executor", kind, "--threshold", "0.9",
                                   "--model", "hashing", "--name", f"sem-{kind}", "--json"], env=env)
        assert res.exit_code == 0, res.output
        res = runner.invoke(cli, ["curate", "dedup", filtered.ref, "--executor", kind, "--keep", "longest",
                                   "--name", f"dd-{kind}", "--json"], env=env)
        assert res.exit_code == 0, res.output
        refs[kind] = (filtered, ws.versions(f"sem-{kind}")[-1], ws.versions(f"dd-{kind}")[-1])
    for i in range(3):
        assert refs["ray"][i].digest == refs["local"][i].digest
        assert _ledger(ws, refs["ray"][i].ref).equals(_ledger(ws, refs["local"][i].ref))
    assert ws.ledger(refs["local"][1].ref).height > 0
    assert ws.ledger(refs["local"][2].ref).height > 0


def test_resolve_executor_order(monkeypatch):
    monkeypatch.delenv("BAKEOFF_EXECUTOR", raising=False)
    assert resolve_executor().kind == "local"
    monkeypatch.setenv("BAKEOFF_EXECUTOR", "ray")
    assert resolve_executor().is_ray
    assert resolve_executor(pipeline="local").kind == "local"   # the pipeline file beats the environment
    assert resolve_executor("local", pipeline="ray").kind == "local"  # the command line beats both
    with pytest.raises(BakeoffError, match="unknown executor"):
        resolve_executor("spark")


def test_pipeline_file_executor_key(tmp_path, monkeypatch):
    from bakeoff.pipeline import load_pipeline

    monkeypatch.delenv("BAKEOFF_EXECUTOR", raising=False)
    data = tmp_path / "train.jsonl"
    data.write_text('{"instruction": "q", "output": "a"}\n')
    spec = tmp_path / "pipeline.yaml"
    body = f"datasets:\n  train: {{paths: [{data}]}}\ncurate: {{dataset: train}}\ntestset: {{pools: [train]}}\n"
    spec.write_text(body + "executor: ray\n")
    assert load_pipeline(spec).executor.is_ray
    spec.write_text(body)
    assert load_pipeline(spec).executor.kind == "local"
    monkeypatch.setenv("BAKEOFF_EXECUTOR", "ray")
    assert load_pipeline(spec).executor.is_ray
    spec.write_text(body + "executor: local\n")
    assert load_pipeline(spec).executor.kind == "local"  # the file beats the environment
    spec.write_text(body + "executor: spark\n")
    with pytest.raises(BakeoffError, match="executor: unknown executor 'spark'"):
        load_pipeline(spec)


def test_local_default_never_imports_ray(demo, tmp_path):
    """``curate run`` without --executor (and with --executor local) runs the
    default recipe without importing ray."""
    ws, ref = demo
    code = (
        "import sys, os\n"
        "from click.testing import CliRunner\n"
        "from bakeoff.cli import cli\n"
        "for extra in ([], ['--executor', 'local']):\n"
        "    r = CliRunner().invoke(cli, ['curate', 'run', sys.argv[1], 'default_recipe.yaml', '--name', 'noray',"
        " '--json', *extra])\n"
        "    assert r.exit_code == 0, r.output\n"
        "assert 'ray' not in sys.modules, 'ray was imported'\n"
        "print('ok')\n")
    env = {**os.environ, "BAKEOFF_WORKSPACE": str(ws.root), "BAKEOFF_EMBEDDING_MODEL": "hashing"}
    env.pop("BAKEOFF_EXECUTOR", None)
    out = subprocess.run([sys.executable, "-c", code, ref], env=env, capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1], timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "ok" in out.stdout


def test_dedup_file_mode_on_ray(ray_instance, tmp_path):
    """``curate dedup FILE --executor ray``: the same ledger of removed lines."""
    import json

    from bakeoff.curate.dedup import DedupConfig
    from bakeoff.curate.dedup_cmd import dedup_file

    words = [f"term{i}" for i in range(30)]
    lines = [" ".join(words), " ".join(words[:28] + ["other", "end"]), "unrelated text " * 5,
             " ".join(words).upper(), ""]
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in lines))
    local = dedup_file(path, ledger_path=tmp_path / "local.parquet", config=DedupConfig())
    on_ray = dedup_file(path, ledger_path=tmp_path / "ray.parquet", config=DedupConfig(), executor=RAY)
    assert local["removed"] == 2
    assert pl.read_parquet(tmp_path / "ray.parquet").equals(pl.read_parquet(tmp_path / "local.parquet"))
    assert (on_ray["removed_exact"], on_ray["removed_near"]) == (local["removed_exact"], local["removed_near"])


# --- the streamed recipe: the driver never holds the rows ---------------------------------------

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _filter_dedup_recipe(filters: dict, dedup: dict):
    from bakeoff.curate.recipe import parse_recipe

    return parse_recipe({"name": "stream", "steps": [{"filter": filters}, {"dedup": dedup}]})


def _no_full_load(monkeypatch, batch: int) -> dict[str, int]:
    """Make any load of a whole version fail, write in batches of ``batch``
    rows, and count the rows whose texts come back to the driver."""
    from bakeoff.curate.on_ray import filters as ray_filters
    from bakeoff.curate.on_ray import minhash as ray_minhash
    from bakeoff.curate.on_ray import rows as ray_rows

    def refuse(*args, **kwargs):
        raise AssertionError("the Ray recipe loaded or committed a whole frame on the driver")

    seen = {"text_rows": 0, "largest_batch": 0}
    original_outputs = ray_filters.block_outputs

    def counting_outputs(ray, refs):
        for out in original_outputs(ray, refs):
            seen["text_rows"] += out["rewritten"].num_rows
            yield out

    original_frames = ray_rows.RowSource.iter_frames

    def counting_frames(self, batch_rows=None):
        for frame in original_frames(self, batch_rows):
            seen["largest_batch"] = max(seen["largest_batch"], frame.height)
            yield frame

    monkeypatch.setattr(Workspace, "load", refuse)
    monkeypatch.setattr(Workspace, "commit_version", refuse)
    monkeypatch.setattr(ray_filters, "block_outputs", counting_outputs)
    monkeypatch.setattr(ray_rows.RowSource, "iter_frames", counting_frames)
    monkeypatch.setattr(ray_rows, "WRITE_BATCH", batch)
    monkeypatch.setattr(ray_minhash, "LEDGER_CHUNK", 7)  # the dedup ledger built and spilled in chunks
    monkeypatch.setattr(ray_filters, "ROWS_PER_BLOCK", 61)  # filter blocks whose reports are merged
    return seen


def test_ray_recipe_never_loads_the_rows_on_the_driver(ray_instance, demo, monkeypatch):
    """Filter + dedup with intermediate versions: no ``ws.load`` or
    ``commit_version`` (which take a whole frame), output written in batches,
    and only the rewrite filters' hit rows (and a few examples) come back
    with their texts -- the same versions and ledgers as local."""
    from bakeoff.curate.recipe import run_recipe

    ws, ref = demo
    n = ws.resolve(ref).rows
    recipe = _filter_dedup_recipe({"pii": {"action": "redact"}, "language": {"enabled": False},
                                   "refusal": {"action": "flag"}}, {"keep": "longest"})
    local = run_recipe(ws, ref, recipe, intermediate=True, name="local-stream")
    seen = _no_full_load(monkeypatch, batch=97)
    on_ray = run_recipe(ws, ref, recipe, intermediate=True, name="ray-stream", executor=RAY)
    monkeypatch.undo()
    assert seen["largest_batch"] <= 97
    assert 0 < seen["text_rows"] < 0.25 * n, seen
    assert [v.digest for v in on_ray.intermediate] == [v.digest for v in local.intermediate]
    assert on_ray.version.digest == local.version.digest
    for a, b in zip(on_ray.intermediate + [on_ray.version], local.intermediate + [local.version]):
        assert _ledger(ws, a.ref).equals(_ledger(ws, b.ref))
    flt = local.reports["1:filter"]["filter"]
    assert flt["rewritten"] > 0 and flt["flagged"]["refusal"] > 0  # the test has teeth
    assert on_ray.reports["1:filter"]["filter"]["filters"] == flt["filters"]
    assert on_ray.reports["2:dedup"]["largest_clusters"] == local.reports["2:dedup"]["largest_clusters"]


def test_filter_blocks_on_ray_add_up_to_the_local_step(ray_instance, demo):
    """The filter step run per block of 37 rows: the local kept rows (rewritten
    and flagged ones included), ledger and report -- counts summed, examples
    cut across blocks, and the ids of rewritten rows numbered as one step
    numbers them: two copies of a row redacted in two blocks, and a third
    block holding the redacted text already (``~2``, ``~3``)."""
    import json

    from bakeoff.curate.filters import filter_rows, redact_pii
    from bakeoff.curate.filters.suite import FilterSuiteConfig
    from bakeoff.curate.on_ray.filters import filter_on_ray
    from bakeoff.curate.on_ray.rows import RowSource, kept_frames
    from bakeoff.schema import with_ids

    ws, ref = demo
    df = ws.load(ref)
    rows = df.to_dicts()
    a = json.loads(json.dumps(next(r for r in rows if r["kind"] == "sft")))
    a["messages"][-1]["content"] += " Mail jane.doe@example.com for the figures."
    b = json.loads(json.dumps(a))
    for m in b["messages"]:
        m["content"] = redact_pii(m["content"])
    for pos, row in ((150, b), (80, a), (5, a)):
        rows.insert(pos, row)
    df = with_ids(pl.DataFrame(rows, schema=df.schema))
    version = ws.commit_version("blocks", df, operation="plant", parents=[ref])
    config = FilterSuiteConfig.from_dict({"pii": {"action": "redact"}, "language": {"enabled": False},
                                          "refusal": {"action": "flag"}})
    local = filter_rows(df, config)
    source = RowSource([ws.version_dir(version) / "rows.parquet"])
    out = filter_on_ray(source, config, RAY, rows_per_block=37)
    kept = pl.concat(list(kept_frames(source, out)))
    report, expected = out.report["filter"], local.report["filter"]
    assert expected["rewritten"] > 2 and expected["flagged"]["refusal"] > 0 and local.ledger.height  # teeth
    assert local.rows["id"].str.ends_with("~3").any()
    assert any(f["hits"] > config.examples for f in expected["filters"].values())
    assert kept.equals(local.rows)
    assert out.ledger.equals(local.ledger)
    assert {k: v for k, v in report.items() if k != "seconds"} == \
        {k: v for k, v in expected.items() if k != "seconds"}


def _real_rows_with_plants(ws: Workspace) -> str:
    """The alpaca and DPO demo files, ingested, plus planted copies: rows with
    an e-mail address and a phone number (redacted), exact copies, and copies
    with one word changed (near-duplicates)."""
    import json
    import random

    from bakeoff.curate.ingest import ingest
    from bakeoff.schema import with_ids

    paths = [DATA / "alpaca_en_demo.json", DATA / "dpo_en_demo.json"]
    for p in paths:
        if not p.exists():
            pytest.skip(f"{p} not present (the real data lives in ../shared/data)")
    base = ingest(ws, paths, "real").version
    df = ws.load(base)
    rng = random.Random(7)
    rows = df.to_dicts()
    chats = [r for r in rows if r["kind"] == "sft"]
    planted = []
    for r in rng.sample(chats, 40):
        r = json.loads(json.dumps(r))
        r["messages"][-1]["content"] += " Write to jane.doe@example.com or call +1 415 555 0134."
        planted.append(r)
    planted += [json.loads(json.dumps(r)) for r in rng.sample(rows, 30)]
    for r in rng.sample(chats, 30):
        r = json.loads(json.dumps(r))
        words = r["messages"][-1]["content"].split()
        if len(words) > 20:
            words[len(words) // 2] = "indeed"
            r["messages"][-1]["content"] = " ".join(words)
            planted.append(r)
    out = with_ids(pl.concat([df, pl.DataFrame(planted, schema=df.schema)]))
    return ws.commit_version("real", out, operation="plant", parents=[base.ref]).ref


def test_redact_and_dedup_on_real_rows_ray_equals_local(ray_instance, tmp_path, monkeypatch):
    from bakeoff.curate.recipe import run_recipe

    ws = Workspace(tmp_path / "ws")
    ref = _real_rows_with_plants(ws)
    recipe = _filter_dedup_recipe({"pii": {"action": "redact"}}, {"threshold": 0.8})
    local = run_recipe(ws, ref, recipe, name="local")
    _no_full_load(monkeypatch, batch=500)
    on_ray = run_recipe(ws, ref, recipe, name="ray", executor=RAY)
    monkeypatch.undo()
    assert local.reports["1:filter"]["filter"]["filters"]["pii"]["redacted"] >= 40
    assert {s["step"]: s["removed"] for s in local.steps}["dedup"] >= 50
    assert on_ray.version.digest == local.version.digest
    assert _ledger(ws, on_ray.version.ref).equals(_ledger(ws, local.version.ref))
    assert [s["removed"] for s in on_ray.steps] == [s["removed"] for s in local.steps]


def test_worker_killed_mid_streamed_recipe(ray_instance, demo):
    """A worker dies while the streamed recipe reads rows for dedup: Ray runs
    the task again, or the recipe fails having written nothing (its scratch
    folder gone); either way the rerun writes the local version."""
    from bakeoff.curate.recipe import run_recipe

    ws, ref = demo
    recipe = _filter_dedup_recipe({"language": {"enabled": False}}, {})
    local = run_recipe(ws, ref, recipe, name="kill-local")
    before = [v.ref for v in ws.versions()]
    (ray_instance / "kill-once").touch()
    try:
        on_ray = run_recipe(ws, ref, recipe, name="kill-ray", executor=RAY)
    except Exception:  # noqa: BLE001 - a lost worker may fail the step: nothing may be written then
        assert [v.ref for v in ws.versions()] == before
        assert not list((ws.root / "versions" / "kill-ray").glob(".tmp-*"))
        on_ray = run_recipe(ws, ref, recipe, name="kill-ray", executor=RAY)
    assert not (ray_instance / "kill-once").exists()  # the worker did die
    assert on_ray.version.digest == local.version.digest
    assert _ledger(ws, on_ray.version.ref).equals(_ledger(ws, local.version.ref))
    assert not list((ws.root / "versions" / "kill-ray").glob(".tmp-*"))  # no scratch left behind


def test_row_source_numbers_rows_across_uneven_row_groups(ray_instance, tmp_path):
    """Row groups of 7, 3 and 12 rows read in blocks of 5: every row once, with
    its number in the file; blocks, fetch and the driver's batches agree."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray

    from bakeoff.curate.on_ray import collect
    from bakeoff.curate.on_ray.rows import RowSource

    path = tmp_path / "rows.parquet"
    with pq.ParquetWriter(path, pa.schema([("v", pa.int64())])) as writer:
        lo = 0
        for size in (7, 3, 12):
            writer.write_table(pa.table({"v": np.arange(lo, lo + size) * 10}))
            lo += size
    source = RowSource([path, path])
    assert source.n == 44 and len(source.groups) == 6
    got = collect(source.dataset(ray, per=5), sort_by="_row")
    assert got["_row"].to_pylist() == list(range(44))
    assert got["v"].to_pylist() == [10 * (i % 22) for i in range(44)]
    refs, starts = source.blocks(ray, lambda t: t, per=5)
    assert np.concatenate([ray.get(r)["_row"].to_numpy() for r in refs]).tolist() == list(range(44))
    assert all(ray.get(r)["_row"].to_numpy()[0] == s for r, s in zip(refs, starts[:-1]))
    assert source.fetch(ray, np.array([43, 0, 9, 9, 25]))["v"].to_list() == [0, 90, 30, 210]
    assert pl.concat(list(source.iter_frames(4)))["_row"].to_list() == list(range(44))
