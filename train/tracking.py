"""MLflow for training runs: params, per-step metrics, lineage, notes.

Why our own callback instead of transformers' ``MLflowCallback``: that one
starts its own run (we need the run id *before* the Trainer exists, because it
names the checkpoint folder), logs the LR only at logging steps and after the
scheduler stepped (the LR of the *next* step), and takes its settings from
environment variables. Ours logs ``learning_rate`` at every optimizer step with
the value the optimizer actually applied.
"""

from __future__ import annotations

import json
import math
import os
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator

from bakeoff.tracking import log_dataset_version, setup_mlflow

if TYPE_CHECKING:
    from bakeoff.workspace import Workspace

ENV_RUN_ID = "BAKEOFF_RUN_ID"  # set by the multi-GPU launcher so every rank uses one run
TAG_PID, TAG_HOST = "bakeoff.pid", "bakeoff.host"


def _system_metrics_flag() -> bool | None:
    """True unless MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING says otherwise (None: let MLflow read it)."""
    return None if os.environ.get("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING") else True


def is_main_process() -> bool:
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) or 0) == 0


def flat_params(params: dict[str, Any]) -> dict[str, str]:
    """MLflow params are strings of at most 6000 characters; lists/dicts as JSON."""
    out: dict[str, str] = {}
    for k, v in params.items():
        s = json.dumps(v) if isinstance(v, (list, dict)) else str(v)
        out[k] = s[:6000]
    return out


def _owner_tags() -> dict[str, str]:
    """Which process runs this: lets a later run tell a live run from a killed one."""
    import socket

    return {TAG_PID: str(os.getpid()), TAG_HOST: socket.gethostname()}


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, someone else's
        return True
    return True


def mark_killed_runs(ws: "Workspace", experiment_name: str, taking_over: str | None = None) -> list[str]:
    """Runs of the experiment still ``RUNNING`` whose process on this host is
    gone (killed: no Python exit handler ran to end them) become ``KILLED``;
    so does ``taking_over``, the run ``--resume`` continues, before it reopens.
    Runs of other hosts, of live processes and without an owner tag are left
    alone. Returns the run ids marked."""
    import socket

    import mlflow

    setup_mlflow(ws, experiment_name)
    exp = mlflow.get_experiment_by_name(experiment_name)
    if exp is None:
        return []
    client = mlflow.MlflowClient()
    host = socket.gethostname()
    marked = []
    for run in client.search_runs([exp.experiment_id], filter_string="attributes.status = 'RUNNING'",
                                  max_results=1000):
        tags = run.data.tags
        pid = tags.get(TAG_PID)
        dead = pid is not None and tags.get(TAG_HOST) == host and not _process_alive(int(pid))
        if dead or run.info.run_id == taking_over:
            client.set_tag(run.info.run_id, "bakeoff.ended", "killed: its process is gone"
                           if run.info.run_id != taking_over else "killed: taken over by --resume")
            client.set_terminated(run.info.run_id, status="KILLED")
            marked.append(run.info.run_id)
    if marked:
        from bakeoff.console import log

        log(f"marked {len(marked)} run(s) of {experiment_name!r} whose process was killed as KILLED: "
            + ", ".join(r[:8] for r in marked))
    return marked


def create_run(ws: "Workspace", experiment_name: str, run_name: str | None = None,
               tags: dict[str, str] | None = None) -> str:
    """Create a run without starting it (its id names the output folder up front).
    Runs of this experiment left ``RUNNING`` by a killed process are marked ``KILLED`` first."""
    import mlflow

    mark_killed_runs(ws, experiment_name)
    exp = mlflow.get_experiment_by_name(experiment_name)
    run = mlflow.MlflowClient().create_run(exp.experiment_id, run_name=run_name,
                                           tags={**_owner_tags(), **(tags or {})})
    return run.info.run_id


@contextmanager
def training_run(ws: "Workspace", experiment_name: str, *, run_id: str | None = None,
                 run_name: str | None = None, params: dict[str, Any] | None = None,
                 tags: dict[str, str] | None = None, datasets: list[tuple[str, str]] = (),
                 hypothesis: str | None = None, resume: bool = False) -> Iterator[Any]:
    """An active MLflow run with params, tags and dataset inputs logged.

    ``resume``: reopen ``run_id`` (params already logged are not re-logged: MLflow
    refuses to change a param's value). ``datasets``: (ref, context) pairs.
    """
    import mlflow

    setup_mlflow(ws, experiment_name)
    run_id = run_id or os.environ.get(ENV_RUN_ID) or None
    if resume and run_id:
        mark_killed_runs(ws, experiment_name, taking_over=run_id)
    with mlflow.start_run(run_id=run_id, run_name=None if run_id else run_name,
                          log_system_metrics=_system_metrics_flag()) as run:
        if not resume:
            if params:
                items = list(flat_params(params).items())
                for i in range(0, len(items), 100):  # log_params takes at most 100 at a time
                    mlflow.log_params(dict(items[i:i + 100]))
            for ref, context in datasets:
                log_dataset_version(ws, ref, context)
        all_tags = dict(tags or {})
        if hypothesis:
            all_tags["bakeoff.hypothesis"] = hypothesis
            all_tags["mlflow.note.content"] = f"Hypothesis: {hypothesis}"
        all_tags.update(_owner_tags())  # this process owns the run now
        if resume:
            all_tags["bakeoff.resumed"] = "true"
        if all_tags:
            mlflow.set_tags(all_tags)
        yield run


def resolve_run_id(ws: "Workspace", prefix: str) -> str:
    """The full id of the one run whose id starts with ``prefix`` (any
    experiment of the workspace's store), or a one-line error."""
    import mlflow

    from bakeoff.workspace import BakeoffError

    setup_mlflow(ws)
    client = mlflow.MlflowClient()
    prefix = prefix.strip().lower()
    if not prefix:
        raise BakeoffError("give a run id (or a unique prefix of one)")
    exp_ids = [e.experiment_id for e in client.search_experiments()]
    found = [r.info.run_id for r in client.search_runs(exp_ids, max_results=50000)
             if r.info.run_id.startswith(prefix)] if exp_ids else []
    if not found:
        raise BakeoffError(f"no MLflow run id starts with {prefix!r} in {mlflow.get_tracking_uri()}")
    if len(found) > 1:
        raise BakeoffError(f"{prefix!r} matches {len(found)} runs ({', '.join(f[:12] for f in found[:5])}"
                           f"{', ...' if len(found) > 5 else ''}); give more of the id")
    return found[0]


def note(ws: "Workspace", run_id: str, conclusion: str) -> dict[str, Any]:
    """Record what was learned on a run: appended to its notes (a tag, and the
    run description: the hypothesis it tested, then every conclusion in order).
    ``run_id`` may be a unique prefix."""
    import mlflow

    run_id = resolve_run_id(ws, run_id)
    client = mlflow.MlflowClient()
    run = client.get_run(run_id)
    hypothesis = run.data.tags.get("bakeoff.hypothesis")
    earlier = json.loads(run.data.tags.get("bakeoff.conclusions", "[]"))
    if not earlier and run.data.tags.get("bakeoff.conclusion"):  # noted before notes were a list
        earlier = [run.data.tags["bakeoff.conclusion"]]
    conclusions = [*earlier, conclusion]
    client.set_tag(run_id, "bakeoff.conclusion", conclusion)
    client.set_tag(run_id, "bakeoff.conclusions", json.dumps(conclusions)[:5000])
    text = (f"Hypothesis: {hypothesis}\n\n" if hypothesis else "") + "\n".join(
        f"Conclusion{f' {i}' if len(conclusions) > 1 else ''}: {c}" for i, c in enumerate(conclusions, 1))
    client.set_tag(run_id, "mlflow.note.content", text)
    exp = client.get_experiment(run.info.experiment_id)
    return {"run_id": run_id, "experiment_name": exp.name, "hypothesis": hypothesis,
            "conclusion": conclusion, "conclusions": conclusions, "tracking_uri": mlflow.get_tracking_uri()}


def make_mlflow_callback(extra_metrics: Any = None) -> Any:
    """A ``TrainerCallback`` logging to the active MLflow run: Trainer logs at each
    logging step, and ``learning_rate`` at every optimizer step (the LR the
    optimizer used for that step)."""
    import mlflow
    from mlflow.entities import Metric
    from transformers import TrainerCallback

    class MlflowStepLogger(TrainerCallback):
        def __init__(self) -> None:
            self._lr: float | None = None
            self._clients: dict[str, Any] = {}

        def _run_id(self) -> str | None:
            run = mlflow.active_run()
            return run.info.run_id if run else None

        @property
        def _client(self) -> Any:
            # bound to the store of the run being logged (the workspace's), not
            # whatever URI was current when the callback was made
            uri = mlflow.get_tracking_uri()
            if uri not in self._clients:
                self._clients[uri] = mlflow.MlflowClient(tracking_uri=uri)
            return self._clients[uri]

        def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):  # noqa: ANN001
            if optimizer is not None:
                self._lr = float(optimizer.param_groups[0]["lr"])
            return control

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
            run_id = self._run_id()
            if run_id and state.is_world_process_zero and self._lr is not None:
                ts = int(__import__("time").time() * 1000)
                self._client.log_batch(run_id, metrics=[
                    Metric("learning_rate", self._lr, ts, state.global_step)], synchronous=False)
            return control

        def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
            run_id = self._run_id()
            if not (run_id and state.is_world_process_zero and logs):
                return control
            ts = int(__import__("time").time() * 1000)
            metrics = []
            for k, v in logs.items():
                if k == "learning_rate" or isinstance(v, bool) or not isinstance(v, (int, float)):
                    continue
                v = float(v)
                # MLflow stores NaN/inf; keep them: a NaN loss is information.
                metrics.append(Metric(k, v if not math.isinf(v) else math.copysign(1e308, v), ts,
                                      state.global_step))
            if metrics:
                self._client.log_batch(run_id, metrics=metrics, synchronous=False)
            return control

        def on_train_end(self, args, state, control, **kwargs):  # noqa: ANN001
            mlflow.flush_async_logging()
            return control

    return MlflowStepLogger()
