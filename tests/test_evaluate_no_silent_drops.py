"""Nothing vanishes from the leaderboard: interrupted evaluations, checkpoints with
identical weights, checkpoints never evaluated on the ranked test set; weights
replaced under the same mtime are re-hashed; mixed generation environments are
refused unless asked for."""

from __future__ import annotations

import json
import os

import pytest

from bakeoff.evaluate import cache
from bakeoff.evaluate.fakes import GeneratorInterrupted, ScriptedGenerator, commit_testset
from bakeoff.evaluate.generate import GenerationSettings
from bakeoff.evaluate.items import load_items
from bakeoff.evaluate.rank import build_leaderboard
from bakeoff.evaluate.report import render_html
from bakeoff.evaluate.runner import ModelSpec, evaluate_model
from bakeoff.workspace import BakeoffError

N = 12
ITEMS = [dict(question=f"q{i}", reference=f"a{i}", slice=("in-domain", "adjacent")[i % 2]) for i in range(N)]
RIGHT = {it["question"]: it["reference"] for it in ITEMS}


def _eval(ws, label, answers, digest=None, batch_size=4, fail_after=None, path=None, meta=None, is_base=False):
    version, items = load_items(ws, "ts@v1")
    gen = ScriptedGenerator(answers, default="?", fail_after=fail_after)
    spec = ModelSpec(label, path=path, meta=meta or {}, is_base=is_base, digest=digest or f"d-{label}",
                     template_id=gen.template_id, generator_factory=lambda s, d: gen)
    return evaluate_model(ws, version, items, spec, GenerationSettings(batch_size=batch_size), loglik=False)


@pytest.fixture
def ts(ws):
    commit_testset(ws, "ts", ITEMS)
    return ws


def test_identical_weights_are_one_row_naming_every_label(ts):
    ws = ts
    _eval(ws, "base:tiny", {q: "?" for q in RIGHT}, digest="same", is_base=True)
    _eval(ws, "run1@10", {q: "?" for q in RIGHT}, digest="same")  # a checkpoint equal to its base
    _eval(ws, "run1@20", RIGHT)
    board = build_leaderboard(ws, "ts@v1", n_boot=200)
    labels = [e.label for e in board.entries]
    assert labels == ["run1@20", "base:tiny = run1@10"]
    shared = board.entries[1]
    assert shared.aliases == ["base:tiny", "run1@10"] and shared.is_base


def test_one_checkpoint_under_a_newer_label_is_one_name(ts, tmp_path):
    """A label gains the run id once a second run of its kind appears; the same
    checkpoint evaluated again under that label is not an "identical weights" pair."""
    ws = ts
    ckpt = tmp_path / "runs" / "r1" / "checkpoint-12"
    ckpt.mkdir(parents=True)
    _eval(ws, "r1 sft step 12", RIGHT, digest="w", path=str(ckpt))
    _eval(ws, "r1 sft step 12 (abc12345)", RIGHT, digest="w", path=str(ckpt))
    board = build_leaderboard(ws, "ts@v1", n_boot=200)
    assert [e.label for e in board.entries] == ["r1 sft step 12 (abc12345)"]


def test_interrupted_evaluation_is_listed_not_dropped(ts, tmp_path):
    ws = ts
    _eval(ws, "done", RIGHT)
    with pytest.raises(GeneratorInterrupted):
        _eval(ws, "cut", RIGHT, batch_size=4, fail_after=1)
    board = build_leaderboard(ws, "ts@v1", n_boot=200)
    assert [e.label for e in board.entries] == ["done"]
    assert board.not_ranked == [{"label": "cut", "missing": N - 4, "interrupted": True,
                                 "reason": board.not_ranked[0]["reason"]}]
    page = render_html(board, tmp_path / "b.html").read_text()
    assert "Not ranked" in page and "cut" in page and str(N - 4) in page


def test_unevaluated_checkpoints_of_the_experiment_are_listed_with_the_command(ts):
    ws = ts
    run = ws.runs_dir() / "fin" / "r1"
    for step in (10, 20):
        d = run / f"checkpoint-{step}"
        d.mkdir(parents=True)
        (d / "bakeoff_checkpoint.json").write_text(json.dumps(
            {"run_id": "r1", "experiment_name": "fin", "step": step, "kind": "sft", "datasets": ["train@v1"],
             "round": 2}))
    meta = {"run_id": "r1", "experiment_name": "fin", "step": 10, "kind": "sft", "datasets": ["train@v1"],
            "round": 2}
    _eval(ws, "r1@10", RIGHT, path=str(run / "checkpoint-10"), meta=meta)
    board = build_leaderboard(ws, "ts@v1", experiment="fin", n_boot=200)
    assert [u["step"] for u in board.unevaluated] == [20]
    assert board.evaluate_command == (f"bakeoff evaluate run --testset ts@v1 --checkpoints "
                                      f"{(run / 'checkpoint-20').resolve()}")
    assert any("not evaluated on ts@v1" in w for w in board.warnings)
    e = board.entries[0]
    assert (e.kind, e.round, e.dataset, e.step) == ("sft", 2, "train@v1", 10)


def test_mixed_generation_environments_need_allow_mixed(ts):
    ws = ts
    _eval(ws, "A", RIGHT, batch_size=4)
    _eval(ws, "B", RIGHT, batch_size=6)
    with pytest.raises(BakeoffError, match="--allow-mixed") as exc:
        build_leaderboard(ws, "ts@v1", n_boot=200)
    assert "batch_size=4" in str(exc.value) and "batch_size=6" in str(exc.value)
    board = build_leaderboard(ws, "ts@v1", n_boot=200, allow_mixed=True)
    assert len(board.entries) == 2 and any("--allow-mixed" in w for w in board.warnings)
    assert board.entries[0].env["generated_with"][0]["batch_size"] in (4, 6)


def test_weights_swapped_under_the_same_mtime_are_rehashed(ws, tmp_path):
    """cp -p, rsync -a and tar x restore the old mtime (and size) of replaced
    weights; the digest must still change."""
    d = tmp_path / "ckpt"
    d.mkdir()
    (d / "config.json").write_text("{}")
    w = d / "model.safetensors"
    w.write_bytes(b"A" * 4096)
    st = w.stat()
    first = cache.weights_digest(d, ws)
    assert cache.weights_digest(d, ws) == first  # unchanged: served from the hash cache
    w.write_bytes(b"B" * 4096)                   # new content, same size ...
    os.utime(w, ns=(st.st_atime_ns, st.st_mtime_ns))  # ... and the old mtime, as those tools set it
    assert w.stat().st_mtime_ns == st.st_mtime_ns and w.stat().st_size == st.st_size
    assert cache.weights_digest(d, ws) != first


def test_round_2_vs_round_1_compares_each_rounds_best(ts):
    ws = ts
    for label, rnd, step, answers in (("r1 a", 1, 10, {q: a for q, a in RIGHT.items() if q < "q5"}),
                                      ("r1 b", 1, 20, {q: a for q, a in RIGHT.items() if q < "q6"}),
                                      ("r2 a", 2, 30, RIGHT)):
        _eval(ws, label, answers, meta={"run_id": "r", "experiment_name": "fin", "step": step, "kind": "sft",
                                        "datasets": [f"train@v{rnd}"], "round": rnd})
    board = build_leaderboard(ws, "ts@v1", n_boot=200)
    [rc] = board.round_comparison
    assert (rc["round"], rc["vs_round"], rc["checkpoint"], rc["vs_checkpoint"]) == (2, 1, "r2 a", "r1 b")
    assert rc["overall"]["n"] == N and rc["overall"]["diff"] > 0
    assert set(rc["slices"]) == {"in-domain", "adjacent"} and all(c["small"] for c in rc["slices"].values())
    assert rc["overall"]["lo"] - 1e-9 <= rc["overall"]["diff"] <= rc["overall"]["hi"] + 1e-9


def test_prompts_cut_for_the_context_are_counted_and_warned(ws, tmp_path, torch_one_thread):
    """A real (tiny, byte-level, 1024-position) model: a prompt longer than its
    context minus max_new_tokens is cut from the left and counted."""
    from bakeoff.evaluate.fakes import save_tiny_causal_lm

    items = [dict(question="short question", reference="x"), dict(question="long " * 400 + "question?", reference="y"),
             dict(question="another short one", reference="z")]
    commit_testset(ws, "ts", items)
    version, frame = load_items(ws, "ts@v1")
    path = save_tiny_causal_lm(tmp_path / "m", seed=0)
    evaluate_model(ws, version, frame, ModelSpec("tiny", path=str(path)), GenerationSettings(max_new_tokens=4),
                   loglik=False)
    board = build_leaderboard(ws, "ts@v1", n_boot=200)
    e = board.entries[0]
    assert (e.n_truncated, round(e.truncated_share, 3)) == (1, 0.333)
    assert any("cut to fit the model's context" in w for w in board.warnings)
    assert board.to_json()["checkpoints"][0]["n_truncated"] == 1


def test_one_model_resumed_under_another_batch_size_is_mixed(ts):
    ws = ts
    with pytest.raises(GeneratorInterrupted):
        _eval(ws, "A", RIGHT, batch_size=4, fail_after=1)
    _eval(ws, "A", RIGHT, batch_size=8)  # resumed: 4 outputs from bs=4, 8 from bs=8
    with pytest.raises(BakeoffError, match="--allow-mixed"):
        build_leaderboard(ws, "ts@v1", n_boot=200)


def test_outputs_without_a_recorded_environment_are_warned_about(ts):
    ws = ts
    _eval(ws, "old", RIGHT)
    _eval(ws, "new", RIGHT)
    with cache.connect(ws) as con:  # as stored by the first version of bakeoff
        con.execute("UPDATE eval_outputs SET env = NULL WHERE weights_digest = 'd-old'")
    board = build_leaderboard(ws, "ts@v1", n_boot=200)
    assert len(board.entries) == 2
    assert any("environment of old was not recorded" in w for w in board.warnings)
