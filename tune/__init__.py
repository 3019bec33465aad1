"""Ray Tune sweeps and MLflow comparisons."""
