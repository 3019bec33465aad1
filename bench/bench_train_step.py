"""Train-step throughput on this machine's CPU (printed, never asserted).

1. samples/s of Base (ppl and han presets) and PPL at batch 16 and 128: the `ppl` preset as it ships, and with
   the other teacher precision, the prototype_pair rule, no EMA; PPL/Base step-time ratio (target <= 1.3).
2. the han preset (8 frames pooled before the linear projection) vs a straightforward HAN that
   projects all 80 frames and then pools (target >= 3x); both compute the same function.
Usage: python bench/bench_train_step.py [--steps N] [--rounds R]
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distributed.common.config import load_config  # noqa: E402
from distributed.runtime.engine import adamw  # noqa: E402
from model.config import NetworkConfig, PPLConfig  # noqa: E402
from model.network import AudioVisualParser, ParserOutput  # noqa: E402
from model.ppl import PPL  # noqa: E402

T, C = 10, 25
WARMUP_STEPS = 5
# the `ppl` preset as it ships (distributed/configs/ppl.yaml), read from the preset itself so the bench cannot
# drift from it; every key segment kept (random inputs are never confident) so the bank does its full work
RUN_CONFIG = load_config("ppl", ["data.shards=unused"])
SHIPPED = dataclasses.replace(RUN_CONFIG.ppl, key_min_prob=0.0)
OTHER_TEACHER = "float32" if SHIPPED.teacher_precision == "bfloat16" else "bfloat16"
VARIANTS = [
    ("PPL (ppl preset)", SHIPPED),
    (f"PPL, {OTHER_TEACHER} teacher", dataclasses.replace(SHIPPED, teacher_precision=OTHER_TEACHER)),
    ("PPL, prototype_pair", dataclasses.replace(SHIPPED, decision="prototype_pair", pl_evidence="prototypes")),
    ("PPL, no EMA", dataclasses.replace(SHIPPED, ema_decay=None)),
]


def batch(size: int, frames: int):
    g = torch.Generator().manual_seed(0)
    weak = (torch.rand(size, C, generator=g) < 0.1).float()
    weak[:, 0] = 1
    return (torch.rand(size, T, 128, generator=g), torch.rand(size, frames * T, 2048, generator=g),
            torch.rand(size, T, 512, generator=g)), weak


class StraightforwardHAN(AudioVisualParser):
    """HAN as usually written: project all 8 frames of every segment with fc_v, then average-pool."""

    def forward(self, audio, visual_2d, visual_3d) -> ParserOutput:
        p = self.projection
        frames = p.visual_2d(visual_2d)                                            # (B, 80, d)
        pooled = F.avg_pool1d(frames.transpose(1, 2), 8).transpose(1, 2)           # (B, 10, d)
        visual = p.visual_fusion(torch.cat([pooled, p.visual_3d(visual_3d)], -1))
        a, v = self.aggregation(p.audio(audio), visual)
        frame_prob, modality_prob, global_prob = self.mmil(torch.stack([a, v], 2))
        return ParserOutput(torch.stack([a, v], 2), frame_prob, modality_prob, global_prob)


def step_function(method: PPL, network, inputs, weak, epoch: int = 5):
    """One full training step (forward, losses, backward, AdamW, EMA and bank update), warmed up: the first
    steps of a shape or dtype pay one-off kernel set-up (oneDNN's bf16 primitives most of all)."""
    opt = adamw(RUN_CONFIG, network.parameters())   # the engines' own optimizer (fused AdamW by default)
    def one():
        out = network(*inputs)
        step = method.losses(out, inputs, weak, epoch)
        opt.zero_grad(set_to_none=True)
        step.losses.total.backward()
        opt.step()
        method.after_optimizer_step(network, step.momentum, weak)
    for _ in range(WARMUP_STEPS):
        one()
    return one


def seconds_per_step(one, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        one()
    return (time.perf_counter() - start) / steps


def time_steps(method: PPL, network, inputs, weak, steps: int, epoch: int = 5) -> float:
    return seconds_per_step(step_function(method, network, inputs, weak, epoch), steps)


def interleaved_median(steps_by_name: dict, steps: int, rounds: int) -> dict:
    """Median over ``rounds`` of each variant's seconds per step, the variants timed in turn within every round:
    a slow spell of the machine (or a variant measured first) then moves one sample of each, not one variant."""
    samples = {name: [] for name in steps_by_name}
    for _ in range(rounds):
        for name, one in steps_by_name.items():
            samples[name].append(seconds_per_step(one, steps))
    return {name: statistics.median(values) for name, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=10, help="steps per timing")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timings per variant; the median is printed")
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU; median of {args.rounds} interleaved "
          f"rounds of {args.steps} steps after {WARMUP_STEPS} warm-up steps")
    print(f"{'model':<28}{'batch':>6}{'ms/step':>10}{'samples/s':>11}")
    results = {}
    for size in (16, 128):
        inputs, weak = batch(size, frames=1)
        steps_by_name = {}
        for name, net_cfg, ppl_cfg in [
            ("Base (ppl preset)", NetworkConfig(preset="ppl"), PPLConfig(labeler="none")),
            ("Base (han preset)", NetworkConfig(preset="han"), PPLConfig(labeler="none", modality_losses=True)),
        ] + [(name, NetworkConfig(preset="ppl"), ppl_cfg) for name, ppl_cfg in VARIANTS]:
            torch.manual_seed(0)
            method = PPL(net_cfg, ppl_cfg)
            method.bank.initialized.fill_(True)
            steps_by_name[name] = step_function(method, method.network, inputs, weak)
        for name, seconds in interleaved_median(steps_by_name, args.steps, args.rounds).items():
            results[(name, size)] = seconds
            print(f"{name:<28}{size:>6}{seconds * 1e3:>10.1f}{size / seconds:>11.0f}")
    for size in (16, 128):
        for name, _ in VARIANTS:
            ratio = results[(name, size)] / results[("Base (ppl preset)", size)]
            print(f"{name + '/Base':<36} step-time ratio at batch {size:>3}: {ratio:.2f} (target <= 1.3)")

    network = PPL(NetworkConfig(preset="ppl"), PPLConfig(labeler="none")).network
    for parameter in network.parameters():
        parameter.grad = torch.randn_like(parameter)
    optimizer_ms = {}
    for fused in (True, False):
        optimizer = adamw(dataclasses.replace(RUN_CONFIG, optim=dataclasses.replace(RUN_CONFIG.optim, fused=fused)),
                          network.parameters())
        for _ in range(WARMUP_STEPS):   # the first step allocates the moments
            optimizer.step()
        optimizer_ms[fused] = 1e3 * seconds_per_step(optimizer.step, args.steps)
    print(f"AdamW step alone, {sum(p.numel() for p in network.parameters()) / 1e6:.2f} M parameters: optim.fused=true "
          f"{optimizer_ms[True]:.1f} ms, optim.fused=false {optimizer_ms[False]:.1f} ms "
          f"({optimizer_ms[False] / optimizer_ms[True]:.1f}x)")

    print("\nhan preset vs straightforward HAN (80 frames projected, then pooled), 8T x 2048 input:")
    for size in (16, 128):
        inputs, weak = batch(size, frames=8)
        cfg = NetworkConfig(preset="han")
        ours = PPL(cfg, PPLConfig(labeler="none", modality_losses=True))
        naive = PPL(cfg, PPLConfig(labeler="none", modality_losses=True))
        naive.network = StraightforwardHAN(cfg)
        naive.network.load_state_dict(ours.network.state_dict())
        ours.network.eval(), naive.network.eval()
        with torch.no_grad():
            same = torch.allclose(ours.network(*inputs).frame_prob, naive.network(*inputs).frame_prob, atol=1e-5)
        t_ours = time_steps(ours, ours.network, inputs, weak, args.steps)
        t_naive = time_steps(naive, naive.network, inputs, weak, args.steps)
        print(f"batch {size:>4}: ours {t_ours * 1e3:7.1f} ms, straightforward {t_naive * 1e3:7.1f} ms, "
              f"speed-up {t_naive / t_ours:.1f}x (target >= 3x), same output: {same}")
        layer = ours.network.projection.visual_2d
        frames = inputs[1].requires_grad_(False)
        def fwd_bwd(pool_first: bool):
            x = frames.view(size, T, 8, -1).mean(2) if pool_first else frames
            y = layer(x)
            if not pool_first:
                y = y.view(size, T, 8, -1).mean(2)
            y.sum().backward()
        t_layer = {}
        for pool_first in (True, False):
            fwd_bwd(pool_first)
            start = time.perf_counter()
            for _ in range(args.steps):
                fwd_bwd(pool_first)
            t_layer[pool_first] = (time.perf_counter() - start) / args.steps
        print(f"            the 2048->512 projection alone (forward+backward): pooled first {t_layer[True] * 1e3:.1f} ms, "
              f"80 frames {t_layer[False] * 1e3:.1f} ms, speed-up {t_layer[False] / t_layer[True]:.1f}x")


if __name__ == "__main__":
    main()
