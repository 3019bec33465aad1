"""Where the worker loop runs: a Ray Train ``TorchTrainer`` on the job's cluster, or a local Ray instance
on loopback.

Loopback: ``--node-ip-address=127.0.0.1`` / ``_node_ip_address`` alone is not enough — Ray resolves a
loopback node address to the machine's own network address unless Ray "clusters" are off
(``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, read by ``ray._private.services.get_node_ip_address`` and
``resolve_ip_for_localhost``). With it set before Ray is imported, and inherited by the GCS, raylet,
workers and job agent, every component registers and talks on 127.0.0.1. It is set only for local
instances: a driver joining a real cluster must report its real address.
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from distributed.common.config import RunConfig, with_absolute_paths
from distributed.runtime.console import PROGRESS_FILE, ProgressFollower
from distributed.runtime.loop import train_loop_per_worker

LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def use_loopback() -> None:
    """Make a Ray instance started by this process (and its children) live on 127.0.0.1 only."""
    if "ray" in sys.modules and os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") != "0":
        from ray._private import ray_constants

        if ray_constants.ENABLE_RAY_CLUSTER:   # read once at import: too late to change it in this process
            logging.getLogger(__name__).warning(
                "ray was imported before %s=0 was set: the local instance may report the machine's address",
                next(iter(LOOPBACK_ENV)))
    os.environ.update(LOOPBACK_ENV)


def init_ray(cfg: RunConfig) -> None:
    """Join the job's cluster when there is one; otherwise start a local instance bound to loopback."""
    address = cfg.distributed.ray_address or os.environ.get("RAY_ADDRESS", "")
    if not address:
        use_loopback()
    import ray

    if ray.is_initialized():
        return
    # worker output goes to each run's log files (runtime/console.py), not through the driver
    if address:
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    else:
        # the dashboard (on loopback) also serves the state API that Ray Train's controller polls
        ray.init(_node_ip_address="127.0.0.1", include_dashboard=True, dashboard_host="127.0.0.1",
                 log_to_driver=False, logging_level=logging.WARNING,
                 num_cpus=max(os.cpu_count() or 1, int(cfg.world_size * cfg.distributed.cpus_per_worker) + 1))


def fit_with_ray(cfg: RunConfig, loop_config: dict, callbacks: list | None = None):
    """Ray Train: TorchTrainer with our worker loop, FailureConfig restarts from the latest checkpoint.

    The driver follows the progress file rank 0 writes and prints one line per epoch.
    """
    init_ray(cfg)                      # first: the loopback setting must precede the first import of ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig as RayRunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    dist_cfg = cfg.distributed
    output_dir = Path(cfg.output_dir).resolve()
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={**loop_config, "config": with_absolute_paths(loop_config["config"]), "in_ray": True},
        torch_config=TorchConfig(backend="nccl" if dist_cfg.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=dist_cfg.num_workers, use_gpu=dist_cfg.use_gpu,
                                     resources_per_worker={"CPU": dist_cfg.cpus_per_worker}),
        run_config=RayRunConfig(name=cfg.name, storage_path=str(output_dir / "ray"),
                                failure_config=FailureConfig(max_failures=dist_cfg.max_failures),
                                checkpoint_config=CheckpointConfig(num_to_keep=2), callbacks=callbacks),
    )
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / PROGRESS_FILE).unlink(missing_ok=True)
    follower = ProgressFollower(output_dir)
    follower.start()
    try:
        return trainer.fit()
    finally:
        follower.stop()
