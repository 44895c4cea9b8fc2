"""The demo's presets are valid stage configurations (the loop itself is
exercised end to end in test_loop_e2e.py)."""

from __future__ import annotations

import pytest

from bakeoff.demo import demo_config, packaged
from bakeoff.loop import _build


@pytest.mark.parametrize("quick", [True, False])
def test_presets_build_every_stage_config(quick: bool):
    from bakeoff.evaluate.generate import GenerationSettings
    from bakeoff.testsets.builder import BuildConfig
    from bakeoff.train.config import RewardRunConfig, SFTRunConfig
    from bakeoff.train.ppo import PPOConfig

    cfg, preset = demo_config(quick)
    assert cfg.model == ("tiny" if quick else "smollm2")
    _build(SFTRunConfig, cfg.sft, "sft", dataset="d@v1")
    _build(RewardRunConfig, cfg.reward, "reward", dataset="p@v1")
    _build(PPOConfig, cfg.ppo, "ppo").validate()
    _build(BuildConfig, cfg.testset_options, "testset")
    _build(GenerationSettings, cfg.generation, "generation")
    assert packaged("default_recipe.yaml").exists() and packaged("demo_round2_recipe.yaml").exists()


def test_demo_refuses_a_workspace_with_data(tmp_path):
    from click.testing import CliRunner

    from bakeoff.cli import cli
    from bakeoff.schema import conform, with_ids
    from bakeoff.workspace import Workspace

    import polars as pl

    ws = Workspace(tmp_path / "ws")
    rows = with_ids(conform(pl.DataFrame({"kind": ["prompt"], "messages": [[{"role": "user", "content": "q"}]]})))
    ws.commit_version("x", rows, operation="test")
    result = CliRunner().invoke(cli, ["--workspace", str(ws.root), "demo", "--quick"])
    assert result.exit_code != 0 and "fresh workspace" in str(result.exception)
