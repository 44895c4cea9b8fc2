"""The Python API behind `bakeoff evaluate` (the CLI is a thin layer over it).

    from bakeoff.evaluate.api import evaluate_checkpoints, rank_checkpoints

    results = evaluate_checkpoints(ws, "fin-test@v1", ["run1"], base_model=None)
    board = rank_checkpoints(ws, "fin-test@v1", html="board.html")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bakeoff.evaluate.generate import GenerationSettings
from bakeoff.evaluate.rank import Leaderboard
from bakeoff.evaluate.runner import EvalResult
from bakeoff.executor import Executor
from bakeoff.workspace import BakeoffError, Workspace


def evaluate_checkpoints(ws: Workspace, testset: str, checkpoints: list[str] | None = None,
                         experiment: str | None = None, base_model: str | None = None,
                         settings: GenerationSettings | None = None, devices: list[str] | None = None,
                         reward_model: str | None = None, loglik: bool = True,
                         executor: Executor | None = None) -> list[EvalResult]:
    """Evaluate every checkpoint named by ``checkpoints`` (dirs, run ids,
    experiment names, models) and/or of ``experiment``, plus the base model(s)
    as a baseline, on every item of ``testset``, through the cache; generation
    runs on Ray actors when ``executor`` says so."""
    from bakeoff.console import log
    from bakeoff.evaluate.discover import base_models, find_checkpoints
    from bakeoff.evaluate.items import load_items
    from bakeoff.evaluate.runner import evaluate_models
    from bakeoff.evaluate.scorers import RewardScorer

    checkpoints = list(checkpoints or [])
    if not checkpoints and not experiment:
        raise BakeoffError("nothing to evaluate: pass --checkpoints PATH_OR_RUN... or --experiment NAME")
    specs = find_checkpoints(ws, checkpoints, experiment)
    specs = base_models(ws, specs, base_model) + specs
    if not specs:
        raise BakeoffError("no checkpoints found")
    reward = RewardScorer(reward_model, device=(devices or [None])[0]) if reward_model else None
    version, items = load_items(ws, testset, reward.digest if reward else None)
    log(f"evaluating {len(specs)} models on {version.ref} ({items.height} items)")
    return evaluate_models(ws, version, items, specs, settings or GenerationSettings(), devices=devices,
                           reward=reward, loglik=loglik, executor=executor)


def rank_checkpoints(ws: Workspace, testset: str, experiment: str | None = None,
                     html: str | Path | None = None, to_mlflow: bool = False, n_boot: int = 2000,
                     seed: int = 0, reward_model: str | None = None,
                     allow_mixed: bool = False) -> tuple[Leaderboard, dict[str, Any]]:
    """The leaderboard on ``testset``, its HTML report (``html``, default in the
    workspace's reports/) and, with ``to_mlflow``, the MLflow run logging it.
    Returns (leaderboard, {"html": path, "mlflow_run_id": id or None})."""
    from bakeoff.console import log
    from bakeoff.html import report_name
    from bakeoff.evaluate.rank import build_leaderboard
    from bakeoff.evaluate.report import dataset_lineage, log_to_mlflow, render_html
    from bakeoff.evaluate.scorers import RewardScorer

    reward = RewardScorer(str(reward_model)) if reward_model else None
    board = build_leaderboard(ws, testset, experiment=experiment, n_boot=n_boot, seed=seed, reward=reward,
                              allow_mixed=allow_mixed)
    path = Path(html) if html else ws.reports_dir() / report_name("leaderboard", board.testset)
    render_html(board, path, dataset_lineage(ws, board))
    log(f"HTML report: {path}")
    info: dict[str, Any] = {"html": str(path), "mlflow_run_id": None}
    if to_mlflow:
        info["mlflow_run_id"] = log_to_mlflow(ws, board, path)
    return board, info
