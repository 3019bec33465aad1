"""`ppl-avvp synth` / `python -m distributed.synth`: write a synthetic LLP-layout dataset.

    ppl-avvp synth --out DIR [--annotations LLP_DIR] [--train N --val N --test N] [--seed S]
                   [--frames-per-segment 8] [--pool] [--signal X --noise X --context X] [--overwrite]

The generator is ``distributed.data.synth`` (label and layout models: ``data.synth_labels``, feature
model: ``data.synth_features``).
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from distributed.common.commandline import OneLineParser, int_at_least, run_command
from distributed.data.features import FeatureSpec
from distributed.data.synth import generate
from distributed.data.synth_features import SynthParams

_count = int_at_least(0, "a number of videos >= 0 or 'all'", allow_all=True)
_positive_int = int_at_least(1, "a positive integer")
_seed = int_at_least(0, "an integer >= 0")


def build_parser(prog: str = "ppl-avvp synth") -> argparse.ArgumentParser:
    p = OneLineParser(prog=prog, description="Write a synthetic dataset in the LLP layout (annotations + features).")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (annotations/, features/, synth.json)")
    p.add_argument("--annotations", metavar="LLP_DIR",
                   help="real LLP annotation folder: use its ids, weak labels and val/test dense truth")
    p.add_argument("--train", type=_count, default=1000, metavar="N", help="train videos, or 'all' (default 1000)")
    p.add_argument("--val", type=_count, default=200, metavar="N", help="val videos, or 'all' (default 200)")
    p.add_argument("--test", type=_count, default=200, metavar="N", help="test videos, or 'all' (default 200)")
    p.add_argument("--seed", type=_seed, default=0, help="random seed (default 0)")
    p.add_argument("--segments", type=_positive_int, default=FeatureSpec.num_segments, metavar="T",
                   help="segments (seconds) per video (default 10, LLP)")
    p.add_argument("--frames-per-segment", type=_positive_int, default=FeatureSpec.frames_per_segment,
                   metavar="F", help="res152 frames per segment (default 8, LLP)")
    p.add_argument("--pool", action="store_true",
                   help="store res152 with each segment's frames averaged ((T, 2048): 1/F of the disk)")
    p.add_argument("--signal", type=float, default=SynthParams.signal,
                   help=f"class signal strength (default {SynthParams.signal}; higher = easier)")
    p.add_argument("--noise", type=float, default=SynthParams.noise,
                   help=f"noise sd (default {SynthParams.noise}; higher = harder)")
    p.add_argument("--context", type=float, default=SynthParams.context,
                   help=f"class leakage into every second of a video, 0..1 (default {SynthParams.context})")
    p.add_argument("--threads", type=_positive_int, default=None, help="writer threads (default min(4, cpus))")
    p.add_argument("--overwrite", action="store_true", help="replace an existing synth output folder")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    spec = FeatureSpec(num_segments=args.segments, frames_per_segment=args.frames_per_segment)
    summary = generate(args.out, annotations=args.annotations, n_train=args.train, n_val=args.val,
                       n_test=args.test, seed=args.seed, spec=spec, signal=args.signal,
                       noise=args.noise, context=args.context, pool=args.pool,
                       overwrite=args.overwrite, num_threads=args.threads)
    c = summary["counts"]
    print(f"wrote {c['train']} train / {c['val']} val / {c['test']} test videos to {summary['out_dir']} "
          f"({summary['feature_bytes'] / 2**20:.1f} MiB of features, {summary['seconds']:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main, prog="ppl-avvp synth"))
