"""Pipeline files: the README's example parses, and bad files get one-line errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bakeoff.pipeline import load_pipeline
from bakeoff.workspace import BakeoffError

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_example_parses(tmp_path: Path):
    block = re.search(r"```yaml\n(experiment: .*?)```", README.read_text(), re.S)
    assert block, "README has a pipeline example"
    path = tmp_path / "pipeline.yaml"
    path.write_text(block.group(1))
    cfg = load_pipeline(path)
    assert cfg.experiment == "invoices-assistant"
    assert [s.name for s in cfg.sources] == ["train", "pool", "prefs", "prompts"]
    assert cfg.sources[1].paths[1] == str(tmp_path / "data/invoices.jsonl.gz")
    assert cfg.sources[3].format == "prompt"
    assert cfg.recipe and Path(cfg.recipe).name == "default_recipe.yaml" and Path(cfg.recipe).exists()
    assert (cfg.testset, cfg.pools, cfg.testset_options) == ("heldout", ["pool"], {"size": 300, "seed": 7})
    assert cfg.reward_dataset == "prefs" and cfg.ppo_prompts == "prompts" and cfg.algorithm == "ppo"
    assert cfg.ppo == {"steps": 50, "max_new_tokens": 64}
    assert cfg.generation == {"max_new_tokens": 64, "batch_size": 16}


@pytest.mark.parametrize("text, message", [
    ("experiment: x\nstages: {}\n", "unknown section"),
    ("datasets:\n  a: {format: auto}\n", "needs 'paths'"),
    ("datasets:\n  a: {paths: [a.jsonl]}\ntestset: {pools: [a]}\n", "curate.dataset"),
    ("curate: {dataset: a}\n", "testset.pools"),
    ("curate: {dataset: a, recipe: nope.yaml}\ntestset: {pools: [a]}\n", "recipe not found"),
    (": : :\n", "not valid YAML"),
])
def test_bad_pipeline_files(tmp_path: Path, text: str, message: str):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(BakeoffError, match=message):
        load_pipeline(path)


def test_unknown_stage_option_is_one_line_error():
    from bakeoff.loop import _build
    from bakeoff.train.config import SFTRunConfig

    with pytest.raises(BakeoffError, match="sft: unknown option.*learning_rat"):
        _build(SFTRunConfig, {"learning_rat": 1e-4}, "sft")
