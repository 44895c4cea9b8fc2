"""`bakeoff pipeline run pipeline.yaml`: the demo's loop on a user's own files and models.

A pipeline file has one section per stage; each section's options are the
stage's own (see ``bakeoff.loop``). Paths are relative to the pipeline file.
The README shows a complete example.

The whole file is checked before anything runs: unknown sections and options
(with the nearest known name), values of the wrong type, missing files and
recipes, settings a stage would refuse. Every problem is listed at once.
Running the file again is the next round: unchanged steps are reused
(``bakeoff.loop``); ``--dry-run`` prints which steps would run and which would
be reused, and runs nothing.
"""

from __future__ import annotations

import difflib
import types
import typing
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

import click

from bakeoff.context import get_workspace, json_option
from bakeoff.executor import executor_options, resolve_executor
from bakeoff.loop import LoopConfig, Source, resolve_recipe
from bakeoff.workspace import BakeoffError

_SECTIONS = {"experiment", "hypothesis", "datasets", "curate", "testset", "train", "evaluate", "executor"}
_DATASET_KEYS = {"paths", "path", "format", "meta", "map"}
_CURATE_KEYS = {"dataset", "recipe"}
_TESTSET_KEYS = {"name", "pools", "rebuild", "overlap"}     # besides testsets BuildConfig's options
_TRAIN_KEYS = {"model", "sft", "reward", "ppo"}
_EVALUATE_KEYS = {"generation", "loglik"}
_ALGORITHMS = ("ppo", "grpo", "rloo")


# --- checking ---------------------------------------------------------------------------------

def _unknown(keys: Any, known: set[str], where: str) -> list[str]:
    """One problem per unknown key, with the nearest known name."""
    problems = []
    for key in sorted(set(map(str, keys)) - known):
        near = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
        hint = f" (did you mean '{near[0]}'?)" if near else f" (known: {', '.join(sorted(known))})"
        problems.append(f"{where}: unknown option '{key}'{hint}")
    return problems


def _type_ok(value: Any, hint: Any) -> bool:
    """Is ``value`` (as YAML gives it) of the type a config field declares?"""
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(hint))
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if (origin or hint) in (list, tuple):
        return isinstance(value, (list, tuple))
    if (origin or hint) is dict:
        return isinstance(value, dict)
    if is_dataclass(hint):
        return isinstance(value, dict)
    return True


def _type_name(hint: Any) -> str:
    args = typing.get_args(hint)
    if typing.get_origin(hint) is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if args and typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    return "null" if hint is type(None) else getattr(hint, "__name__", str(hint))


def check_options(cls: type, options: dict[str, Any], where: str, fixed: frozenset[str] = frozenset(),
                  section_keys: frozenset[str] = frozenset()) -> list[str]:
    """Problems of ``options`` for the config dataclass ``cls``: unknown names
    (``fixed`` fields are set by the loop; ``section_keys`` are the section's own
    keys, already taken out, offered as names too), wrong types (nested
    dataclasses checked too), and what the config's own ``validate()`` refuses."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)} - set(fixed)
    problems = _unknown(options, known | set(section_keys), where)
    for key, value in options.items():
        if key not in known:
            continue
        hint = hints.get(key, Any)
        if not _type_ok(value, hint):
            problems.append(f"{where}.{key}: expected {_type_name(hint)}, got {type(value).__name__} {value!r}")
        elif is_dataclass(hint) and isinstance(value, dict):
            problems += check_options(hint, value, f"{where}.{key}")
    if not problems and hasattr(cls, "validate"):
        from bakeoff.loop import _build

        try:
            _build(cls, options, where).validate()
        except (BakeoffError, TypeError, ValueError) as exc:
            problems.append(f"{where}: {exc}")
    return problems


def _mapping(value: Any, where: str, problems: list[str]) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        problems.append(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
        return {}
    return dict(value)


def _check_dataset(name: str, src: dict[str, Any], base: Path, problems: list[str]) -> list[str]:
    """Problems of one ``datasets`` entry; returns its file paths (relative to ``base``)."""
    from bakeoff.curate import formats
    from bakeoff.curate.ingest import expand_paths
    from bakeoff.schema import META_FIELDS

    where = f"datasets.{name}"
    problems += _unknown(src, _DATASET_KEYS, where)
    paths = src.get("paths", [src["path"]] if "path" in src else [])
    paths = [paths] if isinstance(paths, str) else paths
    if not paths or not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        problems.append(f"{where}: needs 'paths' (a list of files or directories)")
        return []
    for p in paths:
        if not (base / p).exists():
            problems.append(f"{where}: file not found: {base / p}")
        elif (base / p).is_dir():
            try:
                expand_paths([base / p])
            except BakeoffError as exc:
                problems.append(f"{where}: {exc}")
    fmt = src.get("format", "auto")
    if fmt not in ("auto", *formats.FORMAT_NAMES):
        problems.append(f"{where}.format: {fmt!r} is not auto or one of {', '.join(formats.FORMAT_NAMES)}")
    for key, allowed in (("meta", set(META_FIELDS)), ("map", set(formats.MAPPABLE))):
        problems += _unknown(_mapping(src.get(key), f"{where}.{key}", problems), allowed, f"{where}.{key}")
    return [str(base / p) for p in paths]


def load_pipeline(path: str | Path) -> LoopConfig:
    """Read and check a whole pipeline YAML file into a LoopConfig; every
    problem is reported at once, before anything runs."""
    import yaml

    from bakeoff.evaluate.generate import GenerationSettings
    from bakeoff.testsets.builder import BuildConfig
    from bakeoff.train.config import RewardRunConfig, SFTRunConfig
    from bakeoff.train.ppo import PPOConfig
    from bakeoff.train.rl import GroupRLConfig

    path = Path(path)
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise BakeoffError(f"cannot read pipeline file {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise BakeoffError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(spec, dict):
        raise BakeoffError(f"{path}: a pipeline file is a mapping of sections")
    base = path.parent.resolve()
    problems = [p.replace("option", "section", 1) for p in _unknown(spec, _SECTIONS, "pipeline")]

    sources = []
    for name, src in _mapping(spec.get("datasets"), "datasets", problems).items():
        src = _mapping(src, f"datasets.{name}", problems)
        paths = _check_dataset(str(name), src, base, problems)
        sources.append(Source(name=str(name), paths=paths, format=src.get("format", "auto"),
                              meta=src.get("meta") or {}, map=src.get("map") or {}))

    curate = _mapping(spec.get("curate"), "curate", problems)
    testset = _mapping(spec.get("testset"), "testset", problems)
    train = _mapping(spec.get("train"), "train", problems)
    evaluate = _mapping(spec.get("evaluate"), "evaluate", problems)
    reward = _mapping(train.pop("reward", None), "train.reward", problems)
    ppo = _mapping(train.pop("ppo", None), "train.ppo", problems)
    sft = _mapping(train.pop("sft", None), "train.sft", problems)
    generation = _mapping(evaluate.pop("generation", None), "evaluate.generation", problems)

    problems += _unknown(curate, _CURATE_KEYS, "curate")
    if not isinstance(curate.get("dataset"), str):
        problems.append("curate.dataset names the dataset to curate and train on")
    recipe = curate.get("recipe", "default_recipe.yaml")
    if recipe:
        try:
            from bakeoff.curate.recipe import load_recipe

            recipe = resolve_recipe(recipe, base)
            load_recipe(recipe)
        except BakeoffError as exc:
            problems.append(f"curate.recipe: {exc}")

    pools = testset.pop("pools", None)
    if not pools or not isinstance(pools, list):
        problems.append("testset.pools lists the pool dataset(s) to draw test items from")
    name, rebuild = testset.pop("name", "test"), testset.pop("rebuild", False)
    overlap = testset.pop("overlap", "remove")
    if not isinstance(rebuild, bool):
        problems.append(f"testset.rebuild: expected true or false, got {rebuild!r}")
    if overlap not in ("remove", "report"):
        problems.append(f"testset.overlap: expected remove or report, got {overlap!r}")
    problems += check_options(BuildConfig, testset, "testset", section_keys=_TESTSET_KEYS)

    problems += _unknown(train, _TRAIN_KEYS, "train")
    set_by_loop = frozenset({"dataset", "model", "experiment_name", "hypothesis", "round", "run_name",
                             "extra_tags", "reward_model"})
    problems += check_options(SFTRunConfig, sft, "train.sft", set_by_loop)
    reward_dataset, reward_model = reward.pop("dataset", None), reward.pop("model", None)
    problems += check_options(RewardRunConfig, reward, "train.reward", set_by_loop,
                              frozenset({"dataset", "model"}))
    prompts, algorithm = ppo.pop("prompts", None), ppo.pop("algorithm", "ppo")
    ppo_keys = frozenset({"prompts", "algorithm"})
    if algorithm not in _ALGORITHMS:
        problems.append(f"train.ppo.algorithm: expected one of {', '.join(_ALGORITHMS)}, got {algorithm!r}")
    elif algorithm == "ppo":
        problems += check_options(PPOConfig, ppo, "train.ppo", set_by_loop, ppo_keys)
    else:
        problems += check_options(GroupRLConfig, ppo, "train.ppo", set_by_loop | {"algorithm"}, ppo_keys)
    if bool(reward_dataset) != bool(prompts):
        problems.append("train.reward.dataset and train.ppo.prompts go together: the reward model is "
                        "trained for PPO, and PPO needs it (give both, or neither)")
    problems += _unknown(evaluate, _EVALUATE_KEYS, "evaluate")
    problems += check_options(GenerationSettings, generation, "evaluate.generation")
    loglik = evaluate.pop("loglik", True)
    if not isinstance(loglik, bool):
        problems.append(f"evaluate.loglik: expected true or false, got {loglik!r}")

    executor = None  # executor: local | ray -- where curation and evaluation batches run
    try:
        value = spec.get("executor")
        if value is not None and not isinstance(value, str):
            raise BakeoffError(f"expected local or ray, got {value!r}")
        executor = resolve_executor(pipeline=value)
    except BakeoffError as exc:
        problems.append(f"executor: {exc}")

    if problems:
        raise BakeoffError(f"{path}: {len(problems)} problem(s), nothing was run:\n  "
                           + "\n  ".join(problems))
    return LoopConfig(
        experiment=str(spec.get("experiment") or "bakeoff"),
        hypothesis=spec.get("hypothesis"),
        sources=sources,
        train_dataset=curate["dataset"],
        recipe=recipe or None,
        testset=name,
        pools=list(pools),
        testset_options=testset,
        testset_rebuild=rebuild,
        testset_overlap=overlap,
        model=str(train.pop("model", "smollm2")),
        sft=sft,
        reward_dataset=reward_dataset,
        reward_model=reward_model,
        reward=reward,
        ppo_prompts=prompts,
        algorithm=algorithm,
        ppo=ppo,
        generation=generation,
        loglik=loglik,
        executor=executor,
    )


# --- commands ---------------------------------------------------------------------------------

@click.group()
def pipeline() -> None:
    """Run the whole loop from a pipeline file.

    \b
    Example:
      bakeoff pipeline run pipeline.yaml --dry-run
      bakeoff pipeline run pipeline.yaml
    """


@pipeline.command("run")
@click.argument("pipeline_file", type=click.Path(dir_okay=False))
@click.option("--dry-run", is_flag=True,
              help="Check the file and print the plan (which steps run, which are reused); run nothing.")
@executor_options
@json_option
def run_cmd(pipeline_file: str, dry_run: bool, executor_kind: str | None, ray_address: str | None,
            as_json: bool) -> None:
    """Ingest, curate, build the test set, train, evaluate and rank, as PIPELINE_FILE says.

    The whole file is checked first. Every step writes versions and MLflow runs
    in the workspace. Running the file again is the next round: steps whose
    inputs did not change are reused (ingests of the same files, runs with the
    same data, model and settings), the test set stays the same, and the
    ranking covers every round on it.

    \b
    Example:
      bakeoff --workspace ws pipeline run pipeline.yaml --dry-run
      bakeoff --workspace ws pipeline run pipeline.yaml --json > summary.json
      bakeoff --workspace ws pipeline run pipeline.yaml --executor ray   # beats `executor:` in the file
    """
    from bakeoff.console import emit
    from bakeoff.loop import run_loop

    cfg = load_pipeline(pipeline_file)
    if executor_kind or ray_address:
        cfg.executor = resolve_executor(executor_kind, pipeline=cfg.executor.kind if cfg.executor else None,
                                        ray_address=ray_address)
    result = run_loop(get_workspace(), cfg, dry_run=dry_run)
    emit(result.to_json(), as_json, render_plan if dry_run else lambda r: render_run(r, cfg.experiment))


def render_plan(r: dict[str, Any]) -> None:
    """The plan of a round: each step, and whether it runs or is reused."""
    from bakeoff.console import out, table

    out.print(table(f"round {r['round']}: plan (nothing was run)", ["step", "action", "detail"],
                    [(p["step"], p["action"], p["detail"]) for p in r["plan"]]))
    for note in r["notes"]:
        out.print(f"[bold]note:[/] {note}")


def render_run(r: dict[str, Any], experiment: str) -> None:
    """The demo's summary, then what this round reused and what to keep in mind."""
    from bakeoff.console import out
    from bakeoff.demo import render_summary

    render_summary(r, experiment)
    out.print(f"round {r['round']}: reused {len(r['reused'])} step(s)"
              + "".join(f"\n  {p['step']}: {p['detail']}" for p in r["reused"]))
    for note in r["notes"]:
        out.print(f"[bold]note:[/] {note}")
