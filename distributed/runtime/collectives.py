"""Every cross-rank operation of a run, in one place, on the one device its backend accepts.

NCCL takes CUDA tensors only (gloo takes CPU and CUDA tensors, so CPU tests alone never catch a CPU
tensor handed to a collective). ``Collectives`` is built once per worker with the engine's device:
it creates every tensor it reduces on that device and refuses a tensor that lives elsewhere, so a
counter built on the CPU fails here, on any backend, instead of in the first multi-GPU epoch.
With one rank every operation is the identity and nothing is sent.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as torch_dist
from torch import Tensor


class Collectives:
    """All-reduce, all-gather and barrier for one worker; ``device`` is the engine's device."""

    def __init__(self, world_size: int, device: torch.device | str, backend: str | None = None,
                 dist_api: Any = torch_dist):
        self.world_size = int(world_size)
        self.device = torch.device(device)
        self._dist = dist_api
        if backend is None:
            backend = dist_api.get_backend() if self.world_size > 1 and dist_api.is_initialized() else "none"
        self.backend = str(backend).lower()
        if self.backend == "nccl":
            if self.device.type not in ("cuda", "meta"):     # meta: device-discipline tests without a GPU
                raise RuntimeError(f"the NCCL backend needs a CUDA device, the engine runs on {self.device}")
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)           # all_gather_object packs objects on the current device

    # -- tensors on the right device ----------------------------------------------------------
    def tensor(self, values: Sequence[float] | float, dtype: torch.dtype = torch.float64) -> Tensor:
        """A new tensor on the collective device (the only way counters should be built)."""
        return torch.as_tensor(values, dtype=dtype).to(self.device)

    def zeros(self, *shape: int, dtype: torch.dtype = torch.float64) -> Tensor:
        return torch.zeros(*shape, dtype=dtype, device=self.device)

    def _check(self, tensor: Tensor, op: str) -> None:
        if tensor.device != self.device:
            raise RuntimeError(f"{op}: tensor on {tensor.device}, but the {self.backend} collectives of this "
                               f"run take tensors on {self.device} (build it with Collectives.tensor)")

    def host(self, tensor: Tensor) -> Tensor:
        """Values back on the CPU, for Python numbers and logging."""
        return tensor.detach().cpu()

    # -- operations ---------------------------------------------------------------------------
    def sum_(self, tensor: Tensor) -> Tensor:
        """In-place SUM over ranks (the prototype bank's reducer is this); returns the tensor."""
        self._check(tensor, "all_reduce")
        if self.world_size > 1:
            self._dist.all_reduce(tensor, op=self._dist.ReduceOp.SUM)
        return tensor

    def sum_floats(self, *values: float) -> list[float]:
        """Python numbers summed over ranks (float64 on the collective device)."""
        if self.world_size == 1:
            return [float(v) for v in values]
        return [float(v) for v in self.host(self.sum_(self.tensor([float(v) for v in values]))).tolist()]

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order (pickled by torch between our own processes)."""
        if self.world_size == 1:
            return [obj]
        out: list[Any] = [None] * self.world_size
        self._dist.all_gather_object(out, obj)
        return out

    def same_on_every_rank(self, tensor: Tensor) -> bool:
        """True when ``tensor`` is bitwise equal on all ranks (debug checks)."""
        self._check(tensor, "all_gather")
        if self.world_size == 1:
            return True
        tensor = tensor.contiguous()
        gathered = [torch.empty_like(tensor) for _ in range(self.world_size)]
        self._dist.all_gather(gathered, tensor)
        return all(torch.equal(self.host(tensor), self.host(other)) for other in gathered)

    def barrier(self) -> None:
        if self.world_size > 1:
            self._dist.barrier()
