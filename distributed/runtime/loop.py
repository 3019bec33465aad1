"""The worker loop: one function that Ray Train runs on every worker (or this process runs alone).

build data -> build model/engine -> resume -> per epoch: steps, evaluate, report, checkpoint ->
score test with the best weights. Everything else is a named helper in this package.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distributed.common.config import RunConfig, config_from_dict
from distributed.common.errors import UserError
from distributed.runtime import checkpoint as ckpt
from distributed.runtime.collectives import Collectives
from distributed.runtime.console import Console, redirect_output_to
from distributed.runtime.counters import EpochCounters
from distributed.runtime.engine import build_engine, learning_rate
from distributed.runtime.evaluation import INPUT_KEYS, evaluate_split, save_predictions
from distributed.runtime.faults import maybe_inject_failure
from distributed.runtime.tracking import RunLogger
from distributed.runtime.wtal_eval import SELECT_KEY, evaluate_wtal, finish_wtal
from model.ppl import PPL
from model.pseudo_labels import pseudo_label_counts

RESULTS_FILE = "results.json"
TEST_PREDICTIONS_FILE = "test_predictions.npz"   # best weights on test, for `ppl-avvp evaluate --predictions`


@dataclass
class WorkerContext:
    rank: int
    world_size: int
    device: torch.device
    in_ray: bool


@dataclass
class TrainingState:
    """Where the run is (the data position) and what it has decided so far; saved in every checkpoint."""

    epoch: int = 0                    # epochs finished
    step: int = 0                     # batches done in the current epoch (mid-epoch checkpoints)
    global_step: int = 0
    best_score: float | None = None   # val seg Type@AV, or minus the val weak-label loss without dense truth
    best_epoch: int = -1
    history: list[dict] = field(default_factory=list)
    counters: list | None = None      # per rank: EpochCounters.state_dict() of the unfinished epoch

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def train_loop_per_worker(loop_config: dict[str, Any], on_epoch=None) -> None:
    """``on_epoch(metrics)``: called on rank 0 after each epoch (in-process runs, e.g. Tune trials)."""
    cfg = config_from_dict(loop_config["config"])
    ctx = worker_context(bool(loop_config.get("in_ray")), cfg)
    output_dir = Path(cfg.output_dir)
    if ctx.in_ray:   # library chatter to the run's log file; epoch lines reach the driver via the progress file
        redirect_output_to(output_dir / "logs" / f"rank{ctx.rank}.log")
        logging.getLogger().setLevel(logging.WARNING)
    seed_everything(cfg)
    data = build_data(cfg, ctx)
    method = PPL(cfg.model, cfg.ppl, seed=cfg.seed).to(ctx.device)
    engine = build_engine(cfg, method.network, ctx.device)
    comm = Collectives(ctx.world_size, ctx.device)
    console = Console(output_dir, through_file=ctx.in_ray) if ctx.rank == 0 else None
    logger = RunLogger(cfg, loop_config.get("mlflow_run_id")) if ctx.rank == 0 else None
    state = resume(cfg, ctx, engine, method, console)

    for epoch in range(state.epoch, cfg.optim.epochs):
        counters = train_epoch(cfg, ctx, method, engine, data, comm, state, epoch, loop_config, console)
        metrics = counters.summary(videos_per_step=cfg.data.batch_size * ctx.world_size)
        metrics["lr"] = learning_rate(cfg, epoch)
        if ctx.device.type == "cuda":
            metrics["gpu_peak_memory_gib"] = torch.cuda.max_memory_allocated(ctx.device) / 2**30
        if hasattr(data, "skipped"):
            metrics["skipped_bad_samples"] = comm.sum_floats(data.skipped)[0]
        val, val_loss, selection_split = epoch_scores(cfg, engine.module, data, ctx.device, comm)
        metrics.update({f"{selection_split}_{k}": v for k, v in val.items()})
        if val_loss is not None:
            metrics["val_weak_label_loss"] = val_loss
        metrics["epoch"] = epoch + 1
        state.epoch, state.step, state.counters = epoch + 1, 0, None
        if is_new_best(state, val, val_loss, epoch + 1) and ctx.rank == 0:
            output_dir.mkdir(parents=True, exist_ok=True)
            ckpt.save_model(output_dir / ckpt.BEST_MODEL_FILE, method, engine.module.state_dict(), cfg.to_dict(),
                            {"epoch": epoch + 1, selection_split: val})
        state.history.append(metrics)
        if ctx.rank == 0:
            console.line(epoch_line(cfg, metrics))
            if logger:
                logger.metrics(metrics, step=epoch + 1)
            if on_epoch is not None:
                on_epoch(dict(metrics))
        save_checkpoint(cfg, ctx, engine, method, state, metrics)

    if ctx.rank == 0:
        ckpt.save_model(output_dir / ckpt.FINAL_MODEL_FILE, method, engine.module.state_dict(), cfg.to_dict(),
                        {"epoch": cfg.optim.epochs})
        console.close()
    finish(cfg, ctx, engine, data, comm, state, logger)


def train_epoch(cfg: RunConfig, ctx: WorkerContext, method: PPL, engine, data, comm: Collectives,
                state: TrainingState, epoch: int, loop_config: dict, console: Console | None) -> EpochCounters:
    """One epoch's steps from the saved data position; mid-epoch checkpoints carry the counters."""
    engine.set_lr(learning_rate(cfg, epoch))
    method.network.train()
    counters = EpochCounters(comm)
    if state.counters is not None and len(state.counters) == ctx.world_size:
        counters.load_state_dict(state.counters[ctx.rank])     # each rank continues its own counts
    reducer = counters.timed_reducer()
    counters.start_clock()
    for batch in data.train(epoch, skip_batches=state.step):
        counters.add(*train_step(cfg, method, engine, to_device(batch, ctx.device), epoch, reducer))
        state.step += 1
        state.global_step += 1
        if cfg.distributed.check_bank_sync:
            assert_bank_in_sync(method, comm, state.global_step)
        maybe_inject_failure(loop_config, ctx.rank, state.global_step)
        if console is not None:
            console.batch(epoch + 1, state.step, data.num_train_batches)
        every = cfg.distributed.checkpoint_every_steps
        if every and state.global_step % every == 0 and state.step < data.num_train_batches:
            state.counters = comm.gather_objects(counters.state_dict())   # rank 0 saves every rank's counts
            save_checkpoint(cfg, ctx, engine, method, state, metrics=None)
    return counters


def train_step(cfg: RunConfig, method: PPL, engine, batch: dict, epoch: int, reducer):
    """Forward, losses, backward, optimizer step; then EMA + bank update (skipped with the step)."""
    mask = batch.get("mask")                        # variable-length (W-TAL) batches: (B, T), True = real
    inputs = (batch["rgb"], batch["flow"], mask) if cfg.is_wtal else tuple(batch[k] for k in INPUT_KEYS)
    weak = batch["weak_labels"]
    dense = torch.stack([batch["dense_audio"], batch["dense_visual"]], dim=2) if "dense_audio" in batch else None
    if cfg.ppl.labeler == "oracle" and dense is None:
        raise UserError("ppl.labeler: oracle needs per-segment truth in the training data (synthetic sets carry "
                        "it; real training videos have only weak labels)")
    online = engine(*inputs)
    try:
        step = method.losses(online, inputs, weak, epoch, mask=mask, dense_truth=dense)
    except RuntimeError as err:   # BCE refuses NaN probabilities: the weights have diverged
        if "between 0 and 1" not in str(err):
            raise
        raise UserError(f"training diverged in epoch {epoch + 1}: the model predicts NaN (optim.lr={cfg.optim.lr:g} "
                        f"is likely too high; try a lower optim.lr or optim.grad_clip > 0)") from None
    engine.backward(step.losses.total)
    engine.step()
    bank_counts = None
    if engine.step_was_applied():   # an fp16 overflow skips the step: the teacher and bank wait with it
        bank_counts = method.after_optimizer_step(engine.module, step.momentum, weak, reducer, mask=mask)
    pl_counts = None
    if step.labels is not None and dense is not None:
        pl_counts = pseudo_label_counts(step.labels, online.frame_prob.detach(), online.global_prob.detach(),
                                        weak, dense)
    return step.losses.as_floats(), pl_counts, bank_counts


def is_new_best(state: TrainingState, val: dict[str, float], val_loss: float | None, epoch: int) -> bool:
    """Model selection: val seg Type@AV, or (no dense truth) the lowest val weak-label loss; same on every rank."""
    if SELECT_KEY in val:            # W-TAL: test mAP@[0.1:0.7] (best-on-test, labelled as such)
        current = val[SELECT_KEY]
    elif "seg_type" in val:
        current = val["seg_type"]
    elif val_loss is not None:
        current = -val_loss
    else:
        current = float(epoch)       # nothing to select on: keep the latest weights
    if state.best_score is None or current > state.best_score:
        state.best_score, state.best_epoch = current, epoch
        return True
    return False


def finish(cfg: RunConfig, ctx: WorkerContext, engine, data, comm: Collectives, state: TrainingState,
           logger) -> None:
    """Score test with the best weights, write results.json, log artifacts, final report."""
    if cfg.is_wtal:
        return finish_wtal(cfg, ctx, engine, data, comm, state, logger, RESULTS_FILE, ckpt.BEST_MODEL_FILE,
                           ckpt.load_model)
    output_dir = Path(cfg.output_dir)
    comm.barrier()                     # rank 0 has written the best model
    best = ckpt.load_model(output_dir / ckpt.BEST_MODEL_FILE)
    network = engine.module
    current = {k: v.detach().clone() for k, v in network.state_dict().items()}
    network.load_state_dict(best["network"])
    test, _, rows = evaluate_split(network, data.eval("test"), ctx.device, comm)
    network.load_state_dict(current)
    if len(set(comm.gather_objects(state.best_epoch))) != 1:   # model selection must be rank-independent
        raise RuntimeError(f"ranks disagree on the best epoch: {comm.gather_objects(state.best_epoch)}")
    results = {"name": cfg.name, "best_epoch": state.best_epoch, "val": best.get("val", {}), "test": test,
               "history": state.history}
    if ctx.rank == 0:
        tmp = output_dir / f".{RESULTS_FILE}.tmp"
        tmp.write_text(json.dumps(results, indent=2))
        os.replace(tmp, output_dir / RESULTS_FILE)
        if rows["video_id"]:
            save_predictions(output_dir / TEST_PREDICTIONS_FILE, rows)
        if logger:
            logger.metrics({f"test_{k}": v for k, v in test.items()}, step=cfg.optim.epochs)
            logger.artifact(output_dir / RESULTS_FILE)
            logger.artifact(output_dir / "config.yaml")
            logger.finish()
    if ctx.in_ray:
        import ray.train

        ray.train.report({"test": test, "best_epoch": state.best_epoch, "done": True})


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------

def worker_context(in_ray: bool, cfg: RunConfig) -> WorkerContext:
    if in_ray:
        import ray.train
        import ray.train.torch

        ctx = ray.train.get_context()
        return WorkerContext(ctx.get_world_rank(), ctx.get_world_size(), ray.train.torch.get_device(), True)
    device = torch.device("cuda" if cfg.distributed.use_gpu and torch.cuda.is_available() else "cpu")
    return WorkerContext(0, 1, device, False)


def seed_everything(cfg: RunConfig) -> None:
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
        torch.set_num_threads(1)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def epoch_scores(cfg: RunConfig, network, data, device: torch.device, comm: Collectives):
    """(scores, weak-label loss or None, split name): LLP val by the ten F1 numbers, W-TAL test by mAP."""
    if cfg.is_wtal:
        return evaluate_wtal(network, data, device, comm)[0], None, "test"
    val, val_loss, _ = evaluate_split(network, data.eval("val"), device, comm)
    return val, val_loss, "val"


def build_data(cfg: RunConfig, ctx: WorkerContext):
    if cfg.is_wtal and cfg.data.shards:
        from distributed.data.shards.wtal import WTALShardData
        return WTALShardData(cfg, ctx.rank, ctx.world_size)
    if cfg.is_wtal:
        from distributed.data.wtal_arrays import WTALData
        return WTALData(cfg, ctx.rank, ctx.world_size)
    if cfg.data.shards:
        from distributed.data.shards import ShardData
        return ShardData(cfg, ctx.rank, ctx.world_size)
    from distributed.data.arrays import ArrayData
    return ArrayData(cfg, ctx.rank, ctx.world_size)


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def assert_bank_in_sync(method: PPL, comm: Collectives, step: int) -> None:
    """Debug check (distributed.check_bank_sync): every bank buffer bitwise equal on every rank."""
    for name, buffer in method.bank.state_dict().items():
        if not comm.same_on_every_rank(buffer.to(comm.device)):
            raise RuntimeError(f"prototype bank buffer {name!r} differs between ranks after global step {step}")


def epoch_line(cfg: RunConfig, m: dict[str, float]) -> str:
    parts = [f"epoch {m['epoch']}/{cfg.optim.epochs}", f"loss {m.get('loss_total', float('nan')):.4f}",
             f"(mil {m.get('loss_mil', 0):.4f} pl {m.get('loss_pseudo_label', 0):.4f})"]
    if "test_map_avg_0.1_0.7" in m:
        parts.append(f"test mAP@[0.1:0.5] {m['test_map_avg_0.1_0.5']:.1f} [0.1:0.7] {m['test_map_avg_0.1_0.7']:.1f}")
    elif "val_seg_type" in m:
        parts.append(f"val seg Type@AV {m['val_seg_type']:.1f} evt Type@AV {m['val_evt_type']:.1f}")
    elif "val_weak_label_loss" in m:
        parts.append(f"val weak-label loss {m['val_weak_label_loss']:.4f}")
    if "pl_f1" in m:
        parts.append(f"PL-F1 {m['pl_f1']:.1f} (model {m['pl_model_f1']:.1f}) bg {m['pl_background_share']:.0f}%")
    parts.append(f"{m['videos_per_s']:.0f} videos/s")
    return "  ".join(parts)


def save_checkpoint(cfg: RunConfig, ctx: WorkerContext, engine, method: PPL, state: TrainingState,
                    metrics: dict | None) -> None:
    """Collective checkpoint (+ per-epoch report in Ray). Every rank calls it the same number of times."""
    if ctx.in_ray:
        import tempfile

        import ray.train

        with tempfile.TemporaryDirectory() as tmp:
            ckpt.save_training_state(Path(tmp), engine, method, state.to_dict(), ctx.rank)
            ray.train.report(metrics or {"epoch": state.epoch, "step": state.step},
                             checkpoint=ray.train.Checkpoint.from_directory(tmp))
        return
    root = Path(cfg.output_dir) / "checkpoints"
    tmp = ckpt.new_tmp_dir(root)
    ckpt.save_training_state(tmp, engine, method, state.to_dict(), ctx.rank)
    ckpt.commit_local(tmp, root / f"step-{state.global_step:09d}")
    for old in sorted(root.glob("step-*"))[:-2]:   # keep the last two
        shutil.rmtree(old, ignore_errors=True)


def resume(cfg: RunConfig, ctx: WorkerContext, engine, method: PPL, console: Console | None) -> TrainingState:
    """The latest checkpoint of this run (Ray Train's after a restart, else output_dir/checkpoints)."""
    saved = None
    if ctx.in_ray:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is not None:
            with checkpoint.as_directory() as path:
                if (Path(path) / ckpt.STATE_FILE).exists():
                    saved = ckpt.load_training_state(Path(path), engine, method, ctx.rank)
    else:
        directory = ckpt.latest_local_checkpoint(Path(cfg.output_dir) / "checkpoints")
        if directory is not None:
            saved = ckpt.load_training_state(directory, engine, method, ctx.rank)
    if saved is None:
        return TrainingState()
    state = TrainingState(**{k: v for k, v in saved.items() if k in TrainingState.__dataclass_fields__})
    if console is not None:
        console.line(f"resuming from epoch {state.epoch} step {state.step} (global step {state.global_step})")
    return state
