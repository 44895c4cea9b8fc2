"""Streaming ingest: the version digest is pinned (batching, threading and the
cross-batch numbering of repeated content must not change it), and the state an
ingest keeps across batches is bounded by the distinct contents, not the text."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from bakeoff.curate import ingest as ingest_mod
from bakeoff.curate import readers
from bakeoff.curate.ingest import ingest
from bakeoff.schema import version_digest, with_ids

#: The digest of ``_write_fixture``'s file as ingested before streaming was tuned
#: (the whole-file numbering of ``schema.with_ids``); it must never change.
PINNED_DIGEST = "86cca947ce8d1b3ef17e7d924abf497c01890f4914e646030615f40181372041"


def _write_fixture(path: Path) -> None:
    """600 lines: chat rows with labels and extra keys, contents repeated near
    and far (so copies land in other batches), and a few bad lines."""
    lines = []
    for i in range(600):
        if i % 53 == 7:
            lines.append('{"messages": [')  # malformed
            continue
        if i % 61 == 3:
            lines.append(json.dumps({"messages": [{"role": "user", "content": "no answer"}]}))
            continue
        k = i % 97 if i % 5 == 0 else i  # every 5th row repeats one of 20 contents
        rec = {"messages": [{"role": "user", "content": f"question {k}?"},
                            {"role": "assistant", "content": f"answer {k % 13}"}],
               "meta": {"domain": "finance" if i % 2 else "legal", "tags": [f"t{i % 3}"]},
               "id": f"row-{i}"}
        lines.append(json.dumps(rec))
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("batch_bytes", [None, 6_000, 40_000])
def test_digest_is_pinned_whatever_the_batch(ws, tmp_path, monkeypatch, batch_bytes):
    src = tmp_path / "fixture.jsonl"
    _write_fixture(src)
    if batch_bytes:
        monkeypatch.setattr(readers, "BATCH_BYTES", batch_bytes)
    res = ingest(ws, [src], "pinned")
    assert (res.rows_in, res.accepted, res.quarantined) == (600, 578, 22)
    rows = ws.load(res.version)
    assert res.version.digest == version_digest(rows) == PINNED_DIGEST
    # ids are what schema.with_ids gives the whole file at once
    whole = with_ids(rows.sort("source_line").drop("id"))
    assert rows.sort("source_line")["id"].to_list() == whole["id"].to_list()
