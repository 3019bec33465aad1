"""Training runtime: the Ray Train worker loop, engines, collectives, checkpoints and MLflow tracking."""
