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
    for name in ("train.jsonl", "heldout_finance.json", "invoices.jsonl.gz", "contracts.csv",
                 "preferences.json", "ppo_prompts.jsonl"):
        (tmp_path / "data").mkdir(exist_ok=True)
        (tmp_path / "data" / name).write_text("")
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
    ("datasets:\n  a: {paths: [missing.jsonl]}\n", "file not found: .*missing.jsonl"),
    ("experimnet: x\n", "unknown section 'experimnet' \\(did you mean 'experiment'\\?\\)"),
    ("curate: {dataset: a}\ntestset: {pools: [a], rebuid: true}\n", "did you mean 'rebuild'"),
    ("curate: {dataset: a}\ntestset: {pools: [a]}\ntrain: {sfft: {}}\n", "did you mean 'sft'"),
    ("curate: {dataset: a}\ntestset: {pools: [a], decontam: {ngram_flag: x}}\n",
     "testset.decontam.ngram_flag: expected int"),
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


GOOD = """
experiment: x
datasets:
  a: {paths: [a.jsonl], meta: {domain: finance}}
curate: {dataset: a}
testset: {pools: [a], size: 20}
train:
  model: tiny
  sft: {batch_size: 8, max_steps: 4}
  reward: {dataset: a, max_steps: 2}
  ppo: {prompts: a, steps: 1, batch_size: 4, mini_batch_size: 2}
evaluate: {generation: {max_new_tokens: 8}}
"""


def _write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "a.jsonl").write_text('{"instruction": "q", "output": "a"}\n')
    path = tmp_path / "p.yaml"
    path.write_text(text)
    return path


def test_whole_file_is_checked_and_every_problem_listed(tmp_path: Path):
    assert load_pipeline(_write(tmp_path, GOOD)).sft == {"batch_size": 8, "max_steps": 4}
    bad = (GOOD.replace("batch_size: 8", "batchsize: 8")          # typo, with did-you-mean
           .replace("size: 20", "size: twenty")                   # wrong type
           .replace("max_new_tokens: 8", "max_new_tokens: 8, temprature: 0.5")
           .replace("mini_batch_size: 2", "mini_batch_size: 3")   # PPO's own check
           .replace("meta: {domain: finance}", "meta: {domian: finance}")
           .replace("curate: {dataset: a}", "curate: {dataset: a, recipe: nope.yaml}"))
    with pytest.raises(BakeoffError) as info:
        load_pipeline(_write(tmp_path, bad))
    message = str(info.value)
    assert "6 problem(s), nothing was run" in message
    assert "train.sft: unknown option 'batchsize' (did you mean 'batch_size'?)" in message
    assert "testset.size: expected int, got str 'twenty'" in message
    assert "evaluate.generation: unknown option 'temprature' (did you mean 'temperature'?)" in message
    assert "multiple of mini_batch_size" in message
    assert "datasets.a.meta: unknown option 'domian' (did you mean 'domain'?)" in message
    assert "curate.recipe: recipe not found: nope.yaml" in message


def test_reward_without_ppo_is_refused(tmp_path: Path):
    text = GOOD.replace("  ppo: {prompts: a, steps: 1, batch_size: 4, mini_batch_size: 2}\n", "")
    with pytest.raises(BakeoffError, match="go together"):
        load_pipeline(_write(tmp_path, text))


def test_testset_round_options(tmp_path: Path):
    cfg = load_pipeline(_write(tmp_path, GOOD.replace("size: 20}", "size: 20, rebuild: true, overlap: report}")))
    assert (cfg.testset_rebuild, cfg.testset_overlap, cfg.testset_options) == (True, "report", {"size": 20})
    with pytest.raises(BakeoffError, match="testset.overlap: expected remove or report"):
        load_pipeline(_write(tmp_path, GOOD.replace("size: 20}", "size: 20, overlap: drop}")))


def test_dry_run_on_a_fresh_workspace_runs_nothing(tmp_path: Path):
    import json

    from click.testing import CliRunner

    from bakeoff.cli import cli
    from bakeoff.workspace import Workspace

    ws = tmp_path / "ws"
    res = CliRunner().invoke(cli, ["--workspace", str(ws), "pipeline", "run", str(_write(tmp_path, GOOD)),
                                   "--dry-run", "--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    plan = json.loads(res.stdout)["plan"]
    assert [(p["step"], p["action"]) for p in plan] == [
        ("ingest a", "run"), ("curate", "run"), ("build test set", "run"), ("train sft", "run"),
        ("train reward", "run"), ("train ppo", "run"), ("evaluate", "run"), ("rank", "run")]
    assert Workspace(ws).versions() == []
