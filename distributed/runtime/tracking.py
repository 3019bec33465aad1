"""MLflow: one run per training job, one default store for every command. The driver creates the
run (so concurrent workers never race on a fresh store); rank 0 logs params, per-epoch metrics and
artifacts into it."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from distributed.common.config import RunConfig
from distributed.common.errors import UserError

SQLITE = "sqlite:///"


def default_tracking_uri() -> str:
    """The store train, sweep and compare share: $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/runs/mlflow.db.

    It follows the folder a command starts in, never output_dir: a run whose output_dir lies outside
    cwd still logs here, so `ppl-avvp compare` started from the same folder finds it. Set
    tracking.tracking_uri (or the variable) to keep a store elsewhere.
    """
    return absolute_uri(os.environ.get("MLFLOW_TRACKING_URI") or f"{SQLITE}{Path.cwd() / 'runs' / 'mlflow.db'}")


def tracking_uri(cfg: RunConfig) -> str:
    """tracking.tracking_uri, else the shared default."""
    return absolute_uri(cfg.tracking.tracking_uri) if cfg.tracking.tracking_uri else default_tracking_uri()


def absolute_uri(uri: str) -> str:
    """A relative sqlite path taken from cwd, once, by the driver (Ray Train workers and Tune trials run
    in folders of their own); other URIs as given."""
    db = _sqlite_file(uri)
    return f"{SQLITE}{os.path.abspath(db)}" if db is not None else uri


def _sqlite_file(uri: str) -> Path | None:
    return Path(uri[len(SQLITE):]) if uri.startswith(SQLITE) else None


def artifact_location(uri: str) -> str | None:
    """Artifacts of a local sqlite store go beside it (file URI of <store folder>/mlartifacts), not to
    ./mlruns of whatever folder a job started in; a tracking server decides its own (None)."""
    db = _sqlite_file(uri)
    return (db.parent / "mlartifacts").resolve().as_uri() if db else None


def mlflow_client(uri: str, *, create: bool = True):
    """An MlflowClient on uri. Writers (create=True) make a local sqlite store's folder; readers
    (create=False) get a UserError for a missing store instead of a new empty one."""
    from mlflow import MlflowClient

    db = _sqlite_file(uri)
    if db is not None and create:
        db.parent.mkdir(parents=True, exist_ok=True)
    elif db is not None and not db.is_file():
        raise UserError(f"no MLflow store at {uri} (pass --tracking-uri or set MLFLOW_TRACKING_URI)")
    return MlflowClient(tracking_uri=uri)


def experiment_id(client, name: str) -> str:
    """Experiment `name`'s id; a new one keeps its artifacts per artifact_location, a deleted one is refused."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return client.create_experiment(name, artifact_location=artifact_location(client.tracking_uri))
    if experiment.lifecycle_stage != "active":
        raise UserError(f"MLflow experiment {name!r} is deleted in {client.tracking_uri}; "
                        f"restore it or log to another experiment")
    return experiment.experiment_id


def _params(cfg: RunConfig) -> dict[str, str]:
    return {k: ("none" if v is None else str(v))[:6000] for k, v in cfg.flatten().items()}


def create_run(cfg: RunConfig) -> str:
    """Create (driver side) the run this job logs into; returns its id. The resolved store is pinned
    into cfg.tracking.tracking_uri: Ray Train workers run in folders of their own, where the
    cwd-based default would name another store."""
    from mlflow.entities import Param

    logging.getLogger("mlflow").setLevel(logging.WARNING)   # store creation/migration notes: not the user's business
    cfg.tracking.tracking_uri = tracking_uri(cfg)
    client = mlflow_client(cfg.tracking.tracking_uri)
    tags = {"mlflow.runName": cfg.tracking.run_name or cfg.name}
    if cfg.tracking.parent_run_id:
        tags["mlflow.parentRunId"] = cfg.tracking.parent_run_id
    run = client.create_run(experiment_id(client, cfg.tracking.experiment), tags=tags)
    client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in _params(cfg).items()])
    return run.info.run_id


class RunLogger:
    """Rank 0's handle on the job's MLflow run (no-op when tracking is off or no run id is given)."""

    def __init__(self, cfg: RunConfig, run_id: str | None):
        self.run_id = run_id if cfg.tracking.mlflow else None
        self.client = None
        if self.run_id:
            self.client = mlflow_client(tracking_uri(cfg))

    def metrics(self, values: dict[str, Any], step: int) -> None:
        if not self.client:
            return
        import mlflow

        items = [mlflow.entities.Metric(k, float(v), 0, step) for k, v in values.items()
                 if isinstance(v, (int, float)) and v == v]
        for i in range(0, len(items), 900):
            self.client.log_batch(self.run_id, metrics=items[i:i + 900])

    def artifact(self, path: str | Path, subdir: str | None = None) -> None:
        if self.client and Path(path).exists():
            self.client.log_artifact(self.run_id, str(path), subdir)

    def finish(self, status: str = "FINISHED") -> None:
        if self.client:
            self.client.set_terminated(self.run_id, status)
