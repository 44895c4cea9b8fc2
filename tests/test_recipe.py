"""Recipes: steps in order, one version whose ledger is the union of the steps',
intermediate versions, a summary per step, and clear errors."""

from __future__ import annotations

import json

import polars as pl
import pytest
import yaml
from click.testing import CliRunner

from bakeoff.curate import recipe as R
from bakeoff.demo_data import FILES, generate, load_ground_truth
from bakeoff.workspace import BakeoffError, Workspace

SPEC = {
    "name": "test",
    "steps": [
        {"filter": {"language": {"enabled": False}}},
        {"dedup": {"threshold": 0.8}},
        {"semantic": {"threshold": 0.97, "model": "hashing"}},
        {"coverage": {"objectives": "demo_objectives.yaml", "model": "hashing", "diversity": False}},
    ],
}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from bakeoff.curate.ingest import ingest

    root = tmp_path_factory.mktemp("recipe")
    paths = generate(root / "raw", seed=0, scale=0.5)
    ws = Workspace(root / "ws")
    res = ingest(ws, [paths["fin-train"]], "fin-train")
    truth = [t for t in load_ground_truth(paths["ground-truth"]) if t["file"] == FILES["fin-train"]]
    return ws, res.version.ref, truth, root


def test_run_recipe_one_version(demo):
    ws, ref, truth, root = demo
    recipe = R.parse_recipe(SPEC, base_dir=root)
    res = R.run_recipe(ws, ref, recipe)
    v = res.version
    parent = ws.resolve(ref)
    assert v.parents == [ref] and v.operation == "recipe" and not res.intermediate
    led = ws.ledger(v)
    # rows in = rows kept + rows in the (union) ledger
    assert parent.rows == v.rows + led.height
    assert set(led["stage"].unique()) <= {"filter", "dedup-exact", "dedup-minhash", "dedup-semantic"}
    assert {"filter", "dedup-exact"} <= set(led["stage"].unique())
    assert [s["step"] for s in res.steps] == ["filter", "dedup", "semantic", "coverage"]
    for a, b in zip(res.steps, res.steps[1:]):
        assert a["rows_out"] == b["rows_in"]
    assert all(s["rows_in"] == s["rows_out"] + s["removed"] and s["seconds"] >= 0 for s in res.steps)
    assert res.steps[-1]["removed"] == 0 and res.reports["4:coverage"]
    assert sum(s["removed"] for s in res.steps) == led.height
    # planted exact duplicates are gone, each pointing at the row it duplicates
    rows = ws.load(ref)
    line_of = dict(zip(rows["id"], rows["source_line"]))
    dup_lines = {t["line"]: t["original_line"] for t in truth if t["kind"] == "exact-duplicate"}
    exact = led.filter(pl.col("stage") == "dedup-exact")
    removed_lines = {line_of.get(r) for r in exact["row_id"]}
    assert set(dup_lines) <= removed_lines
    for r, kept in exact.select("row_id", "kept_row_id").iter_rows():
        if line_of.get(r) in dup_lines:
            assert line_of[kept] == dup_lines[line_of[r]]
    # the version's report has the summary and each step's report
    report = ws.report(v)
    assert report["steps"] == [{k: v for k, v in s.items() if k != "version"} for s in res.steps]
    assert "1:filter" in report and "4:coverage" in report


def test_intermediate_versions(demo):
    ws, ref, _, root = demo
    recipe = R.parse_recipe(SPEC, base_dir=root)
    res = R.run_recipe(ws, ref, recipe, intermediate=True, name="fin-steps")
    chain = [*res.intermediate, res.version]
    assert len(res.intermediate) == 2  # after filter and dedup; the final one after semantic + coverage
    assert chain[0].parents == [ref]
    for prev, cur in zip(chain, chain[1:]):
        assert cur.parents == [prev.ref]
    for v in chain:
        parent = ws.resolve(v.parents[0])
        assert parent.rows == v.rows + ws.ledger(v).height
    assert [s["version"] for s in res.steps] == [chain[0].ref, chain[1].ref, chain[2].ref, chain[2].ref]
    assert set(ws.ledger(chain[0])["stage"].unique()) == {"filter"}


def test_recipe_errors(demo, tmp_path, monkeypatch):
    ws, ref, _, root = demo
    with pytest.raises(BakeoffError, match="unknown step 'clean'.*known: filter, dedup"):
        R.parse_recipe({"steps": ["clean"]})
    with pytest.raises(BakeoffError, match="unknown option"):
        R.parse_recipe({"steps": [{"dedup": {"thresh": 0.8}}]})
    with pytest.raises(BakeoffError, match="unknown filter"):
        R.parse_recipe({"steps": [{"filter": {"profanity": {}}}]})
    with pytest.raises(BakeoffError, match="non-empty list"):
        R.parse_recipe({"steps": []})
    with pytest.raises(BakeoffError, match="objectives"):
        R.parse_recipe({"steps": [{"coverage": {}}]})
    with pytest.raises(BakeoffError, match="not found"):
        R.load_recipe(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: [filter\n")
    with pytest.raises(BakeoffError, match="cannot parse"):
        R.load_recipe(bad)
    # a step whose module is not there says so in one line
    monkeypatch.setitem(R.STEPS, "ghost", R.StepKind("ghost", "ghost_step", True, "", lambda *a: None,
                                                     lambda *a: None))
    with pytest.raises(BakeoffError, match="needs module bakeoff.curate.ghost_step"):
        R.parse_recipe({"steps": ["ghost"]})
    # errors come before any work: nothing was written
    n = len(ws.versions("fin-train"))
    with pytest.raises(BakeoffError):
        R.parse_recipe({"steps": ["filter", {"dedup": {"keep": "best"}}]})
    assert len(ws.versions("fin-train")) == n


def test_default_recipe_parses():
    path = R.default_recipe_path()
    assert path.is_file()
    recipe = R.load_recipe(path)
    assert [s.kind.name for s in recipe.steps] == ["filter", "dedup", "semantic", "coverage"]


def test_run_command(demo, tmp_path):
    from bakeoff.cli import cli

    ws, ref, _, _ = demo
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"steps": [{"filter": {"language": {"enabled": False}}}, "dedup"]}))
    res = CliRunner().invoke(cli, ["-w", str(ws.root), "curate", "run", ref, str(recipe), "--json",
                                   "--name", "fin-cli"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["version"] == "fin-cli@v1" and [s["step"] for s in doc["steps"]] == ["filter", "dedup"]
    res = CliRunner().invoke(cli, ["-w", str(ws.root), "curate", "run", ref, str(recipe), "--name", "fin-cli"])
    assert res.exit_code == 0 and "fin-cli@v2" in res.output and "rows in" in res.output
    res = CliRunner().invoke(cli, ["-w", str(ws.root), "curate", "run", ref, str(tmp_path / "x.yaml")])
    assert res.exit_code != 0
