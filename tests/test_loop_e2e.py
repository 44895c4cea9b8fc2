"""End to end: the whole iteration loop with tiny models, as a user drives it.

Round 1 runs from a pipeline file (`bakeoff pipeline run`): ingest, curate, a
held-out test set with an adjacent slice, SFT, reward model, PPO, evaluation of
the base model and every checkpoint, ranking. Round 2 is the iteration a user
does by hand: one more curation rule, another SFT run, and `evaluate rank
--experiment` ranking the checkpoints of both rounds together, with lineage.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from bakeoff.cli import cli

pytestmark = pytest.mark.filterwarnings("ignore")

TINY_SFT = {"batch_size": 8, "max_length": 512, "max_steps": 4, "save_steps": 2}  # the rows are 80-470 tokens


def _invoke(ws: Path, *args: str) -> dict:
    result = CliRunner().invoke(cli, ["--workspace", str(ws), *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _pipeline(tmp_path: Path) -> Path:
    from bakeoff.demo_data import generate

    files = generate(tmp_path / "raw", seed=3, scale=0.15)
    spec = {
        "experiment": "e2e",
        "hypothesis": "curation helps",
        "datasets": {
            "fin-train": {"paths": [str(files["fin-train"])]},
            "pool": {"paths": [str(files[k]) for k in ("pool-finance", "pool-invoices", "pool-contracts")]},
            "prefs": {"paths": [str(files["prefs"])]},
            "prompts": {"paths": [str(files["prompts"])], "format": "prompt"},
        },
        "curate": {"dataset": "fin-train", "recipe": "default_recipe.yaml"},
        # The hashing embedder measures word overlap, not meaning, so the test
        # names the adjacent and far domains rather than relying on the bands.
        "testset": {"name": "fin-test", "pools": ["pool"], "size": 30,
                    "adjacent": ["invoices"], "far": ["contracts"]},
        "train": {
            "model": "tiny",
            "sft": TINY_SFT,
            "reward": {"dataset": "prefs", "batch_size": 8, "max_length": 1024, "max_steps": 2,
                       "save_steps": 2},
            "ppo": {"prompts": "prompts", "steps": 1, "batch_size": 4, "mini_batch_size": 2,
                    "ppo_epochs": 1, "max_new_tokens": 6},
        },
        "evaluate": {"generation": {"max_new_tokens": 6, "batch_size": 16}},
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_two_rounds_ranked_together(tmp_path: Path):
    ws = tmp_path / "ws"
    summary = _invoke(ws, "pipeline", "run", str(_pipeline(tmp_path)), "--json")

    # Round 1: versions, runs, a test set with an adjacent slice, a leaderboard.
    versions = summary["versions"]
    assert versions["curated"] == "fin-train@v2" and versions["testset"] == "fin-test@v1"
    kinds = [r["kind"] for r in summary["runs"]]
    assert kinds == ["sft", "reward", "ppo"]
    sft_run = summary["runs"][0]
    assert len(sft_run["checkpoints"]) == 2
    board = summary["leaderboard"]
    labels = [e["label"] for e in board["checkpoints"]]
    assert any(label.startswith("base") for label in labels)
    assert len(labels) == 1 + 2 + len(summary["runs"][2]["checkpoints"])  # base + SFT + PPO
    assert {"in-domain", "adjacent"} <= set(board["slices"])
    assert Path(summary["reports"]["leaderboard"]).exists()
    assert Path(summary["reports"]["coverage fin-train@v2"]).exists()

    # Round 2: one more curation rule, another SFT run, rank both rounds together.
    from bakeoff.demo import packaged

    curated = _invoke(ws, "curate", "run", "fin-train@v1", str(packaged("demo_round2_recipe.yaml")), "--json")
    assert curated["version"] == "fin-train@v3"
    sft2 = _invoke(ws, "train", "sft", "--dataset", "fin-train@v3", "--model", "tiny",
                   "--experiment_name", "e2e", "--max-steps", "4", "--save-steps", "2",
                   "--max-length", "512", "--json")
    _invoke(ws, "evaluate", "run", "--testset", "fin-test@v1", "--experiment", "e2e", "--json")
    ranked = _invoke(ws, "evaluate", "rank", "--testset", "fin-test@v1", "--experiment", "e2e", "--json")
    ranked_paths = {e.get("path") for e in ranked["checkpoints"]}
    for ckpt in sft_run["checkpoints"] + sft2["checkpoints"]:
        assert str(Path(ckpt).resolve()) in ranked_paths
    assert sorted(e["rank"] for e in ranked["checkpoints"]) == list(range(1, len(ranked["checkpoints"]) + 1))

    # Lineage: each SFT run names the dataset version it trained on, in MLflow.
    import mlflow

    from bakeoff.tracking import setup_mlflow
    from bakeoff.workspace import Workspace

    setup_mlflow(Workspace(ws))
    for run_id, ref in ((sft_run["run_id"], "fin-train@v2"), (sft2["run_id"], "fin-train@v3")):
        run = mlflow.get_run(run_id)
        assert ref in [d.dataset.name for d in run.inputs.dataset_inputs]
