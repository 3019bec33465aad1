"""`ppl-avvp predict`: per-video events (class, modality, onset, offset, score) as JSON, and a
timeline picture per video (audio and visual rows, predicted vs true where truth exists).

    ppl-avvp predict --checkpoint runs/ppl/best_model.pt --features DIR --out preds/
                     [--annotations DIR --split test] [--videos ID,ID] [--pictures 20]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from distributed.common.commandline import OneLineParser, run_command
from distributed.common.config import model_config_from_dict
from distributed.common.errors import ConfigError, DataError, UserError
from distributed.common.fsutil import check_output_path
from distributed.runtime.checkpoint import load_model, load_module_state
from distributed.data.features import FeatureSpec, load_features
from distributed.data.llp import LLP_CLASSES, load_split
from model.config import NetworkConfig
from model.metrics import binarize_predictions, extract_events
from model.network import AudioVisualParser

MODALITIES = ("audio", "visual", "audio_visual")


def load_network(checkpoint: str | os.PathLike) -> tuple[AudioVisualParser, dict]:
    """The parser a model checkpoint describes; a config or weights that do not fit are one line naming it."""
    payload = load_model(checkpoint)
    section = payload["config"].get("model")
    if not isinstance(section, dict):
        raise DataError(f"{checkpoint}: config has no 'model' section")
    try:
        net_cfg = model_config_from_dict(section)
    except ConfigError as err:
        raise DataError(f"{checkpoint}: its config: {err}") from None
    network = AudioVisualParser(net_cfg)
    load_module_state(network, payload["network"], f"{checkpoint}: network")
    return network.eval(), payload


@torch.no_grad()
def predict_features(network: AudioVisualParser, arrays: dict[str, np.ndarray], batch_size: int = 256):
    frame, video = [], []
    n = len(arrays["audio"])
    for start in range(0, n, batch_size):
        part = [torch.from_numpy(arrays[k][start:start + batch_size]) for k in ("audio", "visual_2d", "visual_3d")]
        out = network(*part)
        frame.append(out.frame_prob.numpy())
        video.append(out.global_prob.numpy())
    return np.concatenate(frame), np.concatenate(video)


def _spec(cfg: NetworkConfig) -> FeatureSpec:
    return FeatureSpec(num_segments=cfg.num_segments, audio_dim=cfg.audio_dim, visual_2d_dim=cfg.visual_2d_dim,
                       visual_3d_dim=cfg.visual_3d_dim)


def predict_split(checkpoint, features, annotations, split) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Score a split's videos with a checkpoint: (video_ids, frame_prob (N,T,2,C), global_prob (N,C))."""
    network, _ = load_network(checkpoint)
    ids = load_split(annotations, split, num_segments=network.cfg.num_segments).video_ids
    frame_prob, global_prob = predict_features(network, load_features(features, ids, _spec(network.cfg)))
    return ids, frame_prob, global_prob


def video_events(frame_prob: np.ndarray, global_prob: np.ndarray, classes: Sequence[str],
                 threshold: float = 0.5) -> list[dict]:
    """One video's events: maximal runs of positive segments (evaluation rule), scored by mean probability."""
    pred_a, pred_v = binarize_predictions(frame_prob[None], global_prob[None], threshold)
    binary = {"audio": pred_a[0], "visual": pred_v[0], "audio_visual": pred_a[0] & pred_v[0]}
    prob = {"audio": frame_prob[:, 0], "visual": frame_prob[:, 1], "audio_visual": frame_prob.min(axis=1)}
    events = []
    for modality in MODALITIES:
        starts, ends, valid = extract_events(binary[modality].T)           # (C, K)
        for c, k in zip(*np.nonzero(valid)):
            onset, offset = int(starts[c, k]), int(ends[c, k])
            events.append({"class": classes[c], "modality": modality, "onset": onset, "offset": offset,
                           "score": round(float(prob[modality][onset:offset, c].mean()), 4)})
    return sorted(events, key=lambda e: (e["onset"], e["modality"], e["class"]))


def timeline_picture(path: Path, video: str, frame_prob: np.ndarray, global_prob: np.ndarray,
                     classes: Sequence[str], truth: tuple[np.ndarray, np.ndarray] | None, threshold: float = 0.5):
    """Audio and visual rows per class, like the seed's Figure 1: truth as grey bands, prediction in colour."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pred_a, pred_v = binarize_predictions(frame_prob[None], global_prob[None], threshold)
    preds = (pred_a[0], pred_v[0])
    involved = set(np.nonzero(preds[0].any(0) | preds[1].any(0))[0])
    if truth is not None:
        involved |= set(np.nonzero(truth[0].any(0) | truth[1].any(0))[0])
    rows = sorted(involved) or [int(np.argmax(global_prob))]
    steps = frame_prob.shape[0]
    fig, axes = plt.subplots(2, 1, figsize=(8, 1.0 + 0.45 * len(rows) * 2), sharex=True)
    for m, (ax, name) in enumerate(zip(axes, ("Audio", "Visual"))):
        for y, c in enumerate(rows):
            if truth is not None:
                for t in np.nonzero(truth[m][:, c])[0]:
                    ax.broken_barh([(t, 1)], (y - 0.4, 0.8), color="0.8")
            for t in np.nonzero(preds[m][:, c])[0]:
                ax.broken_barh([(t + 0.05, 0.9)], (y - 0.2, 0.4), color="tab:blue" if m == 0 else "tab:orange")
        ax.set_yticks(range(len(rows)), [classes[c] for c in rows], fontsize=8)
        ax.set_ylim(-0.6, len(rows) - 0.4)
        ax.set_ylabel(name)
        ax.grid(axis="x", alpha=0.3)
    axes[-1].set_xticks(range(steps + 1))
    axes[-1].set_xlabel("second")
    axes[0].set_title(f"{video}: prediction (colour)" + (" vs truth (grey)" if truth is not None else ""), fontsize=9)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, path)


def parse_args(argv):
    p = OneLineParser(prog="ppl-avvp predict", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="best_model.pt written by `ppl-avvp train`")
    p.add_argument("--features", required=True, help="LLP feature folder (vggish/ res152/ r2plus1d_18/)")
    p.add_argument("--out", required=True, help="output folder: events.json and timelines/")
    p.add_argument("--annotations", help="LLP annotation folder: take the videos (and truth) of --split")
    p.add_argument("--split", choices=("train", "val", "test"), default="test")
    p.add_argument("--videos", help="comma-separated 11-char ids (default: the split's, or every feature file)")
    p.add_argument("--pictures", type=int, default=20, help="timeline pictures to draw (first N videos; 0 = none)")
    p.add_argument("--threshold", type=float, default=0.5)
    return p.parse_args(argv)


def main(argv=None) -> int:
    from distributed.wtal_commands import predict_main, is_wtal_invocation

    argv = list(sys.argv[1:] if argv is None else argv)
    if is_wtal_invocation(argv):          # THUMOS14 proposals or an RGB + flow checkpoint
        return predict_main(argv)
    args = parse_args(argv)
    if not 0 < args.threshold < 1:
        raise ConfigError(f"--threshold: must lie strictly between 0 and 1, got {args.threshold}")
    if args.pictures < 0:
        raise ConfigError("--pictures: must be >= 0")
    out = Path(args.out)
    check_output_path(out, "--out", folder=True)
    network, payload = load_network(args.checkpoint)
    cfg = network.cfg
    truth = None
    if args.annotations:
        split = load_split(args.annotations, args.split, num_segments=cfg.num_segments)
        ids = split.video_ids
        if split.dense_audio is not None:
            truth = (split.dense_audio, split.dense_visual)
    else:
        audio_dir = Path(args.features) / "vggish"
        if not audio_dir.is_dir():
            raise DataError(f"{audio_dir}: feature folder not found")
        ids = sorted(p.stem for p in audio_dir.glob("*.npy"))
    if args.videos:
        wanted = [v.strip()[:11] for v in args.videos.split(",") if v.strip()]
        unknown = sorted(set(wanted) - set(ids))
        if unknown and args.annotations:
            raise DataError(f"--videos: {unknown[0]!r} is not a video of the {args.split} split")
        rows = [ids.index(v) for v in wanted if v in ids] if args.annotations else None
        if truth is not None:
            truth = (truth[0][rows], truth[1][rows])
        ids = wanted
    if not ids:
        raise DataError(f"{args.features}: no videos to predict")
    classes = LLP_CLASSES if cfg.num_classes == len(LLP_CLASSES) else tuple(f"class_{i}" for i in range(cfg.num_classes))
    frame_prob, global_prob = predict_features(network, load_features(args.features, ids, _spec(cfg)))
    try:
        (out / "timelines").mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"--out {out}: cannot create it ({' '.join(str(err).split())})") from None
    events = {vid: video_events(frame_prob[i], global_prob[i], classes, args.threshold) for i, vid in enumerate(ids)}
    tmp = out / ".events.json.tmp"
    tmp.write_text(json.dumps({"checkpoint": str(args.checkpoint), "threshold": args.threshold, "videos": events},
                              indent=1))
    os.replace(tmp, out / "events.json")
    for i, vid in enumerate(ids[:args.pictures]):
        video_truth = (truth[0][i], truth[1][i]) if truth is not None else None
        timeline_picture(out / "timelines" / f"{vid}.png", vid, frame_prob[i], global_prob[i], classes, video_truth,
                         args.threshold)
    n_events = sum(len(v) for v in events.values())
    print(f"{len(ids)} videos, {n_events} events -> {out / 'events.json'}; "
          f"{min(len(ids), args.pictures)} timelines in {out / 'timelines'}")
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
