"""The iteration loop: ingest → curate → test set → SFT → reward → PPO → evaluate → rank.

One function, ``run_loop``, drives every stage through its Python API; ``bakeoff
demo`` calls it on generated demo data and ``bakeoff pipeline run`` on a user's
pipeline file. A ``LoopConfig`` is what a pipeline file says, section by section;
each section's options go straight to that stage's own Config dataclass, so a
pipeline file accepts exactly the options the stage commands document.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from bakeoff.console import err, log
from bakeoff.logs import ensure_library_logs, library_output
from bakeoff.workspace import BakeoffError, Workspace


@dataclass
class Source:
    """Files to ingest as one dataset (see `bakeoff data ingest`)."""

    name: str
    paths: list[str]
    format: str = "auto"
    meta: dict[str, str] = field(default_factory=dict)
    map: dict[str, str] = field(default_factory=dict)


@dataclass
class LoopConfig:
    experiment: str = "bakeoff"
    sources: list[Source] = field(default_factory=list)
    # curate
    train_dataset: str = "train"                 # the sft dataset to curate and train on
    recipe: str | None = "default_recipe.yaml"   # None: train on the ingested version as is
    # held-out test set
    testset: str = "test"
    pools: list[str] = field(default_factory=list)
    testset_options: dict[str, Any] = field(default_factory=dict)   # -> testsets BuildConfig
    # training
    model: str = "smollm2"
    sft: dict[str, Any] = field(default_factory=dict)               # -> SFTRunConfig
    reward_dataset: str | None = None            # preference dataset; None: no reward model/PPO
    reward_model: str | None = None              # default: same as `model`
    reward: dict[str, Any] = field(default_factory=dict)            # -> RewardRunConfig
    ppo_prompts: str | None = None               # prompt dataset; None: no PPO
    ppo: dict[str, Any] = field(default_factory=dict)               # -> PPOConfig
    algorithm: str = "ppo"                       # ppo | grpo | rloo
    # evaluation
    generation: dict[str, Any] = field(default_factory=dict)        # -> GenerationSettings
    loglik: bool = True                          # also score the reference's log-likelihood
    hypothesis: str | None = None


def _build(cls: type, options: dict[str, Any], section: str, **fixed: Any) -> Any:
    """``cls(**fixed, **options)`` with a one-line error for an unknown option."""
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(options) - names)
    if unknown:
        raise BakeoffError(f"{section}: unknown option(s) {', '.join(unknown)}; "
                           f"known: {', '.join(sorted(names - set(fixed)))}")
    return cls(**{**options, **fixed})


@dataclass
class LoopResult:
    versions: dict[str, str] = field(default_factory=dict)   # role -> NAME@vN
    runs: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)  # step -> seconds
    reports: dict[str, str] = field(default_factory=dict)    # report -> path
    leaderboard: dict[str, Any] = field(default_factory=dict)
    tracking_uri: str = ""
    workspace: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class _Steps:
    """Runs named steps with a banner and records their wall time."""

    def __init__(self, result: LoopResult, prefix: str = ""):
        self.result, self.prefix = result, prefix

    def __call__(self, name: str, fn: Callable[[], Any]) -> Any:
        label = f"{self.prefix}{name}"
        err.rule(f"[bold]{label}")
        t0 = time.perf_counter()
        # Libraries print on stdout and stderr; results own stdout (--json), so
        # what a step's libraries print goes to the workspace log (stderr with -v).
        with library_output():
            value = fn()
        self.result.timings[label] = round(time.perf_counter() - t0, 1)
        log(f"[dim]{label}: {self.result.timings[label]:.1f} s[/]")
        return value


def ingest_sources(ws: Workspace, sources: list[Source], result: LoopResult, step: _Steps) -> None:
    from bakeoff.curate.ingest import ingest

    for src in sources:
        res = step(f"ingest {src.name}", lambda s=src: ingest(
            ws, s.paths, s.name, fmt=s.format, mapping=s.map or None, meta=s.meta or None))
        result.versions[src.name] = res.version.ref
        log(f"{res.version.ref}: {res.rows_in} rows in, {res.accepted} accepted, "
            f"{res.quarantined} quarantined")


def curate(ws: Workspace, raw_ref: str, recipe: str | None, step: _Steps,
           reports: dict[str, str] | None = None) -> str:
    """Run the curation recipe on ``raw_ref``; returns the curated version's ref.
    A coverage step's report is also written as HTML (its path goes to ``reports``)."""
    if recipe is None:
        return raw_ref
    from bakeoff.curate.coverage import write_html
    from bakeoff.curate.recipe import load_recipe
    from bakeoff.html import report_name

    res = step("curate", lambda: _run_recipe(ws, raw_ref, load_recipe(recipe)))
    for s in res.steps:
        log(f"  {s.get('step', '?'):<10} {s.get('rows_in', '')} → {s.get('rows_out', '')} rows "
            f"({s.get('seconds', 0):.1f} s)")
    for key, report in res.reports.items():
        if key.endswith(":coverage") and reports is not None:
            path = ws.reports_dir() / report_name("coverage", res.version.ref)
            # The report titles the version it covers.
            reports[f"coverage {res.version.ref}"] = str(write_html({**report, "dataset": res.version.ref}, path))
    return res.version.ref


def _run_recipe(ws: Workspace, ref: str, recipe: Any) -> Any:
    from bakeoff.curate.recipe import run_recipe

    return run_recipe(ws, ref, recipe)


def train_round(ws: Workspace, cfg: LoopConfig, train_ref: str, result: LoopResult, step: _Steps,
                with_rl: bool = True) -> None:
    """SFT on ``train_ref``; then (``with_rl``) reward model and PPO from the last SFT checkpoint."""
    from bakeoff.train.config import RewardRunConfig, SFTRunConfig
    from bakeoff.train.reward import train_reward
    from bakeoff.train.sft import train_sft

    sft_cfg = _build(SFTRunConfig, cfg.sft, "sft", dataset=train_ref, model=cfg.model,
                     experiment_name=cfg.experiment, hypothesis=cfg.hypothesis)
    sft = step("train sft", lambda: train_sft(ws, sft_cfg))
    result.runs.append({"kind": "sft", "dataset": train_ref, **sft.to_json()})
    if not (with_rl and cfg.reward_dataset and cfg.ppo_prompts):
        return
    rm_cfg = _build(RewardRunConfig, cfg.reward, "reward", dataset=ws.resolve(cfg.reward_dataset).ref,
                    model=cfg.reward_model or cfg.model, experiment_name=cfg.experiment)
    rm = step("train reward", lambda: train_reward(ws, rm_cfg))
    result.runs.append({"kind": "reward", "dataset": rm_cfg.dataset, **rm.to_json()})
    if not rm.checkpoints or not sft.checkpoints:
        raise BakeoffError("reward or SFT training produced no checkpoint")
    reward_ckpt, policy = rm.checkpoints[-1], sft.checkpoints[-1]
    prompts = ws.resolve(cfg.ppo_prompts).ref
    if cfg.algorithm == "ppo":
        from bakeoff.train.ppo import PPOConfig, train_ppo

        ppo_cfg = _build(PPOConfig, cfg.ppo, "ppo")
        rl = step("train ppo", lambda: train_ppo(ws, policy, reward_ckpt, prompts, cfg.experiment,
                                                 config=ppo_cfg, hypothesis=cfg.hypothesis))
    else:
        from bakeoff.train.rl import GroupRLConfig, train_group_rl

        rl_cfg = _build(GroupRLConfig, cfg.ppo, cfg.algorithm, algorithm=cfg.algorithm)
        rl = step(f"train {cfg.algorithm}", lambda: train_group_rl(
            ws, policy, reward_ckpt, prompts, cfg.experiment, config=rl_cfg, hypothesis=cfg.hypothesis))
    result.runs.append({"kind": cfg.algorithm, "dataset": prompts, **_as_dict(rl)})


def _as_dict(value: Any) -> dict[str, Any]:
    return value.to_json() if hasattr(value, "to_json") else dict(value)


def evaluate_and_rank(ws: Workspace, cfg: LoopConfig, testset_ref: str, result: LoopResult,
                      step: _Steps) -> Any:
    from bakeoff.evaluate.api import evaluate_checkpoints, rank_checkpoints
    from bakeoff.evaluate.generate import GenerationSettings

    settings = _build(GenerationSettings, cfg.generation, "generation")
    step("evaluate", lambda: evaluate_checkpoints(ws, testset_ref, experiment=cfg.experiment,
                                                  settings=settings, loglik=cfg.loglik))
    board, info = step("rank", lambda: rank_checkpoints(ws, testset_ref, experiment=cfg.experiment,
                                                        to_mlflow=True))
    result.leaderboard = board.to_json()
    result.reports["leaderboard"] = info["html"]
    return board


def run_loop(ws: Workspace, cfg: LoopConfig, result: LoopResult | None = None,
             second_round_recipe: str | None = None) -> LoopResult:
    """The whole loop on ``cfg``. With ``second_round_recipe``, a second round
    re-curates with it, trains SFT on the new version, and the final ranking
    covers the checkpoints of both rounds."""
    from bakeoff.testsets.builder import BuildConfig, build_testset
    from bakeoff.tracking import setup_mlflow

    result = result or LoopResult()
    ensure_library_logs(ws.root)
    result.workspace, result.tracking_uri = str(ws.root), setup_mlflow(ws)
    step = _Steps(result)
    ingest_sources(ws, cfg.sources, result, step)

    # Both rounds curate the same ingested version, so they differ only by recipe.
    raw_ref = ws.resolve(cfg.train_dataset).ref
    train_ref = curate(ws, raw_ref, cfg.recipe, step, result.reports)
    result.versions["curated"] = train_ref
    pools = [ws.resolve(p).ref for p in cfg.pools]
    if not pools:
        raise BakeoffError("a test set needs at least one pool dataset (pools: [...])")
    build_cfg = _build(BuildConfig, cfg.testset_options, "testset")
    built = step("build test set", lambda: build_testset(ws, train_ref, pools, cfg.testset, build_cfg))
    testset_ref = built.version.ref
    result.versions["testset"] = testset_ref
    if built.html:
        result.reports["testset"] = built.html
    summary = built.summary()
    for name, s in summary["slices"].items():
        log(f"  {name:<10} {s['size']:>4} items  domains: {', '.join(map(str, s['domains']))}")
    log(f"  removed as contaminated: {summary['removed_as_contaminated']}")

    train_round(ws, cfg, train_ref, result, step)
    if second_round_recipe:
        step2 = _Steps(result, prefix="round 2: ")
        train_ref2 = curate(ws, raw_ref, second_round_recipe, step2, result.reports)
        result.versions["curated (round 2)"] = train_ref2
        train_round(ws, cfg, train_ref2, result, step2, with_rl=False)
    evaluate_and_rank(ws, cfg, testset_ref, result, step)
    from bakeoff.overview import write_overview

    result.reports["overview"] = str(write_overview(ws))
    return result


def resolve_recipe(value: str | None, base_dir: Path) -> str | None:
    """A recipe path relative to the pipeline file, or a packaged recipe's name."""
    from bakeoff.curate import find_config_file

    return None if value is None else str(find_config_file(value, base_dir, what="recipe"))
