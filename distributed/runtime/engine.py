"""The optimizer step: DeepSpeed (ZeRO stage and precision from config) or plain torch.

Both engines expose the same four things the worker loop uses: ``engine(*inputs)``,
``backward(loss)``, ``step()``, ``module``; plus collective ``save``/``load`` of their state and
``set_lr`` (the StepLR schedule is a pure function of the epoch, applied by the loop).
"""
from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from distributed.common.config import RunConfig
from distributed.common.errors import ConfigError, DataError, UserError
from distributed.runtime.checkpoint import (load_module_state, load_optimizer_state, one_line, run_fingerprint,
                                            safe_load)


def cast_inputs(module: nn.Module, inputs: tuple) -> tuple:
    """Features arrive as float32; a bf16/fp16 model (DeepSpeed mixed precision) needs its own dtype."""
    dtype = next(module.parameters()).dtype
    return tuple(x.to(dtype) if torch.is_tensor(x) and x.is_floating_point() and x.dtype != dtype else x
                 for x in inputs)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ensure_process_group(backend: str = "gloo") -> None:
    """Outside Ray Train (single process), DeepSpeed still needs a process group: make a 1-rank one."""
    if dist.is_available() and dist.is_initialized():
        return
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    dist.init_process_group(backend=backend, rank=0, world_size=1)


def learning_rate(cfg: RunConfig, epoch: int) -> float:
    """StepLR as in HAN: lr * gamma^(epoch // step)."""
    return cfg.optim.lr * cfg.optim.lr_gamma ** (epoch // cfg.optim.lr_step_epochs)


def deepspeed_config(cfg: RunConfig) -> dict[str, Any]:
    """Our keys on top of an optional user JSON; a JSON that contradicts the run config is an error."""
    base: dict[str, Any] = {}
    if cfg.distributed.deepspeed_config:
        path = Path(cfg.distributed.deepspeed_config)
        try:
            base = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"distributed.deepspeed_config: {path} not found") from None
        except json.JSONDecodeError as err:
            raise ConfigError(f"distributed.deepspeed_config: {path} is not valid JSON ({err})") from None
        stage = base.get("zero_optimization", {}).get("stage", cfg.distributed.zero_stage)
        if stage != cfg.distributed.zero_stage:
            raise ConfigError(f"distributed.deepspeed_config: {path} sets zero_optimization.stage={stage} but "
                              f"distributed.zero_stage={cfg.distributed.zero_stage}")
        for key in ("bf16", "fp16"):
            enabled = bool(base.get(key, {}).get("enabled", False))
            if enabled != (cfg.distributed.precision == key):
                raise ConfigError(f"distributed.deepspeed_config: {path} sets {key}.enabled={enabled} but "
                                  f"distributed.precision={cfg.distributed.precision}")
    for key in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps"):
        base.pop(key, None)   # batch arithmetic is ours (data.batch_size per worker)
    resolved = dict(base)
    resolved.update({
        "train_micro_batch_size_per_gpu": cfg.data.batch_size,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {**base.get("zero_optimization", {}), "stage": cfg.distributed.zero_stage},
        "bf16": {**base.get("bf16", {}), "enabled": cfg.distributed.precision == "bf16"},
        "fp16": {**base.get("fp16", {}), "enabled": cfg.distributed.precision == "fp16"},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": base.get("steps_per_print", 10**9),
    })
    if cfg.optim.grad_clip > 0:
        resolved["gradient_clipping"] = cfg.optim.grad_clip
    return resolved


def adamw(cfg: RunConfig, parameters) -> torch.optim.AdamW:
    """The optimizer of both engines. ``optim.fused`` (default): torch's fused AdamW, the same update in one
    kernel for all parameters instead of a dozen small ones per parameter (torch fuses by default on CUDA
    only; on the CPU the loop was over half of a Base step at batch 16: bench/bench_train_step.py).
    ``optim.fused=false``: torch's per-parameter loop, the one the tables of earlier rounds were measured with."""
    return torch.optim.AdamW(parameters, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay,
                             fused=True if cfg.optim.fused else None)


def innermost_optimizer(optimizer) -> torch.optim.Optimizer:
    """The torch optimizer inside DeepSpeed's wrappers (ZeRO, bf16), or ``optimizer`` itself."""
    while not isinstance(optimizer, torch.optim.Optimizer) and hasattr(optimizer, "optimizer"):
        optimizer = optimizer.optimizer
    return optimizer


def keep_adamw_implementation(optimizer, fused: bool) -> None:
    """After a resume: the implementation this run's config asks for, not the checkpoint's. torch's
    ``load_state_dict`` restores every saved group setting, ``fused`` included, so a checkpoint of an earlier
    round would switch the kernel back. The fused kernel reads each parameter's step count as a float32 tensor
    on the parameter's own device (the per-parameter loop keeps it on the CPU). ``optimizer``: ours, or the
    DeepSpeed wrapper around it."""
    optimizer = innermost_optimizer(optimizer)
    for group in optimizer.param_groups:
        group["fused"] = True if fused else None
        for parameter in group["params"]:
            step = optimizer.state.get(parameter, {}).get("step")
            if torch.is_tensor(step):
                optimizer.state[parameter]["step"] = step.to(parameter.device if fused else "cpu", torch.float32)


class TorchEngine:
    """Plain torch: AdamW, optional gradient clipping, DDP when there is more than one rank."""

    def __init__(self, cfg: RunConfig, network: nn.Module, device: torch.device):
        self.module = network.to(device)
        wrapped: nn.Module = self.module
        if dist.is_initialized() and dist.get_world_size() > 1:
            wrapped = nn.parallel.DistributedDataParallel(self.module,
                                                          device_ids=[device.index] if device.type == "cuda" else None)
        self._forward = wrapped
        self.optimizer = adamw(cfg, self.module.parameters())
        self.grad_clip, self.fused = cfg.optim.grad_clip, cfg.optim.fused
        self.run_fingerprint = run_fingerprint(cfg)   # checkpoints carry it; resuming another run is refused

    def __call__(self, *inputs):
        return self._forward(*inputs)

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> None:
        if self.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.module.parameters(), self.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def step_was_applied(self) -> bool:
        return True

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def save(self, directory: Path, rank: int) -> None:
        if rank == 0:
            torch.save({"module": self.module.state_dict(), "optimizer": self.optimizer.state_dict()},
                       directory / "engine.pt")

    def load(self, directory: Path) -> None:
        path = directory / "engine.pt"
        if not path.is_file() and (directory / "deepspeed").is_dir():
            raise DataError(f"{directory}: written by distributed.engine=deepspeed, not torch")
        state = safe_load(path)
        if not isinstance(state, dict) or not {"module", "optimizer"} <= set(state):
            raise DataError(f"{path}: expected sections 'module' and 'optimizer'")
        load_module_state(self.module, state["module"], f"{path}: module")
        load_optimizer_state(self.optimizer, state["optimizer"], f"{path}: optimizer")
        keep_adamw_implementation(self.optimizer, self.fused)


def _drop_cuda_home_notice(record: logging.LogRecord) -> bool:
    """A CUDA build of torch on a machine without a CUDA runtime logs, when DeepSpeed imports its extension
    builder, that it found a CUDA_HOME anyway: a fact about the install, not about this run. Left in, it
    turns every one-line error of a CPU run into two lines."""
    return not record.getMessage().startswith("No CUDA runtime is found")


class DeepSpeedEngine:
    """DeepSpeed owns the optimizer step (ZeRO 0-3). A client torch AdamW avoids the fused-Adam JIT build."""

    def __init__(self, cfg: RunConfig, network: nn.Module, device: torch.device):
        logging.getLogger("torch.utils.cpp_extension").addFilter(_drop_cuda_home_notice)
        import deepspeed   # heavy import, only where used

        optimizer = adamw(cfg, network.parameters())
        self.config = deepspeed_config(cfg)
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=network.to(device), optimizer=optimizer, config=self.config,
            dist_init_required=False)
        self.engine.checkpoint_engine = SafeLoadingCheckpointEngine(self.engine.checkpoint_engine)
        self.module = self.engine.module
        self.fused = cfg.optim.fused
        self.run_fingerprint = run_fingerprint(cfg)   # checkpoints carry it; resuming another run is refused

    def __call__(self, *inputs):
        # losses, pseudo-labels and the bank stay in float32 whatever precision the forward ran in
        return self.engine(*cast_inputs(self.module, inputs)).float()

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)

    def step(self) -> None:
        self.engine.step()

    def step_was_applied(self) -> bool:
        """False when fp16 loss scaling skipped the step (overflow); the EMA and the bank skip it too."""
        return bool(self.engine.was_step_applied())

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def save(self, directory: Path, rank: int) -> None:
        self.engine.save_checkpoint(str(directory / "deepspeed"), tag="state", save_latest=False)   # collective

    def load(self, directory: Path) -> None:
        """DeepSpeed's own loader, reading every file through ``SafeLoadingCheckpointEngine``."""
        folder = directory / "deepspeed"
        if not (folder / "state").is_dir():
            written_by_torch = (directory / "engine.pt").is_file()
            raise DataError(f"{folder}: " + ("written by distributed.engine=torch, not deepspeed" if written_by_torch
                                             else "no DeepSpeed state in this checkpoint"))
        try:
            path, _ = self.engine.load_checkpoint(str(folder), tag="state", load_optimizer_states=True,
                                                  load_lr_scheduler_states=False)
        except UserError:
            raise
        except Exception as err:  # noqa: BLE001 - DeepSpeed reports unfitting contents as assorted errors
            raise DataError(f"{folder}: does not fit this model and config ({type(err).__name__}: "
                            f"{one_line(err)})") from None
        if path is None:
            raise DataError(f"{folder}: no DeepSpeed checkpoint (tag 'state') to load")
        keep_adamw_implementation(self.optimizer, self.fused)


def deepspeed_safe_globals() -> list[type]:
    """The plain classes DeepSpeed pickles into its ZeRO checkpoints (found by loading ZeRO 0-2 fp32 and bf16
    checkpoints with weights_only=True; DynamicLossScaler is fp16's scaler, not tried here: fp16 needs a GPU).
    Each holds plain values only (numbers, a dtype) and is rebuilt from them."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


class SafeLoadingCheckpointEngine:
    """DeepSpeed's checkpoint engine with a pickle-free ``load``.

    DeepSpeed's TorchCheckpointEngine reads with torch.load's full unpickler: a file planted in a
    checkpoint folder (a shared file system on a cluster) would run code on resume. Saving and everything
    else is delegated to the engine DeepSpeed configured.
    """

    def __init__(self, inner):
        self.inner = inner

    def __getattr__(self, name: str):
        if name == "inner":   # not set yet (copy/pickle): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)

    def load(self, path: str, map_location=None):
        return safe_load(path, map_location=map_location, allowed=deepspeed_safe_globals())


def build_engine(cfg: RunConfig, network: nn.Module, device: torch.device):
    if cfg.distributed.engine == "deepspeed":
        ensure_process_group("nccl" if device.type == "cuda" else "gloo")
        return DeepSpeedEngine(cfg, network, device)
    return TorchEngine(cfg, network, device)
