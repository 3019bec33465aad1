"""Vectorised W-TAL evaluation (mAP@tIoU 0.1..0.7) vs the per-class loop on a THUMOS14-size test split.

    python bench/bench_tal_eval.py [--proposals 300] [--repeats 7] [--loop-repeats 2] [--annotations DIR]

Ground truth: the real 212-video THUMOS14 test split in snippet units (protocol A) when
``--annotations`` or PPL_AVVP_THUMOS14_DIR names the folder, else a synthetic split of the same
size and shape (212 videos, 20 classes, ~3,400 instances). Predictions: synthetic, ``--proposals``
per video,
mostly near the truth of the video's classes, the rest anywhere, with some tied scores. Checks both
implementations give identical numbers and prints their times and the speed-up; then times
``video_proposals`` on a median-length and the longest video. Timings are printed, never asserted.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from model.localization import (TIOU_THRESHOLDS, Segments, detection_ap, evaluate_localization,  # noqa: E402
                                video_proposals)
from oracle_tal import oracle_detection_ap  # noqa: E402

NUM_CLASSES = 20


def synthetic_ground_truth(rng, n_videos: int = 212) -> Segments:
    """Shaped like the THUMOS14 test split: 13..2,614 snippets a video, one class in most videos
    (84% one, 15% two, 1% three), a heavy-tailed number of instances (median ~9, mean ~16, up to
    a few hundred in one video) of a few snippets each (median ~5)."""
    video, label, start, end = [], [], [], []
    for v in range(n_videos):
        length = int(rng.integers(13, 2615))
        classes = rng.choice(NUM_CLASSES, size=int(rng.choice([1, 2, 3], p=[0.84, 0.15, 0.01])), replace=False)
        for _ in range(1 + min(int(rng.lognormal(2.1, 1.1)), 250)):
            s = int(rng.integers(0, length))
            video.append(v)
            label.append(int(rng.choice(classes)))
            start.append(s)
            end.append(min(length, s + 1 + int(rng.geometric(0.17))))
    return Segments(np.array(video), np.array(label), np.array(start, float), np.array(end, float))


def synthetic_predictions(rng, gt: Segments, per_video: int) -> Segments:
    n_videos = int(gt.video.max()) + 1
    near = rng.integers(0, len(gt), size=n_videos * per_video * 2 // 3)
    jitter = rng.integers(-6, 7, size=(len(near), 2))
    near_start = np.maximum(0, gt.start[near] + jitter[:, 0])
    near_end = np.maximum(near_start + 1, gt.end[near] + jitter[:, 1])
    n_far = n_videos * per_video - len(near)
    far_video = rng.integers(0, n_videos, n_far)
    own = gt.label[rng.integers(0, len(gt), n_far)]                     # classes that occur in the split
    far_start = rng.integers(0, 2600, n_far).astype(float)
    score = np.concatenate([rng.uniform(0.3, 1.0, len(near)), rng.uniform(0.0, 0.7, n_far)])
    score[rng.uniform(size=len(score)) < 0.2] = 0.5                      # a block of tied scores
    return Segments(np.concatenate([gt.video[near], far_video]), np.concatenate([gt.label[near], own]),
                    np.concatenate([near_start, far_start]),
                    np.concatenate([near_end, far_start + rng.integers(1, 60, n_far)]), score)


def _best_time(fn, repeats):
    """Best wall-clock and CPU seconds over ``repeats`` runs (CPU time is steadier on a shared machine)."""
    best_wall, best_cpu, result = float("inf"), float("inf"), None
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn()
        best_wall = min(best_wall, time.perf_counter() - wall)
        best_cpu = min(best_cpu, time.process_time() - cpu)
    return best_wall, best_cpu, result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--proposals", type=int, default=300, help="predictions per video")
    p.add_argument("--repeats", type=int, default=7, help="best of this many runs of the vectorised version")
    p.add_argument("--loop-repeats", type=int, default=2, help="best of this many runs of the oracle loop")
    p.add_argument("--annotations", default=os.environ.get("PPL_AVVP_THUMOS14_DIR"),
                   help="THUMOS14 annotation folder (real ground truth); default $PPL_AVVP_THUMOS14_DIR")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    if args.annotations:
        from distributed.data.thumos14 import load_thumos14
        gt = load_thumos14(args.annotations, "test", "wtalc").ground_truth("snippets")
        source = f"real THUMOS14 test split ({args.annotations})"
    else:
        gt = synthetic_ground_truth(rng)
        source = "synthetic THUMOS14-size split"
    pred = synthetic_predictions(rng, gt, args.proposals)
    print(f"ground truth: {source}: {int(gt.video.max()) + 1} videos, {len(gt)} instances, {NUM_CLASSES} classes")
    print(f"predictions:  {len(pred)} ({args.proposals} a video), tIoU thresholds {list(TIOU_THRESHOLDS)}")

    wall_vec, cpu_vec, ap = _best_time(lambda: detection_ap(gt, pred, NUM_CLASSES), args.repeats)
    wall_loop, cpu_loop, ap_loop = _best_time(
        lambda: oracle_detection_ap(gt, pred, NUM_CLASSES, TIOU_THRESHOLDS), args.loop_repeats)
    identical = bool(np.array_equal(ap, ap_loop, equal_nan=True))
    print(f"vectorised detection_ap: {wall_vec * 1e3:9.1f} ms wall {cpu_vec * 1e3:9.1f} ms CPU"
          f"  (best of {args.repeats})")
    print(f"per-class oracle loop:   {wall_loop * 1e3:9.1f} ms wall {cpu_loop * 1e3:9.1f} ms CPU"
          f"  (best of {args.loop_repeats})")
    print(f"speed-up:                {wall_loop / wall_vec:9.1f}x wall {cpu_loop / cpu_vec:8.1f}x CPU  (target >= 50x)")
    print(f"numbers identical:       {identical}  (max |difference| {np.nanmax(np.abs(ap - ap_loop)):.3g})")
    print(evaluate_localization(gt, pred, NUM_CLASSES).table())
    for length in (250, 2614):                        # about the median and the longest THUMOS14 video
        cas = np.clip(np.cumsum(rng.normal(0, 0.1, (length, NUM_CLASSES)), axis=0) % 1.0, 0, 1)
        video_scores = np.where(np.arange(NUM_CLASSES) < 2, 0.9, 0.05)            # two classes localised
        wall, _, found = _best_time(lambda: video_proposals(cas, video_scores), 3)
        print(f"video_proposals, {length:4d} snippets x 2 classes: {wall * 1e3:7.1f} ms, {len(found)} proposals")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
