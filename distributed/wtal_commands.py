"""`ppl-avvp evaluate` and `ppl-avvp predict` for W-TAL (THUMOS14 layout; model.streams=rgb_flow checkpoints).

    ppl-avvp evaluate --proposals P.json --annotations THUMOS_DIR [--protocol A] [--json F]
    ppl-avvp evaluate --checkpoint best_model.pt --features DIR --annotations THUMOS_DIR [--protocol A] [--json F]
    ppl-avvp predict --checkpoint best_model.pt --features DIR --annotations THUMOS_DIR --out DIR
                     [--split test] [--protocol A] [--pictures 20]

``evaluate`` scores an ActivityNet result file (its ``units`` must be the protocol's: snippets for A,
seconds for B) or a checkpoint's proposals, and prints the seed's Table 5 row. ``predict`` writes the
split's proposals (``proposals.json``, ActivityNet) and a timeline picture per video: the RGB and flow
streams' scores of the video's classes, the predicted actions against the true ones. The proposals are
made exactly as in training (``distributed.runtime.wtal_eval``), so a run's ``test_proposals_*.json``
and ``evaluate --checkpoint`` give its results.json numbers.
"""
from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from distributed.common.commandline import OneLineParser
from distributed.common.errors import ConfigError, DataError, UserError
from distributed.common.fsutil import check_output_path
from distributed.data.thumos14 import PROTOCOLS, load_thumos14, read_proposals, write_proposals


def is_wtal_invocation(argv: Sequence[str]) -> bool:
    """--proposals, or a --checkpoint whose model has RGB + flow streams."""
    argv = list(argv)
    if any(a == "--proposals" or a.startswith("--proposals=") for a in argv):
        return True
    for i, a in enumerate(argv):
        path = argv[i + 1] if a == "--checkpoint" and i + 1 < len(argv) else a.partition("=")[2] \
            if a.startswith("--checkpoint=") else None
        if path and Path(path).is_file():
            from distributed.runtime.checkpoint import load_model

            try:
                model = load_model(path)["config"].get("model", {})
            except UserError:
                return False          # the LLP path reports it in its own words
            return isinstance(model, dict) and model.get("streams") == "rgb_flow"
    return False


def _protocol(name: str):
    if name not in PROTOCOLS:
        raise ConfigError(f"--protocol: must be one of {', '.join(PROTOCOLS)}, got {name!r}")
    return PROTOCOLS[name]


def _checkpoint_rows(checkpoint: str, features: str, split):
    """The checkpoint's per-video predictions on ``split`` (whole videos, one at a time: no padding)."""
    import torch

    from distributed.data.wtal_arrays import WTALSplit, dense_truth
    from distributed.data.wtal_features import read_split_features
    from distributed.predict import load_network
    from distributed.runtime.wtal_eval import predict_videos

    network, _ = load_network(checkpoint)
    if network.cfg.streams != "rgb_flow":
        raise DataError(f"{checkpoint}: not a W-TAL checkpoint (model.streams={network.cfg.streams})")
    if network.cfg.num_classes != len(split.classes):
        raise DataError(f"{checkpoint}: model has {network.cfg.num_classes} classes, the annotations "
                        f"{len(split.classes)}")
    streams = read_split_features(features, split.videos, split.duration, dim=network.cfg.rgb_dim)
    data = WTALSplit(split, [s[0] for s in streams], [s[1] for s in streams],
                     dense_truth(split, [len(s[0]) for s in streams]))
    return predict_videos(network, (data.batch([i]) for i in range(len(data))), torch.device("cpu"))


def evaluate_main(argv: Sequence[str]) -> int:
    from distributed.runtime.wtal_eval import format_wtal_table, proposals_of, score

    p = OneLineParser(prog="ppl-avvp evaluate", description=__doc__.split("\n\n")[0],
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--proposals", metavar="FILE.json", help="ActivityNet result file to score")
    src.add_argument("--checkpoint", metavar="PATH", help="score a W-TAL checkpoint (needs --features)")
    p.add_argument("--features", metavar="DIR", help="I3D feature folder (rgb/ + flow/), with --checkpoint")
    p.add_argument("--annotations", metavar="DIR", required=True, help="THUMOS14 annotation folder")
    p.add_argument("--protocol", default="A", help="A (212 videos, snippets) or B (210, seconds); default A")
    p.add_argument("--json", metavar="FILE", help="also write the numbers (percent) as JSON")
    args = p.parse_args(list(argv))
    protocol = _protocol(args.protocol)
    if args.checkpoint and not args.features:
        raise ConfigError("--features: required with --checkpoint")
    if args.json:
        check_output_path(Path(args.json), "--json", folder=False)
    split = load_thumos14(args.annotations, "test", test_set=protocol.test_set)
    if args.checkpoint:
        source = f"checkpoint {args.checkpoint}"
        proposals = proposals_of(_checkpoint_rows(args.checkpoint, args.features, split), split, protocol)
    else:
        source = args.proposals
        proposals = read_proposals(args.proposals, split, protocol.units)
    scores = score(split, proposals, protocol)
    print(format_wtal_table([{"label": Path(source.split()[-1]).name, "test": scores}],
                            title=f"THUMOS14 test, protocol {args.protocol}: {len(split)} videos, "
                                  f"{len(proposals)} proposals ({source})"))
    if args.json:
        _atomic_text(Path(args.json), json.dumps(scores, indent=2) + "\n")
    return 0


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise UserError(f"{path}: cannot write it ({' '.join(str(err).split())})") from None


def timeline_picture(path: Path, video: str, frame_prob: np.ndarray, proposals, truth, classes: Sequence[str],
                     shown: Sequence[int], top: int = 5) -> None:
    """Rows: RGB and flow scores of the ``shown`` classes over the snippets, then per class the ``top``
    best proposals (colour, darker = higher score) over the true instances (grey). Snippet units."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = frame_prob.shape[0]
    fig, axes = plt.subplots(3, 1, figsize=(10, 2.2 + 0.5 * len(shown) + 2.4), sharex=True,
                             gridspec_kw={"height_ratios": [1, 1, max(1, 0.5 * len(shown))]})
    for ax, m, name in ((axes[0], 0, "RGB"), (axes[1], 1, "flow")):
        for c in shown:
            ax.plot(np.arange(t) + 0.5, frame_prob[:, m, c], lw=1, label=classes[c])
        ax.set_ylim(0, 1)
        ax.set_ylabel(f"{name}\nscore", fontsize=8)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="upper right")
    ax = axes[2]
    for y, c in enumerate(shown):
        for s, e in truth.get(c, []):
            ax.broken_barh([(s, max(e - s, 0.2))], (y - 0.4, 0.8), color="0.8")
        mine = [(s, e, sc) for (cc, s, e, sc) in proposals if cc == c][:top]
        for rank, (s, e, sc) in enumerate(mine):
            ax.broken_barh([(s, max(e - s, 0.2))], (y - 0.25 + 0.5 * rank / max(top, 1), 0.5 / max(top, 1)),
                           color=plt.cm.Blues(0.4 + 0.6 * (1 - rank / max(top, 1))))
    ax.set_yticks(range(len(shown)), [classes[c] for c in shown], fontsize=8)
    ax.set_ylim(-0.6, len(shown) - 0.4)
    ax.set_xlim(0, t)
    ax.set_xlabel("snippet (0.64 s)")
    axes[0].set_title(f"{video}: top-{top} proposals per class (blue) vs truth (grey)", fontsize=9)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    os.replace(tmp, path)


def predict_main(argv: Sequence[str]) -> int:
    from distributed.runtime.wtal_eval import proposals_of
    from model.localization import FEATURE_FPS, FRAMES_PER_SNIPPET

    p = OneLineParser(prog="ppl-avvp predict", description=__doc__.split("\n\n")[0],
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="best_model.pt of a W-TAL run")
    p.add_argument("--features", required=True, help="I3D feature folder (rgb/ + flow/)")
    p.add_argument("--annotations", required=True, help="THUMOS14 annotation folder")
    p.add_argument("--out", required=True, help="output folder: proposals.json and timelines/")
    p.add_argument("--split", choices=("train", "test"), default="test")
    p.add_argument("--protocol", default="A", help="A or B (test videos and units); default A")
    p.add_argument("--pictures", type=int, default=20, help="timeline pictures (first N videos; 0 = none)")
    args = p.parse_args(list(argv))
    protocol = _protocol(args.protocol)
    if args.pictures < 0:
        raise ConfigError("--pictures: must be >= 0")
    out = Path(args.out)
    check_output_path(out, "--out", folder=True)
    split = load_thumos14(args.annotations, args.split, test_set=protocol.test_set)
    rows = _checkpoint_rows(args.checkpoint, args.features, split)
    proposals = proposals_of(rows, split, protocol)
    try:
        (out / "timelines").mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"--out {out}: cannot create it ({' '.join(str(err).split())})") from None
    tmp = out / ".proposals.json.tmp"
    write_proposals(tmp, proposals, split, protocol.units)
    os.replace(tmp, out / "proposals.json")
    for row in rows[:args.pictures]:
        v = row["split_row"]
        mine = np.nonzero(proposals.video == v)[0]
        scale = FEATURE_FPS / FRAMES_PER_SNIPPET if protocol.units == "seconds" else 1.0   # pictures in snippets
        props = [(int(proposals.label[i]), proposals.start[i] * scale, proposals.end[i] * scale,
                  float(proposals.score[i])) for i in mine]
        props.sort(key=lambda x: -x[3])
        truth: dict[int, list] = {}
        gt = split.ground_truth("snippets")
        for i in np.nonzero(gt.video == v)[0]:
            truth.setdefault(int(gt.label[i]), []).append((gt.start[i], gt.end[i]))
        shown = sorted(set(truth) | {c for c, *_ in props[:3]})[:6]
        timeline_picture(out / "timelines" / f"{row['video_id']}.png", row["video_id"], row["frame_prob"], props,
                         truth, split.classes, shown)
    print(f"{len(rows)} videos, {len(proposals)} proposals -> {out / 'proposals.json'}; "
          f"{min(len(rows), args.pictures)} timelines in {out / 'timelines'}")
    return 0
