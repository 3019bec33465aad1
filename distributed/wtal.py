"""`ppl-avvp wtal`: THUMOS14-style W-TAL data: a synthetic generator and the one-off JOINT feature conversion.

    ppl-avvp wtal synth --out DIR [--annotations THUMOS_DIR] [--train N --test N] [--seed S] [--dim D]
    ppl-avvp wtal convert-joint --joint FILE --videonames FILE --out DIR --allow-pickle

``synth``: :mod:`distributed.data.wtal_synth`. ``convert-joint``: the widely shared single-file I3D
array is pickled; this is the one command that unpickles, only with ``--allow-pickle``, and only to
write plain per-video ``.npy`` files (:func:`distributed.data.wtal_features.convert_joint`).
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from distributed.common.commandline import OneLineParser, int_at_least, run_command
from distributed.data.wtal_features import I3D_DIM, convert_joint
from distributed.data.wtal_synth import generate

_count = int_at_least(1, "a number of videos >= 1 or 'all'", allow_all=True)
_positive_int = int_at_least(1, "a positive integer")
_seed = int_at_least(0, "an integer >= 0")


def build_parser(prog: str = "ppl-avvp wtal") -> argparse.ArgumentParser:
    p = OneLineParser(prog=prog, description="THUMOS14-style W-TAL data.")
    sub = p.add_subparsers(dest="action", required=True, metavar="{synth,convert-joint}",
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
    return p


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
    else:
        summary = convert_joint(args.joint, args.videonames, args.out, allow_pickle=args.allow_pickle,
                                dim=args.dim, overwrite=args.overwrite)
        print(f"wrote {summary['videos']} plain feature files to {summary['out_dir']} "
              f"({summary['snippets']['min']} to {summary['snippets']['max']} snippets)")
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main, prog="ppl-avvp wtal"))
