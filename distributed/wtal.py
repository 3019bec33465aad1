"""`ppl-avvp wtal`: THUMOS14-style W-TAL data: a synthetic generator and the one-off JOINT feature conversion.

    ppl-avvp wtal synth --out DIR [--annotations THUMOS_DIR] [--train N --test N] [--seed S] [--dim D]
    ppl-avvp wtal convert-joint --joint FILE --videonames FILE --out DIR --allow-pickle
    ppl-avvp wtal shard --annotations THUMOS_DIR --features DIR --out DIR [--protocol A|B] [--split train|test]

``synth``: :mod:`distributed.data.wtal_synth`. ``convert-joint``: the widely shared single-file I3D
array is pickled; this is the one command that unpickles, only with ``--allow-pickle``, and only to
write plain per-video ``.npy`` files (:func:`distributed.data.wtal_features.convert_joint`). ``shard``:
variable-length WebDataset shards, ``DIR/train`` and ``DIR/test`` (:mod:`distributed.data.shards.wtal`), the
layout ``train --config thumos14 data.shards=DIR`` reads.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from distributed.common.commandline import OneLineParser, int_at_least, run_command
from distributed.data.shards.manifest import DTYPES, MANIFEST_NAME
from distributed.data.shards.wtal import DEFAULT_WTAL_VIDEOS_PER_SHARD, write_wtal_shards
from distributed.data.thumos14 import PROTOCOLS
from distributed.data.wtal_features import I3D_DIM, convert_joint
from distributed.data.wtal_synth import generate

_count = int_at_least(1, "a number of videos >= 1 or 'all'", allow_all=True)
_positive_int = int_at_least(1, "a positive integer")
_seed = int_at_least(0, "an integer >= 0")


def build_parser(prog: str = "ppl-avvp wtal") -> argparse.ArgumentParser:
    p = OneLineParser(prog=prog, description="THUMOS14-style W-TAL data.")
    sub = p.add_subparsers(dest="action", required=True, metavar="{synth,convert-joint,shard}",
                           parser_class=OneLineParser)
    s = sub.add_parser("synth", help="write a synthetic W-TAL data set in the THUMOS14 layout")
    s.add_argument("--out", required=True, metavar="DIR", help="output folder (annotations/, features/, wtal_synth.json)")
    s.add_argument("--annotations", metavar="THUMOS_DIR",
                   help="real THUMOS14 annotation folder: copy its videos' layouts (default: coded statistics)")
    s.add_argument("--train", type=_count, default=None, metavar="N",
                   help="train videos (default: 200, or all of the real split)")
    s.add_argument("--test", type=_count, default=None, metavar="N",
                   help="test videos (default: 212, or all of the real split)")
    s.add_argument("--seed", type=_seed, default=0, help="random seed (default 0)")
    s.add_argument("--dim", type=_positive_int, default=I3D_DIM, metavar="D",
                   help=f"feature width of each stream (default {I3D_DIM}, I3D)")
    s.add_argument("--signal", type=float, default=3.0, help="class signal strength (default 3.0)")
    s.add_argument("--noise", type=float, default=1.0, help="noise sd (default 1.0)")
    s.add_argument("--threads", type=_positive_int, default=None, help="writer threads (default min(4, cpus))")
    s.add_argument("--overwrite", action="store_true", help="replace an existing wtal synth output folder")
    c = sub.add_parser("convert-joint", help="one-off: the pickled JOINT feature file -> one plain .npy per video")
    c.add_argument("--joint", required=True, metavar="FILE", help="the pickled single-file feature array")
    c.add_argument("--videonames", required=True, metavar="FILE", help="videoname.npy: the row order of --joint")
    c.add_argument("--out", required=True, metavar="DIR", help="output folder (<video>.npy, T x 2048)")
    c.add_argument("--allow-pickle", action="store_true",
                   help="required: unpickle --joint (it can run code: only for a file you trust)")
    c.add_argument("--dim", type=_positive_int, default=I3D_DIM, metavar="D",
                   help=f"width of each stream (default {I3D_DIM}; rows are T x 2D)")
    c.add_argument("--overwrite", action="store_true", help="replace an existing convert-joint output folder")
    w = sub.add_parser("shard", help="variable-length WebDataset shards: DIR/train and DIR/test")
    w.add_argument("--annotations", required=True, metavar="THUMOS_DIR", help="THUMOS14-layout annotation folder")
    w.add_argument("--features", required=True, metavar="DIR",
                   help="features: rgb/<video>.npy + flow/<video>.npy, or joined <video>.npy")
    w.add_argument("--out", required=True, metavar="DIR", help="output folder (train/ and test/ shard sets)")
    w.add_argument("--protocol", choices=sorted(PROTOCOLS), default="A",
                   help="test videos of protocol A (212) or B (210) (default A; docs/tal.md)")
    w.add_argument("--split", choices=("train", "test", "both"), default="both", help="which split(s) (default both)")
    w.add_argument("--videos-per-shard", type=_positive_int, default=DEFAULT_WTAL_VIDEOS_PER_SHARD, metavar="N",
                   help=f"videos per shard (default {DEFAULT_WTAL_VIDEOS_PER_SHARD})")
    w.add_argument("--dtype", choices=DTYPES, default="float16",
                   help="feature dtype on disk (default float16; float32 reproduces the feature folder exactly)")
    w.add_argument("--dim", type=_positive_int, default=I3D_DIM, metavar="D",
                   help=f"width of each stream (default {I3D_DIM})")
    w.add_argument("--workers", type=_positive_int, default=1, help="processes writing shards in parallel")
    w.add_argument("--overwrite", action="store_true", help="replace existing shard folders")
    return p


def _shard(args) -> None:
    from pathlib import Path

    from distributed.common.fsutil import check_output_dir

    splits = ("train", "test") if args.split == "both" else (args.split,)
    for split in splits:      # refuse before writing anything
        check_output_dir(Path(args.out) / split, overwrite=args.overwrite, marker=MANIFEST_NAME,
                         kind="a shard directory", label="--out")
    for split in splits:
        m = write_wtal_shards(args.annotations, args.features, Path(args.out) / split, split, protocol=args.protocol,
                              videos_per_shard=args.videos_per_shard, dim=args.dim, dtype=args.dtype,
                              overwrite=args.overwrite, workers=args.workers)
        print(f"wrote {m['num_shards']} {split} shards ({m['num_samples']} videos, {m['snippets']['min']} to "
              f"{m['snippets']['max']} snippets, {m['pattern']}) to {Path(args.out) / split}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.action == "synth":
        summary = generate(args.out, annotations=args.annotations,
                           n_train=None if args.train == "all" else args.train,
                           n_test=None if args.test == "all" else args.test, seed=args.seed, dim=args.dim,
                           signal=args.signal, noise=args.noise, overwrite=args.overwrite,
                           num_threads=args.threads)
        c = summary["counts"]
        print(f"wrote {c['train']} train / {c['test']} test videos to {summary['out_dir']} "
              f"({summary['feature_bytes'] / 2**20:.1f} MiB of features, {summary['seconds']:.1f} s)")
    elif args.action == "shard":
        _shard(args)
    else:
        summary = convert_joint(args.joint, args.videonames, args.out, allow_pickle=args.allow_pickle,
                                dim=args.dim, overwrite=args.overwrite)
        print(f"wrote {summary['videos']} plain feature files to {summary['out_dir']} "
              f"({summary['snippets']['min']} to {summary['snippets']['max']} snippets)")
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main, prog="ppl-avvp wtal"))
