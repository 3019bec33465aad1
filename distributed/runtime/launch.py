"""Where the worker loop runs: a Ray Train ``TorchTrainer`` on the job's cluster, or a local Ray instance on loopback."""
from __future__ import annotations

import os
from pathlib import Path

from distributed.common.config import RunConfig
from distributed.runtime.loop import train_loop_per_worker


def init_ray(cfg: RunConfig) -> None:
    """Join the job's cluster when there is one; otherwise start a local instance bound to loopback."""
    import ray

    if ray.is_initialized():
        return
    address = cfg.distributed.ray_address or os.environ.get("RAY_ADDRESS", "")
    if address:
        ray.init(address=address)
    else:
        # the dashboard (on loopback) also serves the state API that Ray Train's controller polls
        ray.init(_node_ip_address="127.0.0.1", include_dashboard=True, dashboard_host="127.0.0.1",
                 num_cpus=max(os.cpu_count() or 1, int(cfg.world_size * cfg.distributed.cpus_per_worker) + 1))


def fit_with_ray(cfg: RunConfig, loop_config: dict, callbacks: list | None = None):
    """Ray Train: TorchTrainer with our worker loop, FailureConfig restarts from the latest checkpoint."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig as RayRunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    init_ray(cfg)
    dist_cfg = cfg.distributed
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={**loop_config, "in_ray": True},
        torch_config=TorchConfig(backend="nccl" if dist_cfg.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=dist_cfg.num_workers, use_gpu=dist_cfg.use_gpu,
                                     resources_per_worker={"CPU": dist_cfg.cpus_per_worker}),
        run_config=RayRunConfig(name=cfg.name, storage_path=str(Path(cfg.output_dir).resolve() / "ray"),
                                failure_config=FailureConfig(max_failures=dist_cfg.max_failures),
                                checkpoint_config=CheckpointConfig(num_to_keep=2), callbacks=callbacks),
    )
    return trainer.fit()
