"""W-TAL train-step time (printed, never asserted): the thumos14 preset (HAN on I3D RGB + flow, PPL soft
labels, EMA teacher, prototype bank) at THUMOS14's median and longest video length, one step = forward,
momentum forward, pseudo-labels, losses, backward, AdamW step, EMA + bank update.

Lengths: floor(duration * 25 / 16) over the real annotation files' train (validation) videos when
$PPL_AVVP_THUMOS14 (or --annotations) names them, else THUMOS14's known median/longest (coded below).
Each batch is one length: ``--batch`` videos of the median length padded to ``--pad`` (0 = no padding),
and the longest video alone; plus the fixed-length training batch of the preset (320 snippets).
Usage: python bench/bench_wtal_step.py [--steps N] [--batch B] [--dim D] [--model-dim D]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distributed.common.config import load_config  # noqa: E402
from distributed.runtime.engine import adamw  # noqa: E402
from model.config import NetworkConfig, PPLConfig  # noqa: E402
from model.ppl import PPL  # noqa: E402

C = 20
RUN_CONFIG = load_config("thumos14", ["data.shards=unused"])   # read once: its optim section builds the optimizer
CODED_MEDIAN, CODED_LONGEST = 171, 2614   # THUMOS14 train median (measured on duration.npy) and test longest


def lengths(annotations: str | None) -> tuple[int, int, str]:
    if annotations and Path(annotations).is_dir():
        from distributed.data.thumos14 import load_thumos14
        from distributed.data.wtal_features import snippet_count

        t = [snippet_count(float(d)) for split in ("train", "test")
             for d in load_thumos14(annotations, split).duration]
        return int(np.median(t)), int(max(t)), f"real files {annotations} (train + test)"
    return CODED_MEDIAN, CODED_LONGEST, "coded THUMOS14 numbers"


def step_time(method: PPL, batch: int, length: int, valid: int, dim: int, steps: int) -> float:
    g = torch.Generator().manual_seed(0)
    rgb, flow = torch.rand(batch, length, dim, generator=g), torch.rand(batch, length, dim, generator=g)
    mask = torch.zeros(batch, length, dtype=torch.bool)
    mask[:, :valid] = True
    weak = (torch.rand(batch, C, generator=g) < 0.1).float()
    weak[:, 0] = 1
    opt = adamw(RUN_CONFIG, method.network.parameters())   # the engines' own optimizer
    method.network.train()
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        online = method.network(rgb, flow, mask)
        out = method.losses(online, (rgb, flow, mask), weak, epoch=5, mask=mask)
        opt.zero_grad()
        out.losses.total.backward()
        opt.step()
        method.after_optimizer_step(method.network, out.momentum, weak, mask=mask)
        if i:                                   # the first step warms up allocators
            times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--batch", type=int, default=10)
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--model-dim", type=int, default=512)
    p.add_argument("--annotations", default=os.environ.get("PPL_AVVP_THUMOS14"))
    args = p.parse_args()
    median, longest, source = lengths(args.annotations)
    torch.manual_seed(0)
    net = NetworkConfig(preset="han", streams="rgb_flow", num_classes=C, rgb_dim=args.dim, flow_dim=args.dim,
                        model_dim=args.model_dim)
    method = PPL(net, PPLConfig(labeler="ppl_soft", warmup_epochs=0, key_min_prob=0.0), seed=0)
    print(f"lengths from {source}: median {median}, longest {longest} snippets; torch threads "
          f"{torch.get_num_threads()}; dims {args.dim} -> {args.model_dim}")
    rows = [(f"median ({median}), batch {args.batch}, no padding", args.batch, median, median),
            (f"median ({median}), batch {args.batch}, padded to 320", args.batch, 320, median),
            (f"training batch: {args.batch} x 320 sampled snippets", args.batch, 320, 320),
            (f"longest ({longest}), alone", 1, longest, longest)]
    for label, batch, length, valid in rows:
        seconds = step_time(method, batch, length, valid, args.dim, args.steps)
        print(f"{label:<48} {1000 * seconds:9.1f} ms/step  {batch / seconds:7.1f} videos/s")


if __name__ == "__main__":
    main()
