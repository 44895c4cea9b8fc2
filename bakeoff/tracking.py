"""MLflow glue: the workspace's tracking store and dataset lineage.

The tracking store defaults to a SQLite file inside the workspace (no server);
artifacts go to ``mlruns/`` beside it. ``log_dataset_version`` records a dataset
version as an ``mlflow.data`` input of the active run, so a run page shows the
exact data (name, digest, source) it was trained or evaluated on.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from bakeoff.workspace import validate_name

if TYPE_CHECKING:  # mlflow is slow to import; commands import it when they need it
    from bakeoff.workspace import Version, Workspace


def setup_mlflow(ws: "Workspace", experiment_name: str | None = None) -> str:
    """Point MLflow at the workspace store (unless MLFLOW_TRACKING_URI is set) and
    select ``experiment_name``, creating it with the workspace's artifact folder."""
    import mlflow

    user_uri = os.environ.get("MLFLOW_TRACKING_URI")
    uri = user_uri or ws.tracking_uri
    mlflow.set_tracking_uri(uri)
    # mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI; undo that, or the
    # next workspace opened in this process would log into this one's store.
    if user_uri is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    if experiment_name:
        validate_name(experiment_name, "experiment name")  # it becomes a folder under mlruns/
        if mlflow.get_experiment_by_name(experiment_name) is None:
            ws.artifact_root.mkdir(parents=True, exist_ok=True)
            mlflow.create_experiment(experiment_name,
                                     artifact_location=(ws.artifact_root / experiment_name).as_uri(),
                                     tags={EXPERIMENT_KIND_TAG: TRAINING_KIND})
        mlflow.set_experiment(experiment_name)
    return uri


#: MLflow 3's UI picks an experiment's view from this tag; without it, an
#: experiment with no traces may open on the empty GenAI "Traces" tab. bakeoff's
#: experiments hold training and evaluation runs: the classic runs view.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
TRAINING_KIND = "custom_model_development"


def training_runs_view(experiment_name: str) -> str | None:
    """The UI route of an experiment's runs table, to append to the address
    ``mlflow ui`` prints. MLflow 3's UI remembers a workflow type per browser
    (GenAI by default, which opens on "Traces"); ``workflowType=machine_learning``
    switches it to the training view."""
    import mlflow

    exp = mlflow.get_experiment_by_name(experiment_name)
    return None if exp is None else f"#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning"


def run_label(round: int | None, kind: str, dataset: str | None = None) -> str:
    """An MLflow run name that says round, kind and dataset version:
    ``r2-sft-fin-train@v3``, ``r1-ppo-prompts@v1``, ``sft-fin-train@v2`` (no round)."""
    head = f"r{round}-{kind}" if round is not None else kind
    return f"{head}-{dataset}" if dataset else head


def dataset_input(ws: "Workspace", version: "Version") -> Any:
    """An ``mlflow.data`` dataset for a version: its ref as the name, its content
    digest, and the version's folder as the source."""
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.data.http_dataset_source import HTTPDatasetSource

    # A file:// URL to the version's Parquet rows; HTTPDatasetSource is MLflow's
    # generic URL source and needs no extra registration.
    source = HTTPDatasetSource(url=(ws.version_dir(version) / "rows.parquet").as_uri())
    return MetaDataset(source=source, name=version.ref, digest=version.digest[:36])


def log_dataset_version(ws: "Workspace", ref: "str | Version", context: str = "training") -> None:
    """Log a dataset version as an input of the active MLflow run, with tags for
    the full digest and operation so lineage survives in the run's metadata."""
    import mlflow

    version = ws.resolve(ref) if isinstance(ref, str) else ref
    mlflow.log_input(dataset_input(ws, version), context=context,
                     tags={"bakeoff.ref": version.ref, "bakeoff.digest": version.digest,
                           "bakeoff.operation": version.operation})
    mlflow.set_tag(f"bakeoff.dataset.{context}", version.ref)
