"""`ppl-avvp train` / `python -m distributed.train`: one training job.

Config file (or built-in preset: ppl, base, han) + ``key=value`` overrides -> validated config,
written to ``<output_dir>/config.yaml`` and logged to MLflow. ``distributed.num_workers: 0`` runs the
worker loop in this process; N >= 1 runs it on N Ray Train workers (local 127.0.0.1 instance, or the
cluster of ``ray job submit`` / ``distributed.ray_address``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from distributed.common.commandline import run_command
from distributed.common.config import RunConfig, load_config, save_config
from distributed.runtime.launch import fit_with_ray
from distributed.runtime.loop import RESULTS_FILE, train_loop_per_worker


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="ppl-avvp train", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="ppl", help="YAML file or preset name (ppl, base, han)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. ppl.tau=0.05 data.batch_size=32")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    return parser.parse_args(argv)


def train(cfg: RunConfig, mlflow: bool = True, *, on_epoch=None, callbacks: list | None = None) -> dict:
    """Run one job end to end; returns results.json's content.

    ``on_epoch(metrics)`` is called after every epoch of an in-process run (num_workers=0);
    ``callbacks`` go to Ray Train's RunConfig (e.g. Tune's report callback) for Ray Train runs.
    """
    output_dir = Path(cfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, output_dir / "config.yaml")
    run_id = None
    if mlflow and cfg.tracking.mlflow:
        from distributed.runtime.tracking import create_run, tracking_uri
        run_id = create_run(cfg)
        print(f"MLflow run {run_id} at {tracking_uri(cfg)}", flush=True)
    loop_config = {"config": cfg.to_dict(), "mlflow_run_id": run_id}
    if cfg.distributed.num_workers == 0:
        train_loop_per_worker(loop_config, on_epoch=on_epoch)
    else:
        fit_with_ray(cfg, loop_config, callbacks=callbacks)
    return json.loads((output_dir / RESULTS_FILE).read_text())


def main(argv=None) -> int:
    args = parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    results = train(cfg, mlflow=not args.no_mlflow)
    from distributed.evaluate import format_table

    print(format_table(results["test"], title=f"{cfg.name}: test (best val epoch {results['best_epoch']})"))
    print(f"results: {Path(cfg.output_dir) / RESULTS_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
