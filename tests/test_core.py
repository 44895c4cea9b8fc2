"""The core: row schema ids and text views, workspace versions and lineage."""

from __future__ import annotations

import polars as pl
import pytest

from bakeoff.schema import conform, prompt_messages, reference_answer, text_for_scope, version_digest, with_ids
from bakeoff.workspace import BakeoffError, Workspace, parse_ref


def _rows() -> pl.DataFrame:
    conv = [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}]
    return conform(pl.DataFrame({
        "kind": ["sft", "sft", "preference"],
        "messages": [conv, conv, [{"role": "user", "content": "Pick"}]],
        "chosen": [None, None, [{"role": "assistant", "content": "good"}]],
        "rejected": [None, None, [{"role": "assistant", "content": "bad"}]],
        "domain": ["math", "other", None],
    }))


def test_ids_hash_content_only_and_stay_unique():
    df = with_ids(_rows())
    ids = df["id"].to_list()
    assert len(set(ids)) == 3
    assert ids[1] == ids[0] + "~2"  # same content, labels differ: a marked copy
    relabelled = with_ids(_rows().with_columns(pl.lit("x").alias("domain")))
    assert relabelled["id"].to_list() == ids


def test_text_views():
    df = with_ids(_rows())
    texts = df.select(text_for_scope("prompt"))["text"].to_list()
    assert texts == ["What is 2+2?", "What is 2+2?", "Pick"]
    assert df.select(text_for_scope("response"))["text"].to_list() == ["4", "4", "good"]
    row = df.row(0, named=True)
    assert prompt_messages(row) == [{"role": "user", "content": "What is 2+2?"}]
    assert reference_answer(row) == "4"
    with pytest.raises(ValueError):
        text_for_scope("nope")


def test_digest_ignores_row_order_and_source():
    df = with_ids(_rows())
    moved = df.reverse().with_columns(pl.lit("elsewhere.jsonl").alias("source_file"))
    assert version_digest(df) == version_digest(moved)
    assert version_digest(df) != version_digest(df.head(2))


def test_versions_are_numbered_immutable_and_linked(ws: Workspace):
    df = with_ids(_rows())
    v1 = ws.commit_version("toy", df, operation="ingest", params={"p": 1})
    v2 = ws.commit_version("toy", df.head(2), operation="filter", parents=[v1.ref])
    assert (v1.ref, v2.ref) == ("toy@v1", "toy@v2")
    assert ws.resolve("toy").ref == "toy@v2"
    assert ws.load("toy@v1").height == 3 and ws.load("toy@v2").height == 2
    assert [v.ref for v in ws.lineage("toy@v2")] == ["toy@v2", "toy@v1"]
    assert v2.digest != v1.digest and v2.bakeoff_version
    with pytest.raises(BakeoffError, match="no version v9"):
        ws.resolve("toy@v9")
    with pytest.raises(BakeoffError, match="no dataset named"):
        ws.resolve("missing")


def test_failed_commit_leaves_no_trace(ws: Workspace, monkeypatch):
    df = with_ids(_rows())
    ws.commit_version("toy", df, operation="ingest")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("os.rename", boom)
    with pytest.raises(OSError):
        ws.commit_version("toy", df.head(1), operation="filter")
    monkeypatch.undo()
    assert [v.ref for v in ws.versions("toy")] == ["toy@v1"]
    assert not [p for p in (ws.root / "versions" / "toy").iterdir() if p.name != "v1"]
    assert ws.commit_version("toy", df.head(1), operation="filter").ref == "toy@v2"


def test_orphan_folder_from_killed_write_is_replaced(ws: Workspace):
    df = with_ids(_rows())
    ws.commit_version("toy", df, operation="ingest")
    orphan = ws.root / "versions" / "toy" / "v2"
    orphan.mkdir()
    (orphan / "rows.parquet").write_text("half a file")
    v2 = ws.commit_version("toy", df.head(1), operation="filter")
    assert v2.ref == "toy@v2" and ws.load(v2).height == 1


def test_parse_ref():
    assert parse_ref("fin@v3") == ("fin", 3)
    assert parse_ref("fin") == ("fin", None)
    with pytest.raises(BakeoffError):
        parse_ref("fin@vx")


def test_workspace_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("BAKEOFF_WORKSPACE", str(tmp_path / "envws"))
    ws = Workspace()
    assert ws.root == (tmp_path / "envws").resolve() and ws.catalog_path.exists()
    assert ws.tracking_uri.startswith("sqlite:///")
