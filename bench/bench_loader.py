"""Shard loader benchmark: throughput and memory while streaming (printed, not asserted).

    python bench/bench_loader.py [--videos 4000] [--batch-size 64] [--small 10000] [--large 200000]

1. Writes pooled float16 shards of ``--videos`` synthetic LLP-shaped videos (features generated in
   memory, no .npy files) to a temporary folder.
2. Throughput: one process (``num_workers=0``), one full epoch of the train loader (decode +
   float32 cast + collate), videos/s; and the same for the eval loader.
3. Memory: in two fresh subprocesses, stream ``--small`` and ``--large`` videos through the same
   shards (``resample=True``, fixed ``samples_per_epoch``) and print each one's peak RSS
   (``ru_maxrss``) and the ratio. The reader holds at most one shuffle block of raw samples, so
   the peak should not grow with the number of videos streamed (target: ratio within 1.10).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from distributed.data.llp import LLP_CLASSES  # noqa: E402
from distributed.data.shards import (  # noqa: E402
    make_eval_loader, make_train_loader, write_shards_from_arrays,
)

T, C = 10, len(LLP_CLASSES)
SHAPES = {"audio": (T, 128), "visual_2d": (T, 2048), "visual_3d": (T, 512)}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _current_rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def write_bench_shards(out: Path, videos: int, per_shard: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    ids = [f"b{i:010d}" for i in range(videos)]
    weak = (rng.random((videos, C)) < 0.08).astype(np.float32)

    def features(row: int, vid: str) -> dict:
        r = np.random.default_rng([seed, row])
        return {k: r.standard_normal(s, dtype=np.float32) for k, s in SHAPES.items()}

    return write_shards_from_arrays(out, "train", ids, features, weak, LLP_CLASSES, shapes=SHAPES,
                                    videos_per_shard=per_shard, dtype="float16")


def stream(shards: Path, samples: int, batch_size: int) -> dict:
    """Child process: stream ``samples`` videos, report peak RSS."""
    before = _current_rss_mb()
    t0 = time.perf_counter()
    loader = make_train_loader(shards, batch_size, 0, 1, epoch=0, seed=0, resample=True,
                               samples_per_epoch=samples)
    n = 0
    for batch in loader:
        n += len(batch["video_id"])
    return {"videos": n, "seconds": time.perf_counter() - t0, "rss_before_mb": before,
            "peak_rss_mb": _peak_rss_mb()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--videos", type=int, default=4000)
    p.add_argument("--per-shard", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--small", type=int, default=10_000)
    p.add_argument("--large", type=int, default=200_000)
    p.add_argument("--stream", type=int, help=argparse.SUPPRESS)     # child mode
    p.add_argument("--shards", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.stream:
        print(json.dumps(stream(args.shards, args.stream, args.batch_size)))
        return

    with tempfile.TemporaryDirectory(prefix="bench-shards-") as tmp:
        shards = Path(tmp) / "train"
        t0 = time.perf_counter()
        m = write_bench_shards(shards, args.videos, args.per_shard)
        size = sum(s["bytes"] for s in m["shards"])
        dt = time.perf_counter() - t0
        print(f"write : {m['num_samples']} videos, {m['num_shards']} shards, {size / 1e6:.0f} MB "
              f"(float16, pooled) in {dt:.1f} s = {m['num_samples'] / dt:.0f} videos/s")

        for name, make in (("train", lambda: make_train_loader(shards, args.batch_size, 0, 1, epoch=0)),
                           ("eval ", lambda: make_eval_loader(shards, args.batch_size, 0, 1))):
            best = 0.0
            for _ in range(2):   # second pass reads from the page cache, as a warm epoch does
                loader = make()
                t0 = time.perf_counter()
                n = sum(len(b["video_id"]) for b in loader)
                best = max(best, n / (time.perf_counter() - t0))
            print(f"{name} loader, 1 process, batch {args.batch_size}: {best:.0f} videos/s "
                  f"({best * size / m['num_samples'] / 1e6:.0f} MB/s of shard data)")

        peaks = {}
        for n in (args.small, args.large):
            out = subprocess.run([sys.executable, __file__, "--stream", str(n), "--shards", str(shards),
                                  "--batch-size", str(args.batch_size)],
                                 check=True, capture_output=True, text=True).stdout
            res = json.loads(out.strip().splitlines()[-1])
            peaks[n] = res["peak_rss_mb"]
            print(f"stream {res['videos']:>7} videos (resampled): peak RSS {res['peak_rss_mb']:.0f} MB "
                  f"(after imports {res['rss_before_mb']:.0f} MB), {res['videos'] / res['seconds']:.0f} videos/s")
        ratio = peaks[args.large] / peaks[args.small]
        print(f"peak RSS ratio {args.large} / {args.small} videos = {ratio:.3f} "
              f"({'flat' if ratio <= 1.10 else 'GROWS'}; target <= 1.10)")


if __name__ == "__main__":
    main()
