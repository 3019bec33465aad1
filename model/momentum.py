"""Momentum (EMA) encoder (seed §1 end, Table 4): theta_bar <- alpha*theta_bar + (1-alpha)*theta."""
from __future__ import annotations

import copy

import torch
from torch import nn

from model.network import AudioVisualParser, ParserOutput


class MomentumEncoder(nn.Module):
    """An EMA copy of the parser, updated after every optimizer step and never by backprop.

    ``decay=None`` is the seed's "without EMA" ablation: the online model's own detached output
    is used instead, so no second network is kept.
    """

    def __init__(self, online: AudioVisualParser, decay: float | None):
        super().__init__()
        if decay is not None and not 0.0 <= decay < 1.0:
            raise ValueError(f"ema_decay: must be in [0, 1) or None, got {decay!r}")
        self.decay = decay
        self.ema: AudioVisualParser | None = None
        if decay is not None:
            self.ema = copy.deepcopy(online)
            self.ema.requires_grad_(False)
            self.ema.eval()

    @torch.no_grad()
    def update(self, online: nn.Module) -> None:
        if self.ema is None:
            return
        ema_params = list(self.ema.parameters())
        online_params = [p.detach() for p in online.parameters()]
        torch._foreach_lerp_(ema_params, [p.to(ema_params[0].dtype) for p in online_params], 1.0 - self.decay)
        for ema_buf, buf in zip(self.ema.buffers(), online.buffers()):
            ema_buf.copy_(buf)

    @torch.no_grad()
    def forward(self, online_output: ParserOutput, *inputs) -> ParserOutput:
        """Momentum output for ``inputs``; without EMA, the online output detached."""
        if self.ema is None:
            return online_output.detach()
        self.ema.eval()
        return self.ema(*inputs)

    def train(self, mode: bool = True):   # the EMA copy never uses dropout
        super().train(mode)
        if self.ema is not None:
            self.ema.eval()
        return self
