"""A version's digest, computed from its Parquet without loading it, is exactly
``schema.version_digest`` of its rows, on either of the two ways it is taken:
label groups serialised once (the common case: one file's rows share their
labels) or every row serialised (many distinct labels, floats, odd ids)."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bakeoff import workspace
from bakeoff.schema import conform, version_digest, with_ids

# Label text that is hard to serialise: quotes, backslashes, control and
# non-ASCII characters, and text that looks like the id's own place in a line.
TRICKY = st.sampled_from(["finance", "", 'say "hi"', "back\\slash", "tab\there", "new\nline", "é漢🙂",
                          '"id":""', '","id":"x', "\u2028", "\x00"])


def _rows(labels: list[tuple], n: int, extra_float: bool) -> pl.DataFrame:
    df = pl.DataFrame({
        "kind": ["sft"] * n,
        "messages": [[{"role": "user", "content": f"q{i % 7}"}, {"role": "assistant", "content": "a"}]
                     for i in range(n)],
        "domain": [labels[i % len(labels)][0] for i in range(n)],
        "tags": [labels[i % len(labels)][1] for i in range(n)],
        "extra": [labels[i % len(labels)][2] for i in range(n)],
        "aa_count": [labels[i % len(labels)][3] for i in range(n)],  # sorts before "id"
    })
    if extra_float:
        df = df.with_columns(score=pl.Series([0.0, -0.0, float("nan"), 1.5][i % 4] for i in range(n)))
    return with_ids(conform(df))


def _committed_digest(ws, rows: pl.DataFrame, batches: int = 3) -> str:
    with ws.version_writer("d") as w:
        step = max(1, rows.height // batches)
        for start in range(0, rows.height, step):
            w.write_rows(rows.slice(start, step))
        return w.commit(operation="test").digest


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(labels=st.lists(st.tuples(st.one_of(st.none(), TRICKY), st.one_of(st.none(), st.lists(TRICKY, max_size=2)),
                                 st.one_of(st.none(), TRICKY.map(lambda t: json.dumps({"k": t}))),
                                 st.one_of(st.none(), st.integers(-2**40, 2**40))),
                       min_size=1, max_size=5),
       n=st.integers(1, 40), extra_float=st.booleans(), per_row=st.booleans())
def test_the_streamed_digest_is_version_digest(tmp_path_factory, monkeypatch, labels, n, extra_float, per_row):
    ws = workspace.Workspace(tmp_path_factory.mktemp("ws") / "ws")
    rows = _rows(labels, n, extra_float)
    monkeypatch.setattr(workspace, "MAX_LABEL_GROUPS", 0 if per_row else 4096)
    assert _committed_digest(ws, rows) == version_digest(rows)


def test_label_groups_are_taken_where_they_apply(ws, monkeypatch):
    """The cheap way is used for a file's rows with shared labels, and not where
    a float column or an id JSON would escape rules it out."""
    taken: list[bool] = []
    real = workspace._digest_by_label_groups

    def spy(*args):
        result = real(*args)
        taken.append(result is not None)
        return result

    monkeypatch.setattr(workspace, "_digest_by_label_groups", spy)
    rows = _rows([("finance", ["t"], None, 1), ("legal", None, '{"k": 1}', None)], 30, extra_float=False)
    assert _committed_digest(ws, rows) == version_digest(rows)
    with_float = _rows([("finance", None, None, None)], 10, extra_float=True)
    assert _committed_digest(ws, with_float) == version_digest(with_float)
    odd_id = rows.with_columns(pl.col("id") + pl.Series(['"q'] + [""] * (rows.height - 1)))
    assert _committed_digest(ws, odd_id) == version_digest(odd_id)
    assert taken == [True, False, False]


def test_many_label_groups_serialise_every_row(ws, monkeypatch):
    monkeypatch.setattr(workspace, "MAX_LABEL_GROUPS", 8)
    rows = _rows([(f"d{i}", None, None, i) for i in range(20)], 60, extra_float=False)
    assert _committed_digest(ws, rows) == version_digest(rows)


def test_real_file_digests_are_the_same_either_way(ws, monkeypatch, tmp_path):
    """On TAT-QA (labels from the file's own meta), both ways agree."""
    from bakeoff.curate.ingest import ingest

    data = Path(__file__).resolve().parents[2] / "shared" / "data"
    if not data.exists():
        data = Path("/work/shared/data")
    src = data / "tatqa_dev.jsonl"
    if not src.exists():
        pytest.skip(f"{src} not present")
    v = ingest(ws, [src], "real").version
    rows_path = ws.version_dir(v) / "rows.parquet"
    grouped = workspace._streamed_digest(rows_path, tmp_path / "spill")
    monkeypatch.setattr(workspace, "MAX_LABEL_GROUPS", 0)
    assert workspace._streamed_digest(rows_path, tmp_path / "spill") == grouped
    assert grouped[0] == v.digest == version_digest(ws.load(v))
