"""Rounds without training: what a re-run reuses (bakeoff.reuse), how a later
round's training version is held out from the fixed test set, and the `data why`
/ `data list` views a user iterating reads."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner

from bakeoff import reuse
from bakeoff.cli import cli
from bakeoff.curate.ingest import ingest
from bakeoff.loop import LoopConfig, LoopResult, _Steps, held_out_training, ingest_sources, Source


def _qa(i: int, words: str = "") -> dict:
    return {"instruction": f"What was the revenue of company {i} in {2000 + i}? {words}",
            "output": f"The revenue of company {i} was {i * 7} million."}


def _write(path: Path, recs: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


def test_ingest_of_unchanged_files_is_reused(ws, tmp_path):
    f = _write(tmp_path / "a.jsonl", [_qa(i) for i in range(5)])
    v1 = ingest(ws, [f], "a").version
    assert v1.params["file_digests"] == [reuse.file_digest(f)]
    src = Source(name="a", paths=[str(f)])
    result = LoopResult()
    ingest_sources(ws, [src], result, _Steps(ws, result))
    assert result.versions["a"] == "a@v1" and [p["action"] for p in result.plan] == ["reuse"]
    # other options, or other contents: a new version
    ingest_sources(ws, [Source(name="a", paths=[str(f)], meta={"domain": "fin"})], result, _Steps(ws, result))
    assert result.versions["a"] == "a@v2"
    _write(f, [_qa(i) for i in range(6)])
    ingest_sources(ws, [src], result, _Steps(ws, result))
    assert result.versions["a"] == "a@v3" and len(ws.versions("a")) == 3


def test_finished_steps_rounds_and_vanished_checkpoints(ws, tmp_path):
    ckpt = tmp_path / "run" / "checkpoint-2"
    ckpt.mkdir(parents=True)
    (ckpt / "bakeoff_checkpoint.json").write_text("{}")
    assert reuse.next_round(ws, "e") == 1
    inputs = {"dataset": "digest", "model": "tiny", "config": {"lr": 1e-4}}
    key = reuse.step_key("sft", "e", inputs)
    assert reuse.lookup(ws, key) is None
    reuse.record(ws, key, "sft", "e", 1, inputs, {"run_id": "r1", "checkpoints": [str(ckpt)]})
    assert reuse.lookup(ws, key).result["run_id"] == "r1"
    assert reuse.next_round(ws, "e") == 2 and reuse.next_round(ws, "other") == 1
    # settings that do not change what a run computes are not inputs
    from bakeoff.train.config import SFTRunConfig

    a = SFTRunConfig(dataset="x@v1", hypothesis="h", device="cpu")
    b = SFTRunConfig(dataset="x@v2", hypothesis="other", device="cuda")
    assert reuse.config_inputs(a) == reuse.config_inputs(b)
    assert reuse.config_inputs(a) != reuse.config_inputs(SFTRunConfig(lr=1e-3))
    # a run whose checkpoints were deleted is not reused
    (ckpt / "bakeoff_checkpoint.json").unlink()
    assert reuse.lookup(ws, key) is None


@pytest.fixture
def fixed_testset(ws, tmp_path):
    """train@v1 (10 rows), a test set held out from it (3 pool items), and a
    round-2 training version train@v2 that now holds a copy of one test item."""
    from bakeoff.schema import with_ids

    train_v1 = ingest(ws, [_write(tmp_path / "t.jsonl", [_qa(i) for i in range(10)])], "train").version
    pool = ingest(ws, [_write(tmp_path / "p.jsonl", [_qa(100 + i, "from the annual report of the holding group")
                                                     for i in range(3)])], "pool").version
    items = ws.load(pool)
    test_v = ws.commit_version("heldout", items, operation="testsets.build", params={},
                               parents=[train_v1.ref, pool.ref])
    train2 = pl.concat([ws.load(train_v1), ws.load(pool).head(1)], how="vertical_relaxed")
    train_v2 = ws.commit_version("train", with_ids(train2.drop("id")), operation="ingest", params={})
    return {"train_v1": train_v1, "train_v2": train_v2, "testset": test_v, "copied": items["id"][0]}


@pytest.mark.parametrize("overlap", ["remove", "report"])
def test_later_round_is_held_out_from_the_fixed_testset(ws, fixed_testset, overlap):
    cfg = LoopConfig(experiment="e", testset_overlap=overlap)
    result = LoopResult()
    step = _Steps(ws, result)
    t = fixed_testset
    # round 1's training version is what the test set was built against: nothing to check
    assert held_out_training(ws, cfg, t["train_v1"].ref, t["testset"].ref, result, step, 1) == t["train_v1"].ref
    assert result.plan == []
    got = held_out_training(ws, cfg, t["train_v2"].ref, t["testset"].ref, result, step, 2)
    assert "1 row(s) of train@v2 overlap items of the fixed test set heldout@v1" in result.notes[0]
    if overlap == "report":
        assert got == t["train_v2"].ref
        return
    assert got == "train@v3"
    v3 = ws.resolve(got)
    assert v3.rows == t["train_v2"].rows - 1 and v3.parents == ["train@v2"]
    ledger = ws.ledger(v3)
    copied = ws.load(t["train_v2"]).filter(pl.col("id").str.starts_with(t["copied"][:16]))["id"][0]
    assert ledger["row_id"].to_list() == [copied] and ledger["kept_row_id"].to_list() == [t["copied"]]
    assert ledger["rule"][0].startswith("overlaps-test-")
    # the same check on the same rows is not run again
    again = LoopResult()
    assert held_out_training(ws, cfg, t["train_v2"].ref, t["testset"].ref, again, _Steps(ws, again), 3) == got
    assert again.plan[0]["action"] == "reuse"


def test_why_says_not_selected_for_a_training_row(ws, fixed_testset):
    row = ws.load(fixed_testset["train_v1"])["id"][0]
    res = CliRunner().invoke(cli, ["--workspace", str(ws.root), "data", "why", row, "--json"])
    fate = json.loads(res.stdout)
    entry = fate["timeline"]["heldout"][0]
    assert entry["fate"] == "not selected" and "dropped" not in entry
    assert "held out from" in entry["why"]
    text = CliRunner().invoke(cli, ["--workspace", str(ws.root), "data", "why", row]).stdout
    assert "not selected" in text and "no ledger entry" not in text


def test_list_shows_whole_names_at_80_columns(ws, tmp_path):
    from bakeoff.console import out

    names = ["invoices-assistant-training-set", "invoices-assistant-heldout-pool"]
    for name in names:
        ingest(ws, [_write(tmp_path / f"{name}.jsonl", [_qa(i) for i in range(3)])], name)
    width = out.width
    out.width = 80
    try:
        text = CliRunner().invoke(cli, ["--workspace", str(ws.root), "data", "list"]).stdout
    finally:
        out.width = width
    assert all(name in text for name in names), text
    assert max(len(line) for line in text.splitlines()) <= 80


def test_rebuild_builds_a_new_testset_and_says_rounds_are_not_comparable(ws, fixed_testset):
    from bakeoff.loop import fixed_testset as pick_testset

    result = LoopResult()
    cfg = LoopConfig(experiment="e", testset="heldout")
    assert pick_testset(ws, cfg, "train@v2", ["pool@v1"], result, _Steps(ws, result)) == "heldout@v1"
    assert result.plan[0]["action"] == "fixed" and result.notes == []
    cfg.testset_rebuild = True
    result = LoopResult()
    assert pick_testset(ws, cfg, "train@v2", ["pool@v1"], result, _Steps(ws, result, dry_run=True)) is None
    assert result.plan[0]["action"] == "run"
    assert "cannot be compared" in result.notes[0] and "heldout@v1" in result.notes[0]


def test_unknown_dataset_names_fail_before_anything_runs(ws, tmp_path):
    from bakeoff.loop import run_loop
    from bakeoff.workspace import BakeoffError

    cfg = LoopConfig(sources=[Source(name="a", paths=[str(_write(tmp_path / "a.jsonl", [_qa(1)]))])],
                     train_dataset="a", pools=["pol"])
    with pytest.raises(BakeoffError, match="pol are neither in datasets"):
        run_loop(ws, cfg)
    assert ws.versions() == []


TATQA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "tatqa_dev.jsonl"


@pytest.mark.skipif(not TATQA.exists(), reason=f"real data not here: {TATQA}")
def test_real_data_ingest_is_reused_by_contents_not_path(ws, tmp_path):
    import shutil

    src = Source(name="tatqa", paths=[str(TATQA)], meta={"domain": "finance-tables"})
    first = LoopResult()
    ingest_sources(ws, [src], first, _Steps(ws, first))
    copy = shutil.copy(TATQA, tmp_path / "moved.jsonl")  # the same contents elsewhere
    again = LoopResult()
    ingest_sources(ws, [Source(name="tatqa", paths=[copy], meta={"domain": "finance-tables"})],
                   again, _Steps(ws, again))
    assert first.versions == again.versions == {"tatqa": "tatqa@v1"}
    assert again.reused[0]["detail"] == "tatqa@v1: same file contents"
    assert ws.resolve("tatqa@v1").counts["rows_in"] == 1668
