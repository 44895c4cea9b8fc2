"""Import: test sets and predictions made elsewhere become test-set versions and
leaderboard entries, checked like built ones and ranked with everything else."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner

from bakeoff.cli import cli
from bakeoff.evaluate.fakes import ScriptedGenerator
from bakeoff.evaluate.generate import GenerationSettings
from bakeoff.evaluate.imports import import_predictions
from bakeoff.evaluate.items import load_items
from bakeoff.evaluate.rank import build_leaderboard
from bakeoff.evaluate.report import render_html
from bakeoff.evaluate.runner import ModelSpec, evaluate_model
from bakeoff.testsets.importer import import_testset
from bakeoff.workspace import BakeoffError

TATQA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tatqa_dev.jsonl"


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


ROWS = [
    {"id": "q1", "prompt": "Revenue 2023 (in millions): 12.5. Revenue?", "reference": "12.5 million",
     "slice": "in-domain", "task": "qa"},
    {"id": "q2", "messages": [{"role": "user", "content": "Contract type?"}, {"role": "assistant", "content": "lease"}],
     "slice": "adjacent", "scoring": {"method": "choice", "choices": ["lease", "nda"]}},
    {"id": "q3", "prompt": "Who signs?", "reference": "the tenant", "slice": "far", "scoring": "token_f1"},
    {"id": "q4", "prompt": "Change in cash?", "reference": "(3.2)", "slice": "in-domain", "task": "arithmetic"},
]


def test_testsets_import_checks_and_commits(ws, tmp_path):
    v = import_testset(ws, _jsonl(tmp_path / "t.jsonl", ROWS), "mine")
    assert v.ref == "mine@v1" and v.rows == 4
    df = ws.load(v)
    assert df["kind"].to_list() == ["sft"] * 4
    specs = {sid: json.loads(s) for sid, s in zip(df["source_id"], df["scoring"])}
    assert specs["q1"]["method"] == "numeric" and specs["q4"]["method"] == "numeric"  # builder defaults
    assert specs["q2"] == {"method": "choice", "choices": ["lease", "nda"]}
    assert specs["q3"] == {"method": "token_f1"}
    _, items = load_items(ws, v.ref)
    assert set(items["slice"]) == {"in-domain", "adjacent", "far"}
    assert set(items["reference"]) == {"12.5 million", "lease", "the tenant", "(3.2)"}


@pytest.mark.parametrize("row,message", [
    ({"prompt": "x", "reference": "y", "scoring": {"method": "bleu"}}, "unknown scoring method"),
    ({"prompt": "x", "reference": "y", "scoring": "{not json"}, "not JSON"),
    ({"prompt": "x", "reference": "y", "slice": ""}, "slice must be a non-empty name"),
    ({"prompt": "x"}, "no reference"),
    ({"reference": "y"}, "needs 'messages' or 'prompt'"),
])
def test_testsets_import_rejects_bad_rows_naming_the_line(ws, tmp_path, row, message):
    path = _jsonl(tmp_path / "t.jsonl", [ROWS[0], row])
    with pytest.raises(BakeoffError, match=message) as exc:
        import_testset(ws, path, "mine")
    assert "line 2" in str(exc.value)
    assert ws.versions("mine") == []  # nothing committed


def test_testsets_import_cli_and_check(ws, tmp_path):
    path = _jsonl(tmp_path / "t.jsonl", ROWS)
    res = CliRunner().invoke(cli, ["-w", str(ws.root), "testsets", "import", str(path), "--name", "mine", "--json"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["version"] == "mine@v1" and out["slices"] == {"adjacent": 1, "far": 1, "in-domain": 2}
    # decontaminated like a built one: a training version containing q3's prompt is flagged
    from bakeoff.schema import conform, with_ids

    train = with_ids(conform(pl.DataFrame({"kind": ["sft"], "messages": [[
        {"role": "user", "content": "Who signs?"}, {"role": "assistant", "content": "the tenant"}]]})))
    ws.commit_version("train", train, operation="test-fixture")
    res = CliRunner().invoke(cli, ["-w", str(ws.root), "testsets", "check", "mine@v1", "train@v1", "--json"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["summary"]["flagged"] == 1


def _gen_model(ws, version, items, label, answers):
    gen = ScriptedGenerator(answers, default="?")
    evaluate_model(ws, version, items, ModelSpec(label, digest=f"d-{label}", template_id=gen.template_id,
                                                 generator_factory=lambda s, d: gen),
                   GenerationSettings(batch_size=4), loglik=False)


def test_evaluate_import_is_scored_cached_and_ranked(ws, tmp_path):
    import_testset(ws, _jsonl(tmp_path / "t.jsonl", ROWS), "mine")
    version, items = load_items(ws, "mine@v1")
    _gen_model(ws, version, items, "local", {"Who signs?": "the tenant"})
    preds = [{"id": "q1", "prediction": "$12.5 million"}, {"id": "q2", "prediction": "It is a lease, not an NDA"},
             {"id": "q3", "output": "tenant"}, {"id": "q4", "prediction": "-3.2"}]
    res = import_predictions(ws, "mine@v1", "vllm-model", _jsonl(tmp_path / "p.jsonl", preds), {"engine": "vllm"})
    assert res.n_items == 4 and res.mean_score == 1.0
    again = import_predictions(ws, "mine@v1", "vllm-model", tmp_path / "p.jsonl", {"engine": "vllm"})
    assert again.scored == 0  # cached like generated outputs
    board = build_leaderboard(ws, "mine@v1", n_boot=200)
    labels = {e.label: e for e in board.entries}
    assert set(labels) == {"local", "vllm-model"} and labels["vllm-model"].imported
    assert labels["vllm-model"].rank == 1
    assert any("imported" in w for w in board.warnings)


def test_evaluate_import_errors_name_missing_and_unknown_items(ws, tmp_path):
    import_testset(ws, _jsonl(tmp_path / "t.jsonl", ROWS), "mine")
    with pytest.raises(BakeoffError, match=r"2 of 4 items .* no prediction: q3, q4"):
        import_predictions(ws, "mine@v1", "m", _jsonl(tmp_path / "a.jsonl", [
            {"id": "q1", "prediction": "1"}, {"id": "q2", "prediction": "lease"}]))
    with pytest.raises(BakeoffError, match=r"1 ids are not items of mine@v1: nope"):
        import_predictions(ws, "mine@v1", "m", _jsonl(tmp_path / "b.jsonl", [
            *[{"id": f"q{i}", "prediction": "x"} for i in range(1, 5)], {"id": "nope", "prediction": "x"}]))
    with pytest.raises(BakeoffError, match=r"more than once: q1"):
        import_predictions(ws, "mine@v1", "m", _jsonl(tmp_path / "c.jsonl", [
            *[{"id": f"q{i}", "prediction": "x"} for i in range(1, 5)], {"id": "q1", "prediction": "y"}]))
    (tmp_path / "d.jsonl").write_text('{"id": "q1", "prediction": "x"}\n{oops\n')
    with pytest.raises(BakeoffError, match=r"d.jsonl:2: not valid JSON"):
        import_predictions(ws, "mine@v1", "m", tmp_path / "d.jsonl")


def test_evaluate_import_cli(ws, tmp_path):
    import_testset(ws, _jsonl(tmp_path / "t.jsonl", ROWS), "mine")
    preds = _jsonl(tmp_path / "p.jsonl", [{"id": f"q{i}", "prediction": "x"} for i in range(1, 5)])
    res = CliRunner().invoke(cli, ["-w", str(ws.root), "evaluate", "import", "--testset", "mine@v1", "--label",
                                   "api-model", str(preds), "--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["label"] == "api-model"


@pytest.mark.skipif(not TATQA.exists(), reason="real data ../shared/data/tatqa_dev.jsonl is absent")
def test_real_tatqa_imports_and_scores(ws, tmp_path):
    """TAT-QA dev (1668 items): imported as a test set; its own answers, and the
    same answers written as a model would, score 1; wrong signs and scales 0."""
    v = import_testset(ws, TATQA, "tatqa")
    assert v.rows == 1668
    _, items = load_items(ws, v.ref)
    assert items["source_id"].n_unique() == 1668
    methods = items["method"].value_counts().sort("method")
    assert dict(methods.iter_rows()) == {"numeric": 1178, "token_f1": 490}
    rows = [json.loads(x) for x in TATQA.read_text().splitlines()]
    by_id = {r["id"]: r for r in rows}
    arithmetic = [i for i in items.iter_rows(named=True)
                  if by_id[i["source_id"]]["meta"]["answer_type"] == "arithmetic" and i["method"] == "numeric"]
    assert len(arithmetic) > 600
    from bakeoff.evaluate.scorers import answer_number, score_one

    def rewrite(ref: str) -> str:  # "-35 million" -> "In 2019 the change was -35,000,000 (see note 3)."
        n = answer_number(ref)
        full = f"{n.value:,.{n.decimals}f}" if not n.percent else f"{n.written:.{n.decimals}f}%"
        return f"In 2019 the change was {full} (see note 3)."

    right = sum(score_one(rewrite(i["reference"]), i["reference"], json.loads(i["scoring"])) for i in arithmetic)
    flipped = [i for i in arithmetic if answer_number(i["reference"]).value != 0]
    wrong_sign = sum(score_one(f"-{i['reference']}" if not i["reference"].startswith("-")
                               else i["reference"][1:], i["reference"], json.loads(i["scoring"])) for i in flipped)
    assert right == len(arithmetic)
    assert wrong_sign == 0
    # Predictions keyed by the file's own ids rank like any other model. TAT-QA dev
    # asks one question of one table twice with different answers ("60%, 40%" and
    # "23%, 77%"): predictions for one prompt must agree (outputs are cached per
    # prompt), so the oracle answers both with the first and loses part of one item.
    first: dict[str, str] = {}
    for r in rows:
        first.setdefault(json.dumps(r["messages"][:-1]), r["messages"][-1]["content"])
    preds = _jsonl(tmp_path / "p.jsonl", [{"id": r["id"], "prediction": first[json.dumps(r["messages"][:-1])]}
                                          for r in rows])
    res = import_predictions(ws, v.ref, "oracle", preds)
    assert 1 - 1 / 1668 <= res.mean_score < 1.0
    clash = [{"id": r["id"], "prediction": r["messages"][-1]["content"]} for r in rows]
    with pytest.raises(BakeoffError, match="same prompt have different predictions"):
        import_predictions(ws, v.ref, "oracle2", _jsonl(tmp_path / "q.jsonl", clash))
