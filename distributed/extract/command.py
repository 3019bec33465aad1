"""`ppl-avvp extract` / `python -m distributed.extract.command`: features from a folder or list of videos.

    ppl-avvp extract --videos DIR|LIST --out DIR --weights-dir DIR [--format llp|shards] [--segments 10]
    ppl-avvp extract --config clusters/recipes/extract_llp.yaml [--flag value ...]   (a recipe of the same flags)

``--format llp`` writes ``<out>/{vggish,res152,r2plus1d_18}/<id>.npy``; ``--format shards`` writes that
under ``<out>/features/`` and then the WebDataset shards and manifest of ``--split`` under
``<out>/shards/<split>/`` with the annotations' labels (``distributed.data.shards``). Re-running the
same command resumes: videos whose files are all there are skipped.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from distributed.common.commandline import OneLineParser, int_at_least, run_command
from distributed.common.errors import UserError


def _parser() -> argparse.ArgumentParser:
    from distributed.extract.backbones import DEFAULT_BACKBONES, REGISTRY

    p = OneLineParser(prog="ppl-avvp extract", description="Extract per-second features from raw videos "
                      "(PyAV decoding, Ray Data tasks and model actors).")
    p.add_argument("--config", help="YAML file of these options (a recipe); flags given too override it")
    p.add_argument("--videos", help="folder of videos, or a text file with one video path a line")
    p.add_argument("--out", help="output folder (resumable: existing outputs are skipped)")
    p.add_argument("--format", choices=("llp", "shards"), default="llp")
    p.add_argument("--weights-dir", help="folder with the published weights files (docs/extraction.md)")
    p.add_argument("--weights-manifest", help="JSON naming other weights files with their sha256")
    p.add_argument("--random-init", action="store_true", help="seeded random weights instead (tests, benchmarks)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backbones", default=",".join(DEFAULT_BACKBONES),
                   help=f"comma-separated, from: {', '.join(REGISTRY)}")
    p.add_argument("--segments", type=int_at_least(1, "a segment count >= 1"), default=None,
                   help="T for every video (LLP: 10); default floor(seconds) per video")
    p.add_argument("--id-chars", type=int_at_least(0, "a character count >= 0"), default=11,
                   help="a video's id is the first N characters of its file name (0: the whole name)")
    p.add_argument("--batch-size", type=int_at_least(1, "videos per model call >= 1"), default=4)
    p.add_argument("--concurrency", type=int_at_least(1, "a model actor count >= 1"), default=1)
    p.add_argument("--num-gpus", type=float, default=None, help="GPUs per model actor (default 1 if the cluster has GPUs)")
    p.add_argument("--model-cpus", type=float, default=1.0, help="CPUs per model actor")
    p.add_argument("--decode-cpus", type=float, default=1.0, help="CPUs per decoding task")
    p.add_argument("--annotations", help="--format shards: folder with the AVVP_*.csv files (labels)")
    p.add_argument("--split", choices=("train", "val", "test"), help="--format shards: the split to shard")
    p.add_argument("--shard-size", type=int_at_least(1, "videos per shard >= 1"), default=256)
    p.add_argument("--dtype", choices=("float16", "float32"), default="float16",
                   help="--format shards: feature dtype in the tars (float16 as `ppl-avvp shard`; float32 keeps "
                        "values beyond +-65504, e.g. of --random-init backbones)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = _parser()
    opts = parser.parse_args(argv)
    if opts.config:
        path = Path(opts.config)
        try:
            recipe = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise UserError(f"--config {path}: cannot be read ({' '.join(str(err).split())[:160]})") from None
        if not isinstance(recipe, dict):
            raise UserError(f"--config {path}: expected a mapping of option: value")
        flags = []
        for key, value in recipe.items():
            flag = "--" + str(key).replace("_", "-")
            if flag not in parser._option_string_actions or key == "config":
                raise UserError(f"--config {path}: unknown option {key!r}")
            if value is True:
                flags.append(flag)
            elif value not in (False, None):
                flags += [flag, str(value)]
        opts = parser.parse_args(flags + list(argv))
    for name in ("videos", "out"):
        if not getattr(opts, name):
            raise UserError(f"--{name}: required")
    if opts.format == "shards" and not (opts.annotations and opts.split):
        raise UserError("--format shards: needs --annotations DIR and --split train|val|test (the labels)")
    if not opts.random_init and not opts.weights_dir:
        raise UserError("--weights-dir: required unless --random-init is given")
    return opts


def main(argv: Sequence[str] | None = None) -> int:
    from distributed.extract import outputs, pipeline
    from distributed.extract import backbones as registry
    from distributed.extract.weights import check_weights, read_manifest

    opts = parse(list(sys.argv[1:] if argv is None else argv))
    names = [n.strip() for n in opts.backbones.split(",") if n.strip()]
    chosen = [registry.get(n) for n in names]
    manifest = read_manifest(opts.weights_manifest)
    weights_dir = Path(opts.weights_dir).absolute() if opts.weights_dir else None
    if not opts.random_init:
        check_weights(chosen, weights_dir, manifest)  # one line naming a missing or wrong file, before any work
    out = Path(opts.out).absolute()
    features = out / "features" if opts.format == "shards" else out
    videos = outputs.list_videos(opts.videos, opts.id_chars)
    run_opts = pipeline.ExtractOptions(
        out=features, backbones=names, weights_dir=weights_dir, weights_manifest=manifest,
        random_init=opts.random_init, seed=opts.seed, segments=opts.segments, batch_size=opts.batch_size,
        concurrency=opts.concurrency, num_gpus=opts.num_gpus, model_cpus=opts.model_cpus,
        decode_cpus=opts.decode_cpus, progress=not opts.quiet)
    pipeline.check_options(run_opts)
    summary = pipeline.run(videos, run_opts)
    print(f"extract: {summary['written']} written, {summary['skipped']} already there, {summary['failed']} failed "
          f"-> {features}" + (f" (see {features / outputs.FAILURES_NAME})" if summary["failed"] else ""))
    if opts.format == "shards":
        from distributed.data.shards import write_shards

        manifest_out = write_shards(features, opts.annotations, opts.split, out / "shards" / opts.split,
                                    videos_per_shard=opts.shard_size, overwrite=True, dtype=opts.dtype,
                                    num_segments=opts.segments or 10)
        print(f"extract: {manifest_out['num_shards']} shards, {manifest_out['num_samples']} samples "
              f"-> {out / 'shards' / opts.split}")
    return 0  # failed videos are in failures.jsonl; the job itself succeeded


if __name__ == "__main__":
    sys.exit(run_command(main, prog="ppl-avvp extract"))
