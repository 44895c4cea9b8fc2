"""`bakeoff evaluate` commands: a thin click layer over bakeoff.evaluate."""

from __future__ import annotations

from typing import Any

import click

from bakeoff.context import get_workspace, json_option
from bakeoff.executor import executor_options


@click.group()
def evaluate() -> None:
    """Evaluate: score every checkpoint (and the base model) on the full test set, then rank.

    \b
    Example:
      bakeoff evaluate run --testset fin-test@v1 --experiment fin
      bakeoff evaluate rank --testset fin-test@v1 --html leaderboard.html
    """


def default_testset(ws: Any, testset: str | None) -> str:
    """The test set to use: the one given, else the newest built or imported
    one (said on stderr, so a user sees which one was picked)."""
    if testset:
        return testset
    from bakeoff.console import log
    from bakeoff.workspace import BakeoffError

    built = [v for v in ws.versions() if v.operation in ("testsets.build", "testsets.import")]
    if not built:
        raise BakeoffError("no test set in this workspace: build one with `bakeoff testsets build` "
                           "or import one with `bakeoff testsets import`, or pass --testset")
    newest = max(built, key=lambda v: v.created_at)
    log(f"test set: {newest.ref} (the newest; pass --testset to choose another)")
    return newest.ref


@evaluate.command("run")
@click.option("--testset", default=None,
              help="Test set version, NAME@vN (NAME = its latest). Default: the newest test set in the workspace.")
@click.option("--checkpoints", "-c", multiple=True,
              help="Checkpoint dir, run dir, run id, experiment name or model (repeatable; "
                   "space-separated values are split).")
@click.option("--experiment", "-e", default=None, help="Evaluate every checkpoint of this experiment.")
@click.option("--base-model", default=None,
              help="Baseline model (path or name); default: the base_model recorded in the checkpoints; "
                   "'none' for no baseline.")
@click.option("--devices", default=None,
              help="Comma-separated devices (e.g. cuda:0,cuda:1): one model per device in parallel. "
                   "Default: cuda if available, else cpu.")
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--max-new-tokens", type=int, default=64, show_default=True)
@click.option("--sample/--greedy", default=False, show_default=True, help="Sample instead of greedy decoding.")
@click.option("--temperature", type=float, default=1.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--reward-model", default=None, type=click.Path(exists=True, file_okay=False),
              help="Reward checkpoint for items scored by 'reward'.")
@click.option("--no-loglik", is_flag=True, help="Skip the reference log-likelihood metric.")
@click.option("--rank/--no-rank", "then_rank", default=True, show_default=True,
              help="Print the leaderboard afterwards.")
@click.option("--allow-mixed", is_flag=True,
              help="Rank models generated under different settings/environments together (with a warning).")
@executor_options
@click.argument("extra_checkpoints", nargs=-1)
@json_option
def run_cmd(testset: str, checkpoints: tuple[str, ...], experiment: str | None, base_model: str | None,
            devices: str | None, batch_size: int, max_new_tokens: int, sample: bool, temperature: float,
            seed: int, reward_model: str | None, no_loglik: bool, then_rank: bool, allow_mixed: bool,
            executor_kind: str | None, ray_address: str | None, extra_checkpoints: tuple[str, ...],
            as_json: bool) -> None:
    """Evaluate checkpoints and their base model on every item of a test set.

    Outputs and scores are cached per (weights digest, item, prompt template,
    generation settings, scorer version): a new checkpoint costs one
    checkpoint's evaluation, an interrupted run resumes, a changed scorer
    re-scores stored outputs without generating.

    With --executor ray, one Ray actor per GPU (or CPU slot) generates for
    batches of items and this process alone writes the cache; the outputs are
    the local run's.

    \b
    Example:
      bakeoff evaluate run --testset fin-test@v1 --checkpoints runs/fin/abc123 --batch-size 16
      bakeoff evaluate run --testset fin-test@v1 --experiment fin --base-model smollm2
      bakeoff evaluate run --testset fin-test@v1 --experiment fin --executor ray --ray-address auto
    """
    from bakeoff.console import emit
    from bakeoff.evaluate.api import evaluate_checkpoints
    from bakeoff.evaluate.generate import GenerationSettings
    from bakeoff.executor import resolve_executor

    executor = resolve_executor(executor_kind, ray_address=ray_address)
    ws = get_workspace()
    testset = default_testset(ws, testset)
    settings = GenerationSettings(max_new_tokens=max_new_tokens, do_sample=sample, temperature=temperature,
                                  seed=seed, batch_size=batch_size)
    results = evaluate_checkpoints(
        ws, testset, [t for c in (*checkpoints, *extra_checkpoints) for t in c.split()], experiment,
        base_model, settings, devices=[d.strip() for d in devices.split(",")] if devices else None,
        reward_model=reward_model, loglik=not no_loglik, executor=executor)
    version = ws.resolve(testset)
    result = {"testset": version.ref, "models": [r.to_dict() for r in results]}
    board = None
    if then_rank:
        from bakeoff.evaluate.rank import build_leaderboard
        from bakeoff.evaluate.scorers import RewardScorer

        board = build_leaderboard(ws, version.ref, experiment=experiment,
                                  reward=RewardScorer(reward_model) if reward_model else None,
                                  allow_mixed=allow_mixed)
        result["leaderboard"] = board.to_json()

    def render(_: dict) -> None:
        from bakeoff.console import out, table

        out.print(table(f"Evaluated on {version.ref}", ["model", "items", "generated", "reused", "scored",
                                                        "seconds", "mean score"],
                        [[r.label, r.n_items, r.generated, r.reused, r.scored, f"{r.seconds:.1f}",
                          f"{r.mean_score:.3f}"] for r in results]))
        if board is not None:
            from bakeoff.evaluate.report import render_terminal

            render_terminal(board)

    emit(result, as_json, render)


@evaluate.command("rank")
@click.option("--testset", default=None,
              help="Test set version, NAME@vN (NAME = its latest). Default: the newest test set in the workspace.")
@click.option("--experiment", "-e", default=None, help="Only checkpoints of this experiment (plus base models).")
@click.option("--html", "html_path", default=None, type=click.Path(dir_okay=False),
              help="Write a self-contained HTML report here (default: workspace reports/).")
@click.option("--bootstrap", "n_boot", type=int, default=2000, show_default=True, help="Bootstrap replicates.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--reward-model", default=None, type=click.Path(exists=True, file_okay=False),
              help="Reward checkpoint, to re-score 'reward' items after a scorer change.")
@click.option("--mlflow/--no-mlflow", "to_mlflow", default=True, show_default=True,
              help="Log per-checkpoint metrics and the report to MLflow.")
@click.option("--items", "with_items", is_flag=True, help="With --json: include every item's scores and outputs.")
@click.option("--allow-mixed", is_flag=True,
              help="Rank models generated under different settings/environments together (with a warning).")
@json_option
def rank_cmd(testset: str, experiment: str | None, html_path: str | None, n_boot: int, seed: int,
             reward_model: str | None, to_mlflow: bool, with_items: bool, allow_mixed: bool, as_json: bool) -> None:
    """Rank every evaluated checkpoint on the full test set.

    Mean score with 95% intervals (Wilson for 0/1 scores, BCa otherwise), the
    probability of being best, and the set of checkpoints that cannot be told
    apart from the best (paired comparisons over all pairs, family-wise error
    <= 5%); a winner is named only when that set has one member. Per-slice and
    per-task cells and the generalisation gap (in-domain − adjacent) with n and
    an interval; the items where the winner loses; every checkpoint that is
    not ranked, and why.

    \b
    Example:
      bakeoff evaluate rank --testset fin-test@v1
      bakeoff evaluate rank --testset fin-test@v1 --experiment fin --html board.html --json
    """
    from bakeoff.console import emit
    from bakeoff.evaluate.api import rank_checkpoints
    from bakeoff.evaluate.report import render_terminal

    ws = get_workspace()
    testset = default_testset(ws, testset)
    board, info = rank_checkpoints(ws, testset, experiment, html_path, to_mlflow, n_boot, seed, reward_model,
                                   allow_mixed=allow_mixed)
    result = {**board.to_json(with_items=with_items), **info}
    emit(result, as_json, lambda _: render_terminal(board))


@evaluate.command("import")
@click.option("--testset", required=True, help="Test set version the predictions answer, NAME@vN.")
@click.option("--label", required=True, help="Leaderboard label of the model that made them (e.g. vllm-llama-8b).")
@click.option("--settings", "settings_json", default=None,
              help='How they were generated, as JSON (e.g. \'{"engine": "vllm", "temperature": 0}\'); recorded.')
@click.option("--reward-model", default=None, type=click.Path(exists=True, file_okay=False),
              help="Reward checkpoint, for items scored by 'reward'.")
@click.argument("predictions", type=click.Path(exists=True, dir_okay=False))
@json_option
def import_cmd(testset: str, label: str, settings_json: str | None, reward_model: str | None, predictions: str,
               as_json: bool) -> None:
    """Import predictions made elsewhere (vLLM, TGI, an API model) as a leaderboard entry.

    PREDICTIONS is a JSONL (or Parquet) file with one row per test item: ``id``
    (the test item's id) and ``prediction`` (or ``output``/``response``). Every
    item of the test set must be there, and nothing else. They are scored with
    the test set's scorers, cached like generated outputs, and ranked with
    everything else by `bakeoff evaluate rank`.

    \b
    Example:
      bakeoff evaluate import --testset fin-test@v1 --label vllm-llama-8b preds.jsonl
    """
    import json

    from bakeoff.console import emit
    from bakeoff.evaluate.imports import import_predictions
    from bakeoff.evaluate.scorers import RewardScorer
    from bakeoff.workspace import BakeoffError

    try:
        settings = json.loads(settings_json) if settings_json else {}
    except ValueError as exc:
        raise BakeoffError(f"--settings is not JSON: {exc}") from exc
    ws = get_workspace()
    result = import_predictions(ws, testset, label, predictions, settings,
                                reward=RewardScorer(reward_model) if reward_model else None)

    def render(r: dict) -> None:
        from bakeoff.console import out

        out.print(f"imported {r['n_items']} predictions as [bold]{r['label']}[/] on {r['testset']} "
                  f"(mean score {r['mean_score']:.3f}); rank with: bakeoff evaluate rank --testset {r['testset']}",
                  highlight=False)

    emit(result.to_dict(), as_json, render)
