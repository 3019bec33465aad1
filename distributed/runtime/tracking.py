"""MLflow: one run per training job. The driver creates it (so concurrent workers never race on a
fresh store); rank 0 logs params, per-epoch metrics and artifacts into it."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from distributed.common.config import RunConfig


def tracking_uri(cfg: RunConfig) -> str:
    """Config, then $MLFLOW_TRACKING_URI, then a local sqlite store beside the run folders."""
    if cfg.tracking.tracking_uri:
        return cfg.tracking.tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    root = Path(cfg.output_dir).resolve().parent
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlflow.db'}"


def default_artifact_location(uri: str) -> str | None:
    """Beside a local sqlite store (not ./mlruns of whatever folder the job started in); servers decide."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
    return None


def _params(cfg: RunConfig) -> dict[str, str]:
    return {k: ("none" if v is None else str(v))[:6000] for k, v in cfg.flatten().items()}


def create_run(cfg: RunConfig) -> str:
    """Create (driver side) the run this job logs into; returns its id."""
    import mlflow

    uri = tracking_uri(cfg)
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.get_experiment_by_name(cfg.tracking.experiment)
    experiment_id = experiment.experiment_id if experiment else mlflow.create_experiment(
        cfg.tracking.experiment, artifact_location=default_artifact_location(uri))
    client = mlflow.MlflowClient()
    tags = {"mlflow.runName": cfg.tracking.run_name or cfg.name}
    if cfg.tracking.parent_run_id:
        tags["mlflow.parentRunId"] = cfg.tracking.parent_run_id
    run = client.create_run(experiment_id, tags=tags)
    client.log_batch(run.info.run_id, params=[mlflow.entities.Param(k, v) for k, v in _params(cfg).items()])
    return run.info.run_id


class RunLogger:
    """Rank 0's handle on the job's MLflow run (no-op when tracking is off or no run id is given)."""

    def __init__(self, cfg: RunConfig, run_id: str | None):
        self.run_id = run_id if cfg.tracking.mlflow else None
        self.client = None
        if self.run_id:
            import mlflow

            mlflow.set_tracking_uri(tracking_uri(cfg))
            self.client = mlflow.MlflowClient()

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
