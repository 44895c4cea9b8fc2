"""`bakeoff pipeline run pipeline.yaml`: the demo's loop on a user's own files and models.

A pipeline file has one section per stage; each section's options are the
stage's own (see ``bakeoff.loop``). Paths are relative to the pipeline file.
The README shows a complete example.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from bakeoff.context import get_workspace, json_option
from bakeoff.loop import LoopConfig, Source, resolve_recipe
from bakeoff.workspace import BakeoffError

_SECTIONS = {"experiment", "hypothesis", "datasets", "curate", "testset", "train", "evaluate"}


def _section(spec: dict[str, Any], key: str) -> dict[str, Any]:
    value = spec.get(key) or {}
    if not isinstance(value, dict):
        raise BakeoffError(f"pipeline: '{key}' must be a mapping")
    return dict(value)


def load_pipeline(path: str | Path) -> LoopConfig:
    """Read a pipeline YAML file into a LoopConfig (one-line errors for bad files)."""
    import yaml

    path = Path(path)
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise BakeoffError(f"cannot read pipeline file {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise BakeoffError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(spec, dict):
        raise BakeoffError(f"{path}: a pipeline file is a mapping of sections")
    unknown = sorted(set(spec) - _SECTIONS)
    if unknown:
        raise BakeoffError(f"{path}: unknown section(s) {', '.join(unknown)}; known: {', '.join(sorted(_SECTIONS))}")
    base = path.parent.resolve()

    sources = []
    for name, src in _section(spec, "datasets").items():
        src = dict(src or {})
        paths = src.pop("paths", None) or ([src.pop("path")] if "path" in src else [])
        if not paths:
            raise BakeoffError(f"{path}: dataset {name!r} needs 'paths'")
        bad = sorted(set(src) - {"format", "meta", "map"})
        if bad:
            raise BakeoffError(f"{path}: dataset {name!r}: unknown option(s) {', '.join(bad)}")
        sources.append(Source(name=name, paths=[str((base / p)) for p in paths],
                              format=src.get("format", "auto"), meta=src.get("meta") or {},
                              map=src.get("map") or {}))

    curate, testset = _section(spec, "curate"), _section(spec, "testset")
    train, evaluate = _section(spec, "train"), _section(spec, "evaluate")
    reward, ppo = dict(train.pop("reward", None) or {}), dict(train.pop("ppo", None) or {})
    if "dataset" not in curate:
        raise BakeoffError(f"{path}: curate.dataset names the dataset to curate and train on")
    if not testset.get("pools"):
        raise BakeoffError(f"{path}: testset.pools lists the pool dataset(s) to draw test items from")
    recipe = curate.get("recipe", "default_recipe.yaml")
    return LoopConfig(
        experiment=str(spec.get("experiment") or "bakeoff"),
        hypothesis=spec.get("hypothesis"),
        sources=sources,
        train_dataset=curate["dataset"],
        recipe=resolve_recipe(recipe, base) if recipe else None,
        testset=testset.pop("name", "test"),
        pools=list(testset.pop("pools")),
        testset_options=testset,
        model=str(train.pop("model", "smollm2")),
        sft=dict(train.pop("sft", None) or {}),
        reward_dataset=reward.pop("dataset", None),
        reward_model=reward.pop("model", None),
        reward=reward,
        ppo_prompts=ppo.pop("prompts", None),
        algorithm=ppo.pop("algorithm", "ppo"),
        ppo=ppo,
        generation=dict(evaluate.pop("generation", None) or {}),
        loglik=bool(evaluate.pop("loglik", True)),
    )


@click.group()
def pipeline() -> None:
    """Run the whole loop from a pipeline file.

    \b
    Example:
      bakeoff pipeline run pipeline.yaml
    """


@pipeline.command("run")
@click.argument("pipeline_file", type=click.Path(dir_okay=False))
@json_option
def run_cmd(pipeline_file: str, as_json: bool) -> None:
    """Ingest, curate, build the test set, train, evaluate and rank, as PIPELINE_FILE says.

    Every step writes versions and MLflow runs in the workspace; run it again
    after changing the recipe and `bakeoff evaluate rank --experiment E` ranks
    the checkpoints of both rounds together.

    \b
    Example:
      bakeoff --workspace ws pipeline run pipeline.yaml --json > summary.json
    """
    from bakeoff.console import emit
    from bakeoff.demo import render_summary
    from bakeoff.loop import run_loop

    cfg = load_pipeline(pipeline_file)
    result = run_loop(get_workspace(), cfg)
    emit(result.to_json(), as_json, lambda r: render_summary(r, cfg.experiment))
