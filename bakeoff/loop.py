"""The iteration loop: ingest → curate → test set → SFT → reward → PPO → evaluate → rank.

One function, ``run_loop``, drives every stage through its Python API; ``bakeoff
demo`` calls it on generated demo data and ``bakeoff pipeline run`` on a user's
pipeline file. A ``LoopConfig`` is what a pipeline file says, section by section;
each section's options go straight to that stage's own Config dataclass, so a
pipeline file accepts exactly the options the stage commands document.

Rounds: running the loop again is the next round of the experiment. What did
not change is reused (``bakeoff.reuse``): ingests of unchanged files, curations
of unchanged rows with an unchanged recipe, training runs with unchanged inputs.
The test set is built once and stays fixed across rounds, so every round is
ranked on the same items; a later round re-checks it against its own training
version and removes (or reports) training rows that overlap a test item.
``dry_run`` walks the same steps without running any, and returns the plan.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Callable

from bakeoff.console import err, log
from bakeoff.executor import Executor, resolve_executor
from bakeoff.logs import ensure_library_logs, library_output
from bakeoff.workspace import BakeoffError, Workspace, parse_ref


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
    testset_rebuild: bool = False                # build a new test set instead of the fixed one
    testset_overlap: str = "remove"              # remove | report training rows overlapping a test item
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
    # where curation and evaluation batches run (bakeoff.executor); None: $BAKEOFF_EXECUTOR or local
    executor: Executor | None = None


def _build(cls: type, options: dict[str, Any], section: str, **fixed: Any) -> Any:
    """``cls(**fixed, **options)`` with a one-line error for an unknown option;
    a mapping given for a nested dataclass field (``decontam``, ``lora_settings``)
    becomes that dataclass."""
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(options) - names)
    if unknown:
        raise BakeoffError(f"{section}: unknown option(s) {', '.join(unknown)}; "
                           f"known: {', '.join(sorted(names - set(fixed)))}")
    nested = {f.name: f.default_factory for f in fields(cls)  # type: ignore[misc]
              if is_dataclass(getattr(f, "default_factory", None))}
    values = {k: _build(nested[k], v, f"{section}.{k}") if k in nested and isinstance(v, dict) else v
              for k, v in options.items()}
    return cls(**{**values, **fixed})


@dataclass
class LoopResult:
    versions: dict[str, str] = field(default_factory=dict)   # role -> NAME@vN
    runs: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)  # step -> seconds
    reports: dict[str, str] = field(default_factory=dict)    # report -> path
    leaderboard: dict[str, Any] = field(default_factory=dict)
    tracking_uri: str = ""
    workspace: str = ""
    round: int = 0                                            # this run's round of the experiment
    # Every step in order: {"step", "action": run | reuse | fixed, "detail"}.
    plan: list[dict[str, Any]] = field(default_factory=list)
    reused: list[dict[str, Any]] = field(default_factory=list)  # the plan's reused steps
    notes: list[str] = field(default_factory=list)            # what a reader of the ranking must know

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class _Steps:
    """Runs named steps with a banner and records their wall time; with
    ``dry_run`` it only records what would run (``result.plan``)."""

    def __init__(self, ws: Workspace, result: LoopResult, prefix: str = "", dry_run: bool = False):
        self.ws, self.result, self.prefix, self.dry_run = ws, result, prefix, dry_run

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

    def note(self, name: str, action: str, detail: str = "", **extra: Any) -> None:
        """Record a step of the plan (and, for a reused one, in ``result.reused``)."""
        entry = {"step": f"{self.prefix}{name}", "action": action, "detail": detail, **extra}
        self.result.plan.append(entry)
        if action in ("reuse", "fixed"):
            self.result.reused.append(entry)
        if action != "run" or self.dry_run:
            log(f"{entry['step']}: {action}{' — ' + detail if detail else ''}")

    def reuse_or_run(self, name: str, kind: str, experiment: str, round_number: int,
                     inputs: dict[str, Any] | None, fn: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
        """The recorded result of a finished step with these ``inputs``, or ``fn()``'s
        (recorded for the next round). ``inputs`` None: not known before an earlier
        step of this run has run (dry run only). Returns None in a dry run of a
        step that would run."""
        from bakeoff import reuse

        key = None if inputs is None else reuse.step_key(kind, experiment, inputs)
        done = reuse.lookup(self.ws, key) if key else None
        if done is not None:
            what = done.result.get("version") or f"run {str(done.result.get('run_id'))[:8]}"
            self.note(name, "reuse", f"{what} of round {done.round}: same inputs", round=done.round, key=key)
            return {**done.result, "reused": True, "round": done.round, "key": key}
        if self.dry_run:
            self.note(name, "run", "" if key else "its inputs are made by an earlier step of this run")
            return None
        self.note(name, "run")
        value = self(name, fn)
        if key is not None:
            reuse.record(self.ws, key, kind, experiment, round_number, inputs or {}, value)
        return {**value, "reused": False, "round": round_number, "key": key}


def ingest_sources(ws: Workspace, sources: list[Source], result: LoopResult, step: _Steps) -> None:
    """Ingest every source, or reuse the version ingested from the same file contents."""
    from bakeoff.curate.ingest import expand_paths, ingest
    from bakeoff.reuse import file_digests, find_ingest

    for src in sources:
        name = f"ingest {src.name}"
        digests = file_digests(expand_paths(src.paths))
        found = find_ingest(ws, src.name, digests, {"format": src.format, "map": src.map, "meta": src.meta})
        if found is not None:
            step.note(name, "reuse", f"{found.ref}: same file contents")
            result.versions[src.name] = found.ref
            continue
        step.note(name, "run")
        if step.dry_run:
            continue
        res = step(name, lambda s=src: ingest(
            ws, s.paths, s.name, fmt=s.format, mapping=s.map or None, meta=s.meta or None))
        result.versions[src.name] = res.version.ref
        log(f"{res.version.ref}: {res.rows_in} rows in, {res.accepted} accepted, "
            f"{res.quarantined} quarantined")


def curate(ws: Workspace, raw_ref: str | None, recipe: str | None, step: _Steps,
           reports: dict[str, str] | None = None, experiment: str = "bakeoff",
           round_number: int = 1, executor: Executor | None = None) -> str | None:
    """Run the curation recipe on ``raw_ref`` (or reuse the version the same recipe
    made from the same rows); returns the curated version's ref. A coverage
    step's report is also written as HTML (its path goes to ``reports``)."""
    if recipe is None:
        return raw_ref
    import os

    from bakeoff.reuse import file_digest

    inputs = None if raw_ref is None else {
        "rows": ws.resolve(raw_ref).digest, "recipe": file_digest(recipe),
        "embedder": os.environ.get("BAKEOFF_EMBEDDING_MODEL") or "default"}
    done = step.reuse_or_run("curate", "curate", experiment, round_number, inputs,
                             lambda: _curate_now(ws, raw_ref, recipe, executor))
    if done is None:
        return None
    if reports is not None:
        reports.update(done.get("reports") or {})
    return done["version"]


def _curate_now(ws: Workspace, raw_ref: str, recipe: str, executor: Executor | None = None) -> dict[str, Any]:
    from bakeoff.curate.coverage import write_html
    from bakeoff.curate.recipe import load_recipe, run_recipe
    from bakeoff.html import report_name

    # the executor is not among the reuse inputs: Ray writes the same version as local
    res = run_recipe(ws, raw_ref, load_recipe(recipe), executor=executor)
    for s in res.steps:
        log(f"  {s.get('step', '?'):<10} {s.get('rows_in', '')} → {s.get('rows_out', '')} rows "
            f"({s.get('seconds', 0):.1f} s)")
    reports = {}
    for key, report in res.reports.items():
        if key.endswith(":coverage"):
            path = ws.reports_dir() / report_name("coverage", res.version.ref)
            # The report titles the version it covers.
            reports[f"coverage {res.version.ref}"] = str(write_html({**report, "dataset": res.version.ref}, path))
    return {"version": res.version.ref, "digest": res.version.digest, "reports": reports}


def fixed_testset(ws: Workspace, cfg: LoopConfig, train_ref: str | None, pools: list[str | None],
                  result: LoopResult, step: _Steps, round_number: int = 1) -> str | None:
    """The experiment's test set: built once (against the first round's training
    version), then fixed across rounds. ``testset_rebuild`` builds a new one
    against this round's training version (once: the same inputs reuse it)."""
    from bakeoff.testsets.builder import BuildConfig

    build_cfg = _build(BuildConfig, cfg.testset_options, "testset")
    options = json.loads(json.dumps(build_cfg.to_dict(), default=str))
    built_before = [v for v in ws.versions(cfg.testset) if v.operation == "testsets.build"]
    if built_before and not cfg.testset_rebuild:
        fixed = built_before[-1]
        changed = [what for what, differs in (("options", options != fixed.params),
                                              ("pools", None not in pools and pools != fixed.parents[1:]))
                   if differs]
        step.note("test set", "fixed", f"{fixed.ref}, held out from {fixed.parents[0]}; the same items "
                  "every round (testset: {rebuild: true} builds a new one)"
                  + (f"; its {' and '.join(changed)} changed since it was built, and are not applied"
                     if changed else ""))
        return fixed.ref
    inputs = None if train_ref is None or None in pools else {
        "train": ws.resolve(train_ref).digest, "pools": [ws.resolve(p).digest for p in pools],
        "name": cfg.testset, "config": options}
    done = step.reuse_or_run("build test set", "testset", cfg.experiment, round_number, inputs,
                             lambda: _build_testset_now(ws, cfg.testset, train_ref, pools, build_cfg))
    if built_before and (done is None or done["version"] != built_before[-1].ref):
        result.notes.append(
            f"the test set was rebuilt: {done['version'] if done else 'a new version'} replaces "
            f"{built_before[-1].ref}. Checkpoints of earlier rounds trained on data it was not "
            f"held out from, and rounds evaluated on different test sets cannot be compared: "
            f"compare earlier rounds on {built_before[-1].ref}.")
    if done is None:
        return None
    result.reports.update(done.get("reports") or {})
    return done["version"]


def _build_testset_now(ws: Workspace, name: str, train_ref: str, pools: list[str], build_cfg: Any
                       ) -> dict[str, Any]:
    from bakeoff.testsets.builder import build_testset

    built = build_testset(ws, train_ref, pools, name, build_cfg)
    summary = built.summary()
    for slice_name, s in summary["slices"].items():
        log(f"  {slice_name:<10} {s['size']:>4} items  domains: {', '.join(map(str, s['domains']))}")
    log(f"  removed as contaminated: {summary['removed_as_contaminated']}")
    return {"version": built.version.ref, "digest": built.version.digest,
            "reports": {"testset": built.html} if built.html else {}}


def held_out_training(ws: Workspace, cfg: LoopConfig, train_ref: str | None, testset_ref: str | None,
                      result: LoopResult, step: _Steps, round_number: int) -> str | None:
    """``train_ref`` checked against the fixed test set it was not held out from:
    training rows that overlap a test item are removed (a new version, each
    removal in its ledger) or, with ``testset_overlap: report``, reported.
    Returns the training version to train on."""
    if testset_ref is None:  # built in this run (dry run), against ``train_ref`` itself
        return train_ref
    if train_ref is None:  # made by an earlier step of this run (dry run)
        step.note("check test set overlap", "run", "against this round's training version")
        return None
    test_v, train_v = ws.resolve(testset_ref), ws.resolve(train_ref)
    held_out_from = ws.resolve(test_v.parents[0]) if test_v.parents else None
    if held_out_from is not None and held_out_from.digest == train_v.digest:
        return train_ref  # the test set was built against exactly these rows
    if cfg.testset_overlap not in ("remove", "report"):
        raise BakeoffError(f"testset.overlap must be remove or report, not {cfg.testset_overlap!r}")
    from bakeoff.testsets.builder import BuildConfig

    decontam = _build(BuildConfig, cfg.testset_options, "testset").decontam
    inputs = {"train": train_v.digest, "testset": test_v.digest, "config": asdict(decontam),
              "action": cfg.testset_overlap}
    done = step.reuse_or_run("check test set overlap", "decontaminate", cfg.experiment,
                             round_number, inputs,
                             lambda: _remove_overlap(ws, train_v, test_v, decontam, cfg.testset_overlap))
    if done is None:
        return None
    if done.get("overlapping"):
        verb = "removed from training" if cfg.testset_overlap == "remove" else "REPORTED, still in training"
        result.notes.append(f"{done['overlapping']} row(s) of {train_ref} overlap items of the fixed test set "
                            f"{testset_ref}: {verb}" + (f" ({done['version']})" if done.get("version") else ""))
        log(result.notes[-1])
    return done.get("version") or train_ref


def _remove_overlap(ws: Workspace, train_v: Any, test_v: Any, decontam: Any, action: str) -> dict[str, Any]:
    """Check the test set against the training version (the testsets check),
    and remove every training row a flagging signal matched, until none is left
    (a test item may match several copies)."""
    import polars as pl

    from bakeoff.steps import StepOutput, commit_step
    from bakeoff.testsets.decontaminate import check_contamination
    from bakeoff.workspace import new_ledger

    test, train = ws.load(test_v), ws.load(train_v)
    ledgers: list[pl.DataFrame] = []
    flagged_items = 0
    for _ in range(3):
        items = check_contamination(test, train, decontam, ws).flagged
        if items.height == 0:
            break
        flagged_items = max(flagged_items, items.height)
        pairs = pl.concat([
            items.filter(pl.col("signals").list.contains(signal)).select(
                pl.col(column).alias("row_id"), pl.col("id").alias("kept_row_id"),
                pl.lit(signal).alias("rule"))
            for signal, column in (("exact", "exact_train_id"), ("ngram", "ngram_train_id"),
                                   ("minhash", "minhash_train_id"), ("embedding", "cosine_train_id"))
        ]).drop_nulls("row_id").unique("row_id", keep="first")
        ledgers.append(new_ledger(
            row_id=pairs["row_id"], stage=pl.Series(["decontaminate"] * pairs.height),
            rule=("overlaps-test-" + pairs["rule"]), kept_row_id=pairs["kept_row_id"],
            detail=pl.Series([f"overlaps an item of {test_v.ref}"] * pairs.height)))
        if action == "report":
            return {"overlapping": pairs.height, "items": items.height, "version": None,
                    "row_ids": pairs["row_id"].to_list()}
        train = train.join(pairs.select("row_id"), left_on="id", right_on="row_id", how="anti")
    if not ledgers:
        return {"overlapping": 0, "items": 0, "version": None}
    ledger = pl.concat(ledgers)
    version = commit_step(ws, train_v, "decontaminate-training",
                          {"testset": test_v.ref, "removed": ledger.height},
                          StepOutput(rows=train, ledger=ledger,
                                     report={"testset": test_v.ref, "removed": ledger.height}))
    return {"overlapping": ledger.height, "items": flagged_items, "version": version.ref,
            "digest": version.digest}


def train_round(ws: Workspace, cfg: LoopConfig, train_ref: str | None, result: LoopResult, step: _Steps,
                with_rl: bool = True, round_number: int = 1) -> None:
    """SFT on ``train_ref``; then (``with_rl``) reward model and PPO from the last
    SFT checkpoint. A run whose inputs equal a finished run's is reused."""
    from bakeoff.reuse import config_inputs
    from bakeoff.tracking import run_label
    from bakeoff.train.config import RewardRunConfig, SFTRunConfig
    from bakeoff.train.reward import train_reward
    from bakeoff.train.sft import train_sft

    def digest(ref: str | None) -> str | None:
        return None if ref is None else ws.resolve(ref).digest

    def trained(kind: str, run_cfg: Any, dataset_ref: str | None, train: Callable) -> dict[str, Any] | None:
        inputs = None if dataset_ref is None else {
            "dataset": digest(dataset_ref), "model": run_cfg.model, "config": config_inputs(run_cfg)}
        run = step.reuse_or_run(f"train {kind}", kind, cfg.experiment, round_number, inputs,
                                lambda: {"kind": kind, "dataset": dataset_ref, **train(ws, run_cfg).to_json()})
        if run is not None:
            result.runs.append(run)
        return run

    sft_cfg = _build(SFTRunConfig, cfg.sft, "sft", dataset=train_ref or "", model=cfg.model,
                     experiment_name=cfg.experiment, hypothesis=cfg.hypothesis, round=round_number,
                     run_name=run_label(round_number, "sft", train_ref))
    sft = trained("sft", sft_cfg, train_ref, train_sft)
    if not (with_rl and cfg.reward_dataset and cfg.ppo_prompts):
        return
    reward_ref = _ref(ws, cfg, result, cfg.reward_dataset)
    rm_cfg = _build(RewardRunConfig, cfg.reward, "reward", dataset=reward_ref or "",
                    model=cfg.reward_model or cfg.model, experiment_name=cfg.experiment, round=round_number,
                    run_name=run_label(round_number, "reward", reward_ref))
    rm = trained("reward", rm_cfg, reward_ref, train_reward)
    if not step.dry_run and (not rm["checkpoints"] or not sft["checkpoints"]):
        raise BakeoffError("reward or SFT training produced no checkpoint")
    prompts = _ref(ws, cfg, result, cfg.ppo_prompts)
    from bakeoff.train.options import trainers

    trainer = trainers()[cfg.algorithm]
    rl_cfg = _build(trainer.config, cfg.ppo, cfg.algorithm,
                    **({} if cfg.algorithm == "ppo" else {"algorithm": cfg.algorithm}),
                    dataset=prompts or "", experiment_name=cfg.experiment, hypothesis=cfg.hypothesis,
                    round=round_number, run_name=run_label(round_number, cfg.algorithm, prompts))
    # The policy and the reward model are named by the runs that made them: same
    # run inputs, same checkpoints.
    rl_inputs = None if None in (sft, rm, prompts) or None in (sft.get("key"), rm.get("key")) else {
        "policy": [sft["key"], Path(sft["checkpoints"][-1]).name],
        "reward": [rm["key"], Path(rm["checkpoints"][-1]).name],
        "prompts": digest(prompts), "algorithm": cfg.algorithm, "config": config_inputs(rl_cfg)}

    def run_rl() -> dict[str, Any]:
        run_cfg = replace(rl_cfg, model=sft["checkpoints"][-1], reward_model=rm["checkpoints"][-1])
        return {"kind": cfg.algorithm, "dataset": prompts, **trainer.train(ws, run_cfg).to_json()}

    rl = step.reuse_or_run(f"train {cfg.algorithm}", cfg.algorithm, cfg.experiment, round_number,
                           rl_inputs, run_rl)
    if rl is not None:
        result.runs.append(rl)


def _ref(ws: Workspace, cfg: LoopConfig, result: LoopResult, name: str) -> str | None:
    """The version a pipeline name stands for: the one this run ingested (or
    reused) for a source; else the workspace's ``NAME`` or ``NAME@vN``. None:
    the source is ingested by this run (dry run)."""
    if name in {s.name for s in cfg.sources}:
        return result.versions.get(name)
    return ws.resolve(name).ref


def evaluate_and_rank(ws: Workspace, cfg: LoopConfig, testset_ref: str, result: LoopResult,
                      step: _Steps) -> Any:
    from bakeoff.evaluate.api import evaluate_checkpoints, rank_checkpoints
    from bakeoff.evaluate.generate import GenerationSettings

    settings = _build(GenerationSettings, cfg.generation, "generation")
    step.note("evaluate", "run", "every checkpoint of the experiment; cached scores are reused")
    step.note("rank", "run", f"every round on {testset_ref or 'the new test set'}")
    if step.dry_run:
        return None
    executor = cfg.executor or resolve_executor()
    step("evaluate", lambda: evaluate_checkpoints(ws, testset_ref, experiment=cfg.experiment,
                                                  settings=settings, loglik=cfg.loglik, executor=executor))
    board, info = step("rank", lambda: rank_checkpoints(ws, testset_ref, experiment=cfg.experiment,
                                                        to_mlflow=True))
    result.leaderboard = board.to_json()
    result.reports["leaderboard"] = info["html"]
    return board


def _check_names(ws: Workspace, cfg: LoopConfig) -> None:
    """Every dataset the config names is one of its sources or in the workspace,
    checked before anything runs."""
    sources = {s.name for s in cfg.sources}
    named = [cfg.train_dataset, *cfg.pools, cfg.reward_dataset, cfg.ppo_prompts]
    missing = [n for n in named if n and parse_ref(n)[0] not in sources and parse_ref(n)[0] not in ws.names()]
    if missing:
        raise BakeoffError(f"dataset(s) {', '.join(sorted(set(missing)))} are neither in datasets: nor in "
                           f"{ws.root} (known: {', '.join(sorted(sources | set(ws.names()))) or 'none'})")


def run_loop(ws: Workspace, cfg: LoopConfig, result: LoopResult | None = None,
             second_round_recipe: str | None = None, dry_run: bool = False) -> LoopResult:
    """The whole loop on ``cfg``, as the next round of ``cfg.experiment``. With
    ``second_round_recipe``, a further round re-curates with it, trains SFT on
    the new version, and the final ranking covers the checkpoints of both rounds.
    ``dry_run``: run nothing; ``result.plan`` says which steps would run and
    which would be reused."""
    from bakeoff.reuse import next_round
    from bakeoff.tracking import setup_mlflow

    result = result or LoopResult()
    result.workspace = str(ws.root)
    _check_names(ws, cfg)
    if not dry_run:
        ensure_library_logs(ws.root)
        result.tracking_uri = setup_mlflow(ws)
    round_number = next_round(ws, cfg.experiment)
    result.round = round_number
    step = _Steps(ws, result, dry_run=dry_run)
    ingest_sources(ws, cfg.sources, result, step)

    # Every round curates the ingested version, so rounds differ only by what changed.
    raw_ref = _ref(ws, cfg, result, cfg.train_dataset)
    executor = cfg.executor or resolve_executor()
    train_ref = curate(ws, raw_ref, cfg.recipe, step, result.reports, cfg.experiment, round_number, executor)
    pools = [_ref(ws, cfg, result, p) for p in cfg.pools]
    if not pools:
        raise BakeoffError("a test set needs at least one pool dataset (pools: [...])")
    testset_ref = fixed_testset(ws, cfg, train_ref, pools, result, step, round_number)
    train_ref = held_out_training(ws, cfg, train_ref, testset_ref, result, step, round_number)
    if train_ref is not None:
        result.versions["curated"] = train_ref
    if testset_ref is not None:
        result.versions["testset"] = testset_ref

    train_round(ws, cfg, train_ref, result, step, round_number=round_number)
    if second_round_recipe:
        step2 = _Steps(ws, result, prefix=f"round {round_number + 1}: ", dry_run=dry_run)
        train_ref2 = curate(ws, raw_ref, second_round_recipe, step2, result.reports, cfg.experiment,
                            round_number + 1, executor)
        train_ref2 = held_out_training(ws, cfg, train_ref2, testset_ref, result, step2, round_number + 1)
        if train_ref2 is not None:
            result.versions[f"curated (round {round_number + 1})"] = train_ref2
        train_round(ws, cfg, train_ref2, result, step2, with_rl=False, round_number=round_number + 1)
    evaluate_and_rank(ws, cfg, testset_ref, result, step)
    if not dry_run:
        from bakeoff.overview import write_overview

        result.reports["overview"] = str(write_overview(ws))
    return result


def resolve_recipe(value: str | None, base_dir: Path) -> str | None:
    """A recipe path relative to the pipeline file, or a packaged recipe's name."""
    from bakeoff.curate import find_config_file

    return None if value is None else str(find_config_file(value, base_dir, what="recipe"))
