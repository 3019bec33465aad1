"""`ppl-avvp shard` / `python -m distributed.shards`: write or verify WebDataset shards of one split.

    ppl-avvp shard --features DIR --annotations DIR --split train --out DIR [--num-shards N]
    ppl-avvp shard verify DIR [--deep]

The writer, the manifest and integrity check, and the reader are the ``distributed.data.shards`` package.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from distributed.common.commandline import OneLineParser, run_command
from distributed.common.errors import UserError
from distributed.data.shards import (DEFAULT_VIDEOS_PER_SHARD, DTYPES, load_manifest, verify_shards,
                                     write_shards)


def _write_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="ppl-avvp shard", description="Write WebDataset shards of one LLP-layout split "
                "(`ppl-avvp shard verify DIR` checks them).")
    p.add_argument("--features", required=True, help="feature folder (vggish/, res152/, r2plus1d_18/)")
    p.add_argument("--annotations", required=True, help="folder with the AVVP_*.csv files")
    p.add_argument("--split", required=True, choices=("train", "val", "test"))
    p.add_argument("--out", required=True, help="output folder (created atomically)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--shard-size", type=int, default=DEFAULT_VIDEOS_PER_SHARD,
                      help=f"videos per shard (default {DEFAULT_VIDEOS_PER_SHARD})")
    size.add_argument("--num-shards", type=int, default=None, help="number of balanced shards instead")
    p.add_argument("--no-pool", action="store_true", help="keep the 8 res152 frames per segment")
    p.add_argument("--dtype", choices=DTYPES, default="float16", help="feature dtype on disk")
    p.add_argument("--num-segments", type=int, default=10)
    p.add_argument("--seed", type=int, default=0, help="seed of the one-off video shuffle before sharding")
    p.add_argument("--no-shuffle", action="store_true", help="keep CSV order")
    p.add_argument("--workers", type=int, default=1, help="processes writing shards in parallel")
    p.add_argument("--overwrite", action="store_true", help="replace an existing shard folder")
    return p


def _verify_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="ppl-avvp shard verify", description="Check shards against their manifest.")
    p.add_argument("dir", help="shard folder (with manifest.json)")
    p.add_argument("--deep", action="store_true", help="also decode every sample and check shapes")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "verify":
        opts = _verify_parser().parse_args(args[1:])
        manifest = load_manifest(opts.dir)
        problems = verify_shards(opts.dir, deep=opts.deep)
        for line in problems:
            print(f"ppl-avvp shard verify: {line}", file=sys.stderr)
        if problems:
            return 1
        print(f"ok: {manifest['num_shards']} shards, {manifest['num_samples']} samples in {opts.dir}")
        return 0
    opts = _write_parser().parse_args(args)
    for name in ("features", "annotations"):
        if not Path(getattr(opts, name)).is_dir():
            raise UserError(f"--{name}: {getattr(opts, name)} is not a directory")
    manifest = write_shards(
        opts.features, opts.annotations, opts.split, opts.out,
        videos_per_shard=opts.shard_size, num_shards=opts.num_shards, pool_frames=not opts.no_pool,
        dtype=opts.dtype, overwrite=opts.overwrite, num_segments=opts.num_segments,
        shuffle_seed=None if opts.no_shuffle else opts.seed, workers=opts.workers)
    print(f"wrote {manifest['num_shards']} shards ({manifest['num_samples']} videos, "
          f"{manifest['pattern']}) to {opts.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main, prog="ppl-avvp shard"))
