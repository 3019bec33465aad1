"""Vectorised LLP metrics vs the per-video reference loop on a test-sized split.

    python bench/bench_eval.py [--videos 1200] [--repeats 5]

Builds a random 1,200-video split (T = 10, C = 25) with LLP-like sparse truth (1-3 classes per
video, runs of several seconds), checks both implementations give identical numbers and prints
their times and the speed-up. Timings are printed, never asserted.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from model.metrics import llp_scores  # noqa: E402
from oracle_metrics import oracle_llp_scores  # noqa: E402


def _runs(rng, n, t, c, classes, p_on, max_len):
    """(n, t, c) uint8 with a few runs per active class, like LLP's dense annotations."""
    truth = np.zeros((n, t, c), dtype=np.uint8)
    for _ in range(2):
        start = rng.integers(0, t, size=(n, c))
        length = rng.integers(1, max_len + 1, size=(n, c))
        on = classes & (rng.uniform(size=(n, c)) < p_on)
        seg = np.arange(t)[None, :, None]
        truth |= (on[:, None, :] & (seg >= start[:, None, :]) & (seg < (start + length)[:, None, :])).astype(np.uint8)
    return truth


def make_split(n: int = 1200, t: int = 10, c: int = 25, seed: int = 0):
    rng = np.random.default_rng(seed)
    classes = np.zeros((n, c), dtype=bool)
    for k in range(3):                                               # 1-3 classes per video
        pick = rng.integers(0, c, n)
        classes[np.arange(n), pick] |= (k == 0) | (rng.uniform(size=n) < 0.4)
    dense_audio = _runs(rng, n, t, c, classes, 0.9, t)
    dense_visual = _runs(rng, n, t, c, classes, 0.6, t)
    # predictions: noisy versions of the truth, gated by a noisy video-level probability
    truth = np.stack([dense_audio, dense_visual], axis=2).astype(np.float64)
    frame_prob = np.clip(0.45 * truth + 0.6 * rng.uniform(size=truth.shape), 0.0, 1.0)
    global_prob = np.clip(0.5 * classes + 0.55 * rng.uniform(size=(n, c)), 0.0, 1.0)
    return frame_prob, global_prob, dense_audio, dense_visual


def _best_time(fn, repeats):
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", type=int, default=1200)
    p.add_argument("--repeats", type=int, default=5, help="best of this many runs of the vectorised version")
    args = p.parse_args(argv)

    split = make_split(args.videos)
    n, t, _, c = split[0].shape
    print(f"split: {n} videos, T={t}, C={c}, truth density audio {split[2].mean():.3f} visual {split[3].mean():.3f}")
    t_vec, vec = _best_time(lambda: llp_scores(*split), args.repeats)
    t_loop, loop = _best_time(lambda: oracle_llp_scores(*split), 1)
    identical = vec == loop
    print(f"vectorised llp_scores: {t_vec * 1e3:9.2f} ms  (best of {args.repeats})")
    print(f"per-video oracle loop: {t_loop * 1e3:9.2f} ms")
    print(f"speed-up:              {t_loop / t_vec:9.1f}x  (target >= 100x)")
    print(f"numbers identical:     {identical}")
    print("  " + "  ".join(f"{k}={v:.4f}" for k, v in vec.items()))
    if not identical:
        for k in vec:
            if vec[k] != loop[k]:
                print(f"  MISMATCH {k}: vectorised {vec[k]!r} oracle {loop[k]!r}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
