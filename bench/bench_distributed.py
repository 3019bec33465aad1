"""Ray Train + DeepSpeed on this machine (printed, never asserted): throughput with 1 vs 2 workers and
the per-step prototype-bank all-reduce as a share of step time (target <= 5%).

Usage: python bench/bench_distributed.py [--train 800] [--epochs 2]
On a 2-core CPU box two workers share two cores, so 1 vs 2 workers measures overhead, not scaling.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")

from distributed.common.config import load_config  # noqa: E402
from distributed.data.shards import write_shards  # noqa: E402
from distributed.data.synth import generate  # noqa: E402
from distributed.train import train  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--train", type=int, default=800)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        generate(root / "data", n_train=args.train, n_val=64, n_test=64, seed=0)
        for split in ("train", "val", "test"):
            write_shards(root / "data" / "features", root / "data" / "annotations", split, root / "shards" / split,
                         videos_per_shard=32)
        rows = []
        for workers in (1, 2):
            cfg = load_config("ppl", [f"data.shards={root / 'shards'}", f"output_dir={root / f'w{workers}'}",
                                      f"distributed.num_workers={workers}", f"optim.epochs={args.epochs}",
                                      f"data.batch_size={args.batch_size}", "ppl.warmup_epochs=0",
                                      "tracking.mlflow=false"])
            last = train(cfg, mlflow=False)["history"][-1]
            rows.append((workers, last["videos_per_s"], last["step_ms"], last["bank_allreduce_share"]))
    print(f"\n{'workers':>8}{'videos/s':>10}{'ms/step':>9}{'bank all-reduce % of step':>27}")
    for w, v, ms, share in rows:
        print(f"{w:>8}{v:>10.0f}{ms:>9.1f}{share:>27.2f}")
    print(f"throughput 2 vs 1 workers: {rows[1][1] / rows[0][1]:.2f}x (2 CPU cores shared); "
          f"all-reduce share with 2 workers: {rows[1][3]:.2f}% (target <= 5%)")


if __name__ == "__main__":
    main()
