"""`ppl-avvp evaluate`: score predictions (an .npz) or a checkpoint with the LLP protocol.

    ppl-avvp evaluate --predictions preds.npz --annotations DIR --split test [--json scores.json]
    ppl-avvp evaluate --checkpoint ckpt --features DIR --annotations DIR --split val
    ppl-avvp evaluate --proposals P.json --annotations THUMOS_DIR [--protocol A]   (W-TAL: distributed/wtal_commands.py)

The predictions file holds ``video_ids`` (N,) strings (CSV filename or 11-char id, any order),
``frame_prob`` (N, T, 2, C) [audio, visual] or ``frame_prob_a`` + ``frame_prob_v`` (N, T, C), and
``global_prob`` (N, C). Every video of the split must appear exactly once.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from distributed.common.commandline import OneLineParser, run_command
from distributed.common.errors import ConfigError, DataError, UserError
from distributed.common.fsutil import check_output_path
from distributed.data.llp import LLP_NUM_SEGMENTS, LLPSplit, load_split, split_index
from model.metrics import SCORE_KEYS, llp_scores

_COLUMNS = ("Audio", "Visual", "Audio-Visual", "Type@AV", "Event@AV")
_SUFFIXES = ("a", "v", "av", "type", "event")


def format_table(scores: dict, title: str | None = None) -> str:
    """The ten numbers as the papers print them: rows Segment / Event, one decimal."""
    width = max(len(c) for c in _COLUMNS) + 2
    lines = [title] if title else []
    lines.append(" " * 9 + "".join(f"{c:>{width}}" for c in _COLUMNS))
    for row, prefix in (("Segment", "seg"), ("Event", "evt")):
        lines.append(f"{row:<9}" + "".join(f"{scores[f'{prefix}_{s}']:>{width}.1f}" for s in _SUFFIXES))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# predictions: load, check, align to the split
# ---------------------------------------------------------------------------------------------

def _field(source: str, npz, name: str) -> np.ndarray:
    try:
        return npz[name]
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:   # object arrays need pickle: refused
        raise DataError(f"{source}: {name}: cannot load ({err})") from None


def load_predictions(path: str | os.PathLike) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``(video_ids, frame_prob (N, T, 2, C), global_prob (N, C))`` from an .npz, never unpickling."""
    source = str(path)
    if not Path(path).is_file():
        raise DataError(f"{source}: predictions file not found")
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise DataError(f"{source}: not a readable .npz file ({err})") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise DataError(f"{source}: expected an .npz archive, got a single array")
    with npz:
        keys = set(npz.files)
        for name in ("video_ids", "global_prob"):
            if name not in keys:
                raise DataError(f"{source}: missing field {name!r} (has {sorted(keys)})")
        if "frame_prob" in keys:
            frame_prob = _field(source, npz, "frame_prob")
        elif {"frame_prob_a", "frame_prob_v"} <= keys:
            audio, visual = _field(source, npz, "frame_prob_a"), _field(source, npz, "frame_prob_v")
            if audio.shape != visual.shape or audio.ndim != 3:
                raise DataError(f"{source}: frame_prob_a / frame_prob_v: expected two (N, T, C) arrays, "
                                f"got {audio.shape} and {visual.shape}")
            frame_prob = np.stack([audio, visual], axis=2)
        else:
            raise DataError(f"{source}: missing field 'frame_prob' (or 'frame_prob_a' + 'frame_prob_v')")
        ids = _field(source, npz, "video_ids")
        global_prob = _field(source, npz, "global_prob")
    if ids.dtype.kind not in "US" or ids.ndim != 1:
        raise DataError(f"{source}: video_ids: expected a 1-D array of strings, got {ids.dtype} {ids.shape}")
    video_ids = [x.decode() if isinstance(x, bytes) else str(x) for x in ids.tolist()]
    return video_ids, frame_prob, global_prob


def _check_probabilities(source: str, name: str, x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Shape, NaN and [0, 1] checks; the dtype is kept, so thresholds compare as the model's would."""
    if x.dtype.kind not in "biuf":
        raise DataError(f"{source}: {name}: expected numbers, got dtype {x.dtype}")
    if x.shape != shape:
        raise DataError(f"{source}: {name}: expected shape {shape}, got {x.shape}")
    if x.dtype.kind == "f" and np.isnan(x).any():
        raise DataError(f"{source}: {name}: contains NaN")
    if x.size and (x.min() < 0.0 or x.max() > 1.0):
        raise DataError(f"{source}: {name}: probabilities must lie in [0, 1] "
                        f"(found {x.min():.4g} .. {x.max():.4g})")
    return x


def align_predictions(source: str, split: LLPSplit, video_ids: Sequence[str], frame_prob, global_prob
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Reorder predictions to the split's row order; every split video exactly once, nothing else."""
    frame_prob, global_prob = np.asarray(frame_prob), np.asarray(global_prob)
    n = len(video_ids)
    t, c = split.dense_audio.shape[1], len(split.classes)
    frame_prob = _check_probabilities(source, "frame_prob", frame_prob, (n, t, 2, c))
    global_prob = _check_probabilities(source, "global_prob", global_prob, (n, c))

    index = split_index(split)
    rows = np.array([index.get(v, -1) for v in video_ids], dtype=np.int64)
    unknown = [v for v, r in zip(video_ids, rows) if r < 0]
    if unknown:
        raise DataError(f"{source}: video_ids: {len(unknown)} not in the {split.split} split "
                        f"(e.g. {unknown[0]!r})")
    seen = np.bincount(rows, minlength=len(split))
    if (seen > 1).any():
        row = int(np.argmax(seen > 1))
        raise DataError(f"{source}: video_ids: {split.filenames[row]!r} appears {seen[row]} times")
    if (seen == 0).any():
        row = int(np.argmax(seen == 0))
        raise DataError(f"{source}: video_ids: {int((seen == 0).sum())} video(s) of the {split.split} "
                        f"split missing (e.g. {split.filenames[row]!r})")
    order = np.argsort(rows)
    return frame_prob[order], global_prob[order]


def _predict_from_checkpoint(args: argparse.Namespace) -> tuple[list[str], np.ndarray, np.ndarray]:
    from distributed.predict import predict_split   # heavy (torch): only when a checkpoint is scored

    return predict_split(checkpoint=args.checkpoint, features=args.features,
                         annotations=args.annotations, split=args.split)


def _write_json_atomic(path: Path, payload: dict) -> None:
    """Temp file in the same folder + os.replace: readers never see a half-written file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise UserError(f"--json {path}: cannot write it ({' '.join(str(err).split())})") from None
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(payload, fh, indent=2)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------------------------
# command
# ---------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="ppl-avvp evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--predictions", metavar="FILE.npz", help="predictions to score (see module doc)")
    src.add_argument("--checkpoint", metavar="PATH", help="score a trained checkpoint (needs --features)")
    p.add_argument("--features", metavar="DIR", help="LLP feature folder, with --checkpoint")
    p.add_argument("--annotations", metavar="DIR", required=True, help="folder with the LLP annotation CSVs")
    p.add_argument("--split", choices=("val", "test"), default="test", help="split to score (default: test)")
    p.add_argument("--json", metavar="FILE", help="also write the ten numbers (percent) as JSON")
    p.add_argument("--threshold", type=float, default=0.5, help="segment and video-level threshold (0.5)")
    p.add_argument("--num-segments", type=int, default=LLP_NUM_SEGMENTS, help="T, segments per video (10)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from distributed.wtal_commands import evaluate_main, is_wtal_invocation

    argv = list(sys.argv[1:] if argv is None else argv)
    if is_wtal_invocation(argv):          # THUMOS14 proposals or an RGB + flow checkpoint
        return evaluate_main(argv)
    args = build_parser().parse_args(argv)
    if not 0.0 < args.threshold < 1.0:
        raise ConfigError(f"--threshold: must lie strictly between 0 and 1, got {args.threshold}")
    if args.checkpoint and not args.features:
        raise ConfigError("--features: required with --checkpoint")
    if args.json:
        check_output_path(Path(args.json), "--json", folder=False)
    split = load_split(args.annotations, args.split, num_segments=args.num_segments)

    if args.checkpoint:
        source = f"checkpoint {args.checkpoint}"
        video_ids, frame_prob, global_prob = _predict_from_checkpoint(args)
    else:
        source = args.predictions
        video_ids, frame_prob, global_prob = load_predictions(args.predictions)
    frame_prob, global_prob = align_predictions(source, split, list(video_ids), frame_prob, global_prob)

    scores = llp_scores(frame_prob, global_prob, split.dense_audio, split.dense_visual, args.threshold)
    title = f"LLP {args.split}: {len(split)} videos, threshold {args.threshold:g} ({source})"
    print(format_table(scores, title))
    if args.json:
        _write_json_atomic(Path(args.json), {k: scores[k] for k in SCORE_KEYS})
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
