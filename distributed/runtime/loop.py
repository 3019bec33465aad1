"""The worker loop: one function that Ray Train runs on every worker (or this process runs alone).

build data -> build model/engine -> resume -> for each epoch: for each batch: one step;
evaluate on val; report (+checkpoint); then score test with the best weights.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from distributed.runtime.checkpoint import (BEST_MODEL_FILE, FINAL_MODEL_FILE, STATE_FILE, commit_local, latest_local_checkpoint,
                                    load_training_state, new_tmp_dir, save_model, save_training_state)
from distributed.common.config import RunConfig, config_from_dict
from distributed.runtime.engine import build_engine, cast_inputs, learning_rate
from distributed.runtime.tracking import RunLogger
from model.metrics import llp_scores
from model.ppl import PPL
from model.prototypes import identity_reducer
from model.pseudo_labels import pseudo_label_counts

INPUT_KEYS = ("audio", "visual_2d", "visual_3d")
RESULTS_FILE = "results.json"


@dataclass
class WorkerContext:
    rank: int
    world_size: int
    device: torch.device
    in_ray: bool


def worker_context(in_ray: bool, cfg: RunConfig) -> WorkerContext:
    if in_ray:
        import ray.train
        import ray.train.torch

        ctx = ray.train.get_context()
        return WorkerContext(ctx.get_world_rank(), ctx.get_world_size(), ray.train.torch.get_device(), True)
    device = torch.device("cuda" if cfg.distributed.use_gpu and torch.cuda.is_available() else "cpu")
    return WorkerContext(0, 1, device, False)


def emit(line: str) -> None:
    """A progress line on the process's real stdout (Ray Train patches print() into its logger, which
    both duplicates lines and drops them when the log level is raised)."""
    stream = sys.__stdout__ or sys.stdout
    stream.write(line + "\n")
    stream.flush()


def all_reduce_sum(buffer: torch.Tensor) -> torch.Tensor:
    """The bank's reducer across ranks: one all-reduce (SUM) of the packed buffer."""
    dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
    return buffer


class TimedReducer:
    """The bank reducer, timed: how much of a step the per-step all-reduce costs."""

    def __init__(self, reduce):
        self.reduce, self.seconds = reduce, 0.0

    def __call__(self, buffer: torch.Tensor) -> torch.Tensor:
        started = time.perf_counter()
        out = self.reduce(buffer)
        self.seconds += time.perf_counter() - started
        return out


def seed_everything(cfg: RunConfig) -> None:
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
        torch.set_num_threads(1)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


@torch.no_grad()
def predict(network: torch.nn.Module, batches, device: torch.device) -> dict[str, Any]:
    """Forward a rank's eval batches; returns numpy arrays and ids (dense truth passed through)."""
    was_training = network.training
    network.eval()
    parts: dict[str, list] = {"video_id": [], "frame_prob": [], "global_prob": [], "dense_audio": [],
                              "dense_visual": []}
    for batch in batches:
        if "valid" in batch and not bool(batch["valid"].all()):   # padding / skipped rows (shards)
            keep = batch["valid"].nonzero().flatten()
            batch = {k: ([v[i] for i in keep.tolist()] if isinstance(v, list) else v[keep]) for k, v in batch.items()}
            if not batch["video_id"]:
                continue
        out = network(*cast_inputs(network, tuple(batch[k].to(device) for k in INPUT_KEYS)))
        parts["video_id"] += list(batch["video_id"])
        parts["frame_prob"].append(out.frame_prob.float().cpu().numpy())
        parts["global_prob"].append(out.global_prob.float().cpu().numpy())
        for key in ("dense_audio", "dense_visual"):
            if key in batch:
                parts[key].append(batch[key].numpy())
    network.train(was_training)
    return {k: (np.concatenate(v) if v and k != "video_id" else v) for k, v in parts.items()}


def gather_predictions(local: dict[str, Any], world_size: int) -> dict[str, Any]:
    if world_size == 1:
        return local
    everything: list = [None] * world_size
    dist.all_gather_object(everything, local)
    merged: dict[str, Any] = {}
    for key in local:
        values = [part[key] for part in everything]
        merged[key] = sum(values, []) if key == "video_id" else np.concatenate([v for v in values if len(v)])
    return merged


def _sum_over_ranks(value: float, world_size: int) -> float:
    if world_size == 1:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item())


def score(pred: dict[str, Any]) -> dict[str, float]:
    if not len(pred["dense_audio"]):
        return {}
    return llp_scores(pred["frame_prob"], pred["global_prob"], pred["dense_audio"], pred["dense_visual"])


class Progress:
    """Counters across steps within an epoch, summed over ranks at the end of the epoch."""

    def __init__(self):
        self.loss_sums: dict[str, float] = {}
        self.steps = 0
        self.pl_counts = torch.zeros(8, dtype=torch.float64)
        self.bank_counts: torch.Tensor | None = None

    def add(self, losses: dict[str, float], pl_counts: torch.Tensor | None, bank_counts: torch.Tensor | None):
        self.steps += 1
        for k, v in losses.items():
            self.loss_sums[k] = self.loss_sums.get(k, 0.0) + v
        if pl_counts is not None:
            self.pl_counts += pl_counts.cpu()
        if bank_counts is not None:
            counts = bank_counts.detach().double().cpu()
            self.bank_counts = counts if self.bank_counts is None else self.bank_counts + counts

    def summary(self, world_size: int) -> dict[str, float]:
        out = {k: v / max(self.steps, 1) for k, v in self.loss_sums.items()}
        counts = self.pl_counts.clone()
        if world_size > 1:
            dist.all_reduce(counts)
        pl_tp, pl_fp, pl_fn, m_tp, m_fp, m_fn, n_bg, n_pairs = counts.tolist()
        if n_pairs > 0:
            out["pl_f1"] = 100 * 2 * pl_tp / max(2 * pl_tp + pl_fp + pl_fn, 1)
            out["pl_model_f1"] = 100 * 2 * m_tp / max(2 * m_tp + m_fp + m_fn, 1)
            out["pl_background_share"] = 100 * n_bg / n_pairs
        if self.bank_counts is not None:   # already identical on every rank (reduced each step)
            out["bank_key_segments_per_step"] = float(self.bank_counts[:, :-1].sum()) / max(self.steps, 1)
            out["bank_background_segments_per_step"] = float(self.bank_counts[:, -1].sum()) / max(self.steps, 1)
        return out


def build_data(cfg: RunConfig, ctx: WorkerContext):
    if cfg.data.shards:
        from distributed.data.shard_data import ShardData
        return ShardData(cfg, ctx.rank, ctx.world_size)
    from distributed.data.arrays import ArrayData
    return ArrayData(cfg, ctx.rank, ctx.world_size)


def train_loop_per_worker(loop_config: dict[str, Any], on_epoch=None) -> None:
    """``on_epoch(metrics)``: called on rank 0 after each epoch (in-process runs, e.g. Tune trials)."""
    cfg = config_from_dict(loop_config["config"])
    ctx = worker_context(bool(loop_config.get("in_ray")), cfg)
    if ctx.in_ray:   # our epoch line says it; Ray Train's per-report INFO dumps (root logger) would bury it
        logging.getLogger().setLevel(logging.WARNING)
    seed_everything(cfg)
    data = build_data(cfg, ctx)
    method = PPL(cfg.model, cfg.ppl, seed=cfg.seed).to(ctx.device)
    engine = build_engine(cfg, method.network, ctx.device)
    reducer = TimedReducer(all_reduce_sum if ctx.world_size > 1 else identity_reducer)
    logger = RunLogger(cfg, loop_config.get("mlflow_run_id")) if ctx.rank == 0 else None
    output_dir = Path(cfg.output_dir)
    state = {"epoch": 0, "step": 0, "global_step": 0, "best_score": -1.0, "best_epoch": -1, "history": []}
    state.update(_resume(cfg, ctx, engine, method))
    bar = _progress_bar(ctx, data.num_train_batches)

    for epoch in range(state["epoch"], cfg.optim.epochs):
        engine.set_lr(learning_rate(cfg, epoch))
        method.network.train()
        progress, started = Progress(), time.perf_counter()
        reducer.seconds = 0.0
        for batch in data.train(epoch, skip_batches=state["step"]):
            stats = train_step(cfg, method, engine, to_device(batch, ctx.device), epoch, reducer)
            progress.add(*stats)
            state["step"] += 1
            state["global_step"] += 1
            if cfg.distributed.check_bank_sync and ctx.world_size > 1:
                _assert_bank_in_sync(method, state["global_step"])
            _maybe_inject_failure(loop_config, ctx, state["global_step"])
            if bar is not None:
                bar.update(1)
            every = cfg.distributed.checkpoint_every_steps
            if every and state["global_step"] % every == 0 and state["step"] < data.num_train_batches:
                _checkpoint(cfg, ctx, engine, method, {**state, "epoch": epoch}, metrics=None)
        elapsed = time.perf_counter() - started
        metrics = progress.summary(ctx.world_size)
        metrics["videos_per_s"] = progress.steps * cfg.data.batch_size * ctx.world_size / max(elapsed, 1e-9)
        metrics["step_ms"] = 1000 * elapsed / max(progress.steps, 1)
        metrics["bank_allreduce_share"] = 100 * reducer.seconds / max(elapsed, 1e-9)   # % of train time
        metrics["lr"] = learning_rate(cfg, epoch)
        if hasattr(data, "skipped"):
            metrics["skipped_bad_samples"] = _sum_over_ranks(data.skipped, ctx.world_size)
        val = score(gather_predictions(predict(engine.module, data.eval("val"), ctx.device), ctx.world_size))
        metrics.update({f"val_{k}": v for k, v in val.items()})
        metrics["epoch"] = epoch + 1
        state.update(epoch=epoch + 1, step=0)
        current = val.get("seg_type", -metrics.get("loss_total", 0.0))
        if current > state["best_score"]:
            state["best_score"], state["best_epoch"] = current, epoch + 1
            if ctx.rank == 0:
                output_dir.mkdir(parents=True, exist_ok=True)
                save_model(output_dir / BEST_MODEL_FILE, method, engine.module.state_dict(), cfg.to_dict(),
                           {"epoch": epoch + 1, "val": val})
        state["history"].append(metrics)
        if ctx.rank == 0:
            emit(_epoch_line(cfg, metrics))
            if logger:
                logger.metrics(metrics, step=epoch + 1)
            if on_epoch is not None:
                on_epoch(dict(metrics))
        _checkpoint(cfg, ctx, engine, method, state, metrics)

    if bar is not None:
        bar.close()
    if ctx.rank == 0:
        save_model(output_dir / FINAL_MODEL_FILE, method, engine.module.state_dict(), cfg.to_dict(),
                   {"epoch": cfg.optim.epochs})
    _finish(cfg, ctx, engine, method, data, state, logger)


def _assert_bank_in_sync(method: PPL, step: int) -> None:
    """Debug check (distributed.check_bank_sync): every rank holds the bitwise-same bank."""
    mine = method.bank.prototypes.detach().cpu().contiguous()
    gathered = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, mine)
    if not all(torch.equal(mine, other) for other in gathered):
        raise RuntimeError(f"prototype bank differs between ranks after global step {step}")


def _maybe_inject_failure(loop_config: dict, ctx: WorkerContext, step: int) -> None:
    """Test hook (not a config key): kill one worker process once, at a given global step."""
    fault = loop_config.get("fail_once")
    if not fault or ctx.rank != fault["rank"] or step != fault["step"]:
        return
    marker = Path(fault["marker"])
    if marker.exists():
        return
    marker.write_text(f"killed rank {ctx.rank} at step {step}\n")
    os._exit(1)


def train_step(cfg: RunConfig, method: PPL, engine, batch: dict, epoch: int, reducer):
    inputs = tuple(batch[k] for k in INPUT_KEYS)
    weak = batch["weak_labels"]
    online = engine(*inputs)
    step = method.losses(online, inputs, weak, epoch)
    engine.backward(step.losses.total)
    engine.step()
    bank_counts = method.after_optimizer_step(engine.module, step.momentum, weak, reducer)
    pl_counts = None
    if step.labels is not None and "dense_audio" in batch:
        dense = torch.stack([batch["dense_audio"], batch["dense_visual"]], dim=2)
        pl_counts = pseudo_label_counts(step.labels, online.frame_prob.detach(), online.global_prob.detach(),
                                        weak, dense)
    return step.losses.as_floats(), pl_counts, bank_counts


def _epoch_line(cfg: RunConfig, m: dict[str, float]) -> str:
    parts = [f"epoch {m['epoch']}/{cfg.optim.epochs}", f"loss {m.get('loss_total', float('nan')):.4f}",
             f"(mil {m.get('loss_mil', 0):.4f} pl {m.get('loss_pseudo_label', 0):.4f})"]
    if "val_seg_type" in m:
        parts.append(f"val seg Type@AV {m['val_seg_type']:.1f} evt Type@AV {m['val_evt_type']:.1f}")
    if "pl_f1" in m:
        parts.append(f"PL-F1 {m['pl_f1']:.1f} (model {m['pl_model_f1']:.1f}) bg {m['pl_background_share']:.0f}%")
    parts.append(f"{m['videos_per_s']:.0f} videos/s")
    return "  ".join(parts)


def _progress_bar(ctx: WorkerContext, total: int):
    if ctx.rank != 0 or not sys.stderr.isatty():
        return None
    from tqdm import tqdm
    return tqdm(total=total, unit="batch", leave=False)


def _checkpoint(cfg: RunConfig, ctx: WorkerContext, engine, method: PPL, state: dict, metrics: dict | None):
    """Collective checkpoint (+ per-epoch report in Ray). Every rank calls it the same number of times."""
    progress = {k: state[k] for k in ("epoch", "step", "global_step", "best_score", "best_epoch", "history")}
    if ctx.in_ray:
        import ray.train

        with tempfile.TemporaryDirectory() as tmp:
            save_training_state(Path(tmp), engine, method, progress, ctx.rank)
            ray.train.report(metrics or {"epoch": state["epoch"], "step": state["step"]},
                             checkpoint=ray.train.Checkpoint.from_directory(tmp))
        return
    root = Path(cfg.output_dir) / "checkpoints"
    tmp = new_tmp_dir(root)
    save_training_state(tmp, engine, method, progress, ctx.rank)
    commit_local(tmp, root / f"step-{state['global_step']:09d}")
    for old in sorted(root.glob("step-*"))[:-2]:
        import shutil
        shutil.rmtree(old, ignore_errors=True)


def _resume(cfg: RunConfig, ctx: WorkerContext, engine, method: PPL) -> dict:
    directory: Path | None = None
    if ctx.in_ray:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is not None:
            with checkpoint.as_directory() as path:
                if (Path(path) / STATE_FILE).exists():
                    progress = load_training_state(Path(path), engine, method, ctx.rank)
                    _note_resume(ctx, progress)
                    return progress
        return {}
    directory = latest_local_checkpoint(Path(cfg.output_dir) / "checkpoints")
    if directory is None:
        return {}
    progress = load_training_state(directory, engine, method, ctx.rank)
    _note_resume(ctx, progress)
    return progress


def _note_resume(ctx: WorkerContext, progress: dict) -> None:
    if ctx.rank == 0:
        emit(f"resuming from epoch {progress['epoch']} step {progress['step']} "
             f"(global step {progress['global_step']})")


def _finish(cfg: RunConfig, ctx: WorkerContext, engine, method: PPL, data, state: dict, logger) -> None:
    """Score test with the best weights, write results.json, log artifacts, final report."""
    from distributed.runtime.checkpoint import load_model

    output_dir = Path(cfg.output_dir)
    best_path = output_dir / BEST_MODEL_FILE
    if ctx.world_size > 1:
        dist.barrier()
    best = load_model(best_path)
    network = engine.module
    current = {k: v.detach().clone() for k, v in network.state_dict().items()}
    network.load_state_dict(best["network"])
    test = score(gather_predictions(predict(network, data.eval("test"), ctx.device), ctx.world_size))
    network.load_state_dict(current)
    results = {"name": cfg.name, "best_epoch": state["best_epoch"], "val": best.get("val", {}), "test": test,
               "history": state["history"]}
    if ctx.rank == 0:
        tmp = output_dir / f".{RESULTS_FILE}.tmp"
        tmp.write_text(json.dumps(results, indent=2))
        os.replace(tmp, output_dir / RESULTS_FILE)
        if logger:
            logger.metrics({f"test_{k}": v for k, v in test.items()}, step=cfg.optim.epochs)
            logger.artifact(output_dir / RESULTS_FILE)
            logger.artifact(output_dir / "config.yaml")
            logger.finish()
    if ctx.in_ray:
        import ray.train

        ray.train.report({"test": test, "best_epoch": state["best_epoch"], "done": True})
