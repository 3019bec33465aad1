"""Momentum (EMA) encoder (seed §1 end, Table 4): theta_bar <- alpha_t*theta_bar + (1-alpha_t)*theta.

Decay warm-up (``warmup=True``, ours): alpha_t = min(alpha, (1 + t) / (10 + t)) at the t-th update
(the schedule of TensorFlow's ``ExponentialMovingAverage(num_updates=t)``). A constant alpha = 0.999
keeps alpha^t of the random initialisation for t steps: 86% after 150 steps, 37% after 1,000, so a
short run (or the first epochs of a long one) takes pseudo-labels from a teacher that is still
mostly noise. With the warm-up the initialisation's share is prod_s alpha_s <= 10! (t+1)! / (t+10)!
(6e-5 after 10 steps) and the horizon 1 / (1 - alpha_t) grows with the run until it reaches the
configured alpha (after about 9,000 steps for 0.999), so the seed's 0.999 is safe at every scale.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from model.network import AudioVisualParser, ParserOutput


def warmed_up_decay(decay: float, num_updates: int) -> float:
    """alpha_t = min(alpha, (1 + t) / (10 + t)) for the t-th update (t >= 1)."""
    return min(decay, (1.0 + num_updates) / (10.0 + num_updates))


class MomentumEncoder(nn.Module):
    """An EMA copy of the parser, updated after every optimizer step and never by backprop.

    ``decay=None`` is the seed's "without EMA" ablation: the online model's own detached output
    is used instead, so no second network is kept (the one place that fallback lives).
    """

    def __init__(self, online: AudioVisualParser, decay: float | None, warmup: bool = False,
                 precision: str = "float32"):
        super().__init__()
        if precision not in ("float32", "bfloat16"):
            raise ValueError(f"teacher_precision: must be float32 or bfloat16, got {precision!r}")
        if decay is not None and not 0.0 <= decay < 1.0:
            raise ValueError(f"ema_decay: must be in [0, 1) or None, got {decay!r}")
        self.decay, self.warmup = decay, warmup
        self.precision = precision
        self.num_updates = 0   # a host-side count (no device sync per step), saved through the extra state
        self.ema: AudioVisualParser | None = None
        if decay is not None:
            self.ema = copy.deepcopy(online)
            self.ema.requires_grad_(False)
            self.ema.eval()

    def current_decay(self) -> float | None:
        """alpha_t of the next update."""
        if self.decay is None:
            return None
        return warmed_up_decay(self.decay, self.num_updates + 1) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, online: nn.Module) -> None:
        if self.ema is None:
            return
        decay = self.current_decay()
        self.num_updates += 1
        ema_params = list(self.ema.parameters())
        online_params = [p.detach() for p in online.parameters()]
        torch._foreach_lerp_(ema_params, [p.to(ema_params[0].dtype) for p in online_params], 1.0 - decay)
        for ema_buf, buf in zip(self.ema.buffers(), online.buffers()):
            ema_buf.copy_(buf)

    def get_extra_state(self) -> dict:
        return {"num_updates": self.num_updates}

    def set_extra_state(self, state: dict) -> None:
        self.num_updates = int(state["num_updates"])

    @torch.no_grad()
    def forward(self, online_output: ParserOutput, *inputs) -> ParserOutput:
        """Momentum output for ``inputs``; without EMA, the online output detached. Always float32: with
        ``precision="bfloat16"`` the forward runs under autocast on the inputs' own device (CUDA or CPU)."""
        if self.ema is None:
            return online_output.detach()
        self.ema.eval()
        if self.precision == "float32":
            return self.ema(*inputs).float()
        with torch.autocast(device_type=inputs[0].device.type, dtype=torch.bfloat16):
            output = self.ema(*inputs)
        return output.float()

    def train(self, mode: bool = True):   # the EMA copy never uses dropout
        super().train(mode)
        if self.ema is not None:
            self.ema.eval()
        return self
