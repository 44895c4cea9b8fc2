"""End to end: two rounds of the iteration loop from one pipeline file, tiny models.

Round 1 runs the file (`bakeoff pipeline run`): ingest, curate, a held-out test
set with an adjacent slice, SFT, reward model, PPO, evaluation of the base model
and every checkpoint, ranking. Round 2 is how a user iterates: change the recipe
in the file and run it again. The unchanged ingests and the reward model are
reused, the test set stays the same (re-checked against the new training
version), SFT trains on the new version and PPO on the new SFT checkpoint, and
`evaluate rank` ranks both rounds on the one test set. Running the same file once
more changes nothing, so every step, PPO included, is reused.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from bakeoff.cli import cli

pytestmark = pytest.mark.filterwarnings("ignore")

TINY_SFT = {"batch_size": 8, "max_length": 512, "max_steps": 2, "save_steps": 2}  # the rows are 80-470 tokens


def _invoke(ws: Path, *args: str) -> dict:
    result = CliRunner().invoke(cli, ["--workspace", str(ws), *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _pipeline(tmp_path: Path, recipe: str) -> Path:
    from bakeoff.demo_data import generate

    files = generate(tmp_path / "raw", seed=3, scale=0.15)  # the same files every round
    spec = {
        "experiment": "e2e",
        "hypothesis": "curation helps",
        "datasets": {
            "fin-train": {"paths": [str(files["fin-train"])]},
            "pool": {"paths": [str(files[k]) for k in ("pool-finance", "pool-invoices", "pool-contracts")]},
            "prefs": {"paths": [str(files["prefs"])]},
            "prompts": {"paths": [str(files["prompts"])], "format": "prompt"},
        },
        "curate": {"dataset": "fin-train", "recipe": recipe},
        # The hashing embedder measures word overlap, not meaning, so the test
        # names the adjacent and far domains rather than relying on the bands.
        "testset": {"name": "fin-test", "pools": ["pool"], "size": 24,
                    "adjacent": ["invoices"], "far": ["contracts"]},
        "train": {
            "model": "tiny",
            "sft": TINY_SFT,
            "reward": {"dataset": "prefs", "batch_size": 8, "max_length": 256, "max_steps": 1,
                       "save_steps": 1},
            "ppo": {"prompts": "prompts", "steps": 1, "batch_size": 2, "mini_batch_size": 2,
                    "ppo_epochs": 1, "max_new_tokens": 4},
        },
        "evaluate": {"generation": {"max_new_tokens": 4, "batch_size": 16}, "loglik": False},
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _actions(summary: dict) -> dict[str, str]:
    return {p["step"]: p["action"] for p in summary["plan"]}


def test_two_rounds_on_one_test_set(tmp_path: Path, torch_one_thread):
    ws = tmp_path / "ws"
    r1 = _invoke(ws, "pipeline", "run", str(_pipeline(tmp_path, "default_recipe.yaml")), "--json")

    # Round 1: versions, runs, a test set with an adjacent slice, a leaderboard.
    assert r1["round"] == 1 and r1["reused"] == []
    versions = r1["versions"]
    assert versions["curated"] == "fin-train@v2" and versions["testset"] == "fin-test@v1"
    assert [r["kind"] for r in r1["runs"]] == ["sft", "reward", "ppo"]
    assert all(r["round"] == 1 and not r["reused"] for r in r1["runs"])
    sft1, reward1, ppo1 = r1["runs"]
    board = r1["leaderboard"]
    assert len(board["checkpoints"]) == 1 + len(sft1["checkpoints"]) + len(ppo1["checkpoints"])  # + base
    assert {"in-domain", "adjacent"} <= set(board["slices"])
    assert Path(r1["reports"]["leaderboard"]).exists()
    assert Path(r1["reports"]["coverage fin-train@v2"]).exists()

    # Round 2: the recipe changed. The dry run says what will happen...
    path2 = _pipeline(tmp_path, "demo_round2_recipe.yaml")
    plan = _invoke(ws, "pipeline", "run", str(path2), "--dry-run", "--json")
    assert plan["round"] == 2
    assert _actions(plan) == {
        "ingest fin-train": "reuse", "ingest pool": "reuse", "ingest prefs": "reuse", "ingest prompts": "reuse",
        "curate": "run", "test set": "fixed", "check test set overlap": "run", "train sft": "run",
        "train reward": "reuse", "train ppo": "run", "evaluate": "run", "rank": "run"}
    # ... and the run does it.
    r2 = _invoke(ws, "pipeline", "run", str(path2), "--json")
    assert r2["round"] == 2
    assert {k: r2["versions"][k] for k in ("fin-train", "pool", "prefs", "prompts", "testset")} == {
        "fin-train": "fin-train@v1", "pool": "pool@v1", "prefs": "prefs@v1", "prompts": "prompts@v1",
        "testset": "fin-test@v1"}
    acts = _actions(r2)
    assert {s for s, a in acts.items() if a in ("reuse", "fixed")} == {
        "ingest fin-train", "ingest pool", "ingest prefs", "ingest prompts", "test set", "train reward"}
    assert acts["check test set overlap"] == "run"
    sft2, reward2, ppo2 = r2["runs"]
    assert reward2["reused"] and reward2["run_id"] == reward1["run_id"] and reward2["round"] == 1
    assert not sft2["reused"] and sft2["round"] == 2 and sft2["dataset"] != sft1["dataset"]
    assert not ppo2["reused"] and ppo2["round"] == 2  # its policy, the SFT checkpoint, is new

    # Both rounds ranked on the one test set, by the loop and by `evaluate rank`.
    ranked_by_loop = {e.get("path") for e in r2["leaderboard"]["checkpoints"]}
    ranked = _invoke(ws, "evaluate", "rank", "--json")  # no flags: the newest test set, every checkpoint
    assert ranked["testset"] == "fin-test@v1"
    ranked_paths = {e.get("path") for e in ranked["checkpoints"]}
    for ckpt in sft1["checkpoints"] + ppo1["checkpoints"] + sft2["checkpoints"] + ppo2["checkpoints"]:
        assert str(Path(ckpt).resolve()) in ranked_paths & ranked_by_loop
    for e in ranked["checkpoints"]:  # tied means share a rank (1, 1, 3)
        assert e["rank"] == 1 + sum(o["score"] > e["score"] + 1e-12 for o in ranked["checkpoints"])

    # The same file again: nothing changed, so nothing trains, PPO included.
    r3 = _invoke(ws, "pipeline", "run", str(path2), "--json")
    assert r3["round"] == 3 and all(r["reused"] for r in r3["runs"])
    assert [(r["kind"], r["run_id"]) for r in r3["runs"]] == [(r["kind"], r["run_id"]) for r in r2["runs"]]
    assert {a for s, a in _actions(r3).items() if s not in ("evaluate", "rank")} <= {"reuse", "fixed"}
    assert r3["versions"]["curated"] == r2["versions"]["curated"]

    # Lineage: each SFT run names the dataset version it trained on, in MLflow.
    import mlflow

    from bakeoff.tracking import setup_mlflow
    from bakeoff.workspace import Workspace

    setup_mlflow(Workspace(ws))
    for run in (sft1, sft2):
        assert run["dataset"] in [d.dataset.name for d in mlflow.get_run(run["run_id"]).inputs.dataset_inputs]
