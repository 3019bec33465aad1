"""`ppl-avvp wtal synth`: a synthetic W-TAL data set in the THUMOS14 layout (annotations + RGB/flow features).

Output (``DIR``)::

    annotations/  gt.json, videoname.npy, subset.npy, duration.npy, original_fps.npy, classlist.npy,
                  Ambiguous_test.txt, split_train.txt, split_test.txt   (what distributed.data.thumos14 reads)
    features/rgb/<video>.npy, features/flow/<video>.npy    (T, D) float32, T = floor(duration * 25 / 16)
    wtal_synth.json   generator version, seed, parameters, counts, source

Layouts. With ``annotations=THUMOS_DIR`` the videos are the real ones, read by ``load_thumos14``
(train = the 200, test = the 212 of protocol A), **the first N of each split in videoname.npy
order** (all by default): their instances, durations, fps and ambiguous intervals are copied, so only
the features are synthetic (``split_test.txt`` keeps the real BaS-Net ids among them). Without it,
layouts come from :data:`CODED_THUMOS14_STATS`, numbers measured on the real annotation files
(train + test pooled), per video:

* duration: log-normal, log-mean 4.98 (median 145 s), log-sd 0.88, clipped to [9, 1673] s;
* fps: 30, or 25 / 24 with probability 0.027 / 0.005 (11 and 2 of 412 videos);
* classes: one (p 0.85) or two, uniform over the 20; instances: round(exp(N(2.1, 1.15))) clipped to
  [1, 218] (median 8, mean about 15), the first ones one per class, the rest of a random class of
  the video; lengths log-normal around the class's median (seconds, :data:`CLASS_MEDIAN_LENGTH`)
  with log-sd 0.7, clipped to [0.2, 120] s. Instances do not overlap and cover at most 80 % of the
  video (the last drawn are dropped until they fit, then all shrink if they still do not); the gaps
  between them are a flat Dirichlet split of the rest (real coverage: mean 31 %);
* test videos get ambiguous intervals with probability 0.17 (36 of 212), 1 + Poisson(1.7) of them.

Feature model (like :mod:`distributed.data.synth_features`): one world per seed fixes a unit latent
(64-d) direction per class and stream, an orthogonal latent-to-feature map and a mean per stream.
Per snippet t, ``cover[t, c]`` is the fraction of the snippet's 0.64 s inside an instance of class c
(background snippets: 0, so they carry no class signal). Latent = per-snippet noise (sd ``noise``)
+ a per-video scene vector (sd 0.7 x noise) + class signal:

* RGB: ``signal`` x cover x per-video jitter (log-normal sd 0.3) x per-snippet jitter (sd 0.2);
* flow: the same with its own jitter, times ``1 + 1.0 x exp(-d^2 / 2)``, d = the snippet's distance
  (in snippets) to the nearest start or end of the instance it lies in: motion is strongest where
  an action begins and ends. Outside instances it is 0 too.

Features = relu(mean + 0.3 x (map(latent) + per-dimension noise of sd 0.5 x noise)), non-negative
like pooled I3D activations; means are Gamma(2, 0.25) per dimension. ``dim`` (default 1024) is the
width of each stream. Each video draws from its own RNG seeded by (seed, video name), so its files
do not depend on which other videos are written; the folder is built in a temporary sibling and
renamed into place (``common.fsutil``).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from distributed.common.errors import UserError
from distributed.common.fsutil import check_output_dir, published_atomically
from distributed.data.synth_features import (LATENT_DIM, latent_embedding, single_threaded_blas, unit_rows,
                                             write_videos)
from distributed.data.thumos14 import AMBIGUOUS_FILE, BASNET_TEST_FILE, GT_FILE, load_thumos14
from distributed.data.wtal_features import I3D_DIM, SNIPPET_FRAMES, FEATURE_FPS, STREAMS, snippet_count

GENERATOR_VERSION = 1
META_FILE = "wtal_synth.json"
TRAIN_FILE = "split_train.txt"
THUMOS14_CLASSES = ("BaseballPitch", "BasketballDunk", "Billiards", "CleanAndJerk", "CliffDiving",
                    "CricketBowling", "CricketShot", "Diving", "FrisbeeCatch", "GolfSwing", "HammerThrow",
                    "HighJump", "JavelinThrow", "LongJump", "PoleVault", "Shotput", "SoccerPenalty",
                    "TennisSwing", "ThrowDiscus", "VolleyballSpiking")
# median instance length per class, seconds (mean of the train and test medians of the real files)
CLASS_MEDIAN_LENGTH = (3.0, 1.55, 2.45, 8.95, 2.7, 1.25, 1.15, 2.5, 2.25, 4.25, 7.1, 4.85, 6.3, 7.0,
                       6.55, 4.8, 2.8, 1.55, 4.05, 1.8)
CODED_THUMOS14_STATS = {
    "videos": {"train": 200, "test": 212},
    "duration_log_mean": 4.98, "duration_log_sd": 0.88, "duration_range": (9.0, 1673.0),
    "fps": ((30.0, 0.968), (25.0, 0.027), (24.0, 0.005)),
    "two_class_prob": 0.15,
    "instances_log_mean": 2.1, "instances_log_sd": 1.15, "instances_range": (1, 218),
    "length_log_sd": 0.7, "length_range": (0.2, 120.0),
    "max_coverage": 0.8,
    "ambiguous_prob": 0.17, "ambiguous_extra_mean": 1.7,
}
SUBSETS = {"train": "validation", "test": "test"}
_SPLIT_CODE = {"train": 1, "test": 2}
_RNG_LAYOUT, _RNG_FEATURES, _RNG_WORLD = 1, 2, 3

# feature model constants (module docstring)
_SCENE_SD = 0.7
_VIDEO_JITTER = 0.3
_SNIPPET_JITTER = 0.2
_BOUNDARY_GAIN = 1.0      # flow's extra signal at an instance's start and end
_BOUNDARY_SD = 1.0        # in snippets
_SCALE = 0.3
_FEATURE_NOISE = 0.5


@dataclass
class SynthVideo:
    """One video's layout. instances: (c, start_s, end_s); ambiguous: (start_s, end_s)."""

    name: str
    subset: str
    duration: float
    fps: float
    instances: list[tuple[int, float, float]]
    ambiguous: list[tuple[float, float]]
    in_basnet_test: bool = True


# --------------------------------------------------------------------------------------------
# layouts
# --------------------------------------------------------------------------------------------

def _rng(seed: int, *words: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *words]))


def _name_word(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "little")


def _place(rng: np.random.Generator, duration: float, lengths: list[float]) -> list[tuple[float, float]]:
    """Non-overlapping intervals of the given lengths in [0, duration), flat Dirichlet gaps."""
    gaps = rng.dirichlet(np.ones(len(lengths) + 1)) * (duration - sum(lengths))
    out, t = [], 0.0
    for gap, length in zip(gaps, lengths):
        t += gap
        out.append((round(t, 2), round(t + length, 2)))
        t += length
    return out


def coded_video(seed: int, split: str, index: int) -> SynthVideo:
    """One video sampled from CODED_THUMOS14_STATS (module docstring)."""
    s = CODED_THUMOS14_STATS
    rng = _rng(seed, _SPLIT_CODE[split], index, _RNG_LAYOUT)
    duration = float(np.clip(np.exp(rng.normal(s["duration_log_mean"], s["duration_log_sd"])), *s["duration_range"]))
    values, probs = zip(*s["fps"])
    fps = float(rng.choice(values, p=np.array(probs) / sum(probs)))
    n_classes = 2 if rng.random() < s["two_class_prob"] else 1
    classes = [int(c) for c in rng.choice(len(THUMOS14_CLASSES), n_classes, replace=False)]
    k = int(np.clip(round(math.exp(rng.normal(s["instances_log_mean"], s["instances_log_sd"]))),
                    *s["instances_range"]))
    k = max(k, n_classes)
    labels = classes + [int(c) for c in rng.choice(classes, k - n_classes)]
    lengths = [float(np.clip(CLASS_MEDIAN_LENGTH[c] * math.exp(rng.normal(0, s["length_log_sd"])),
                             *s["length_range"])) for c in labels]
    cap = s["max_coverage"] * duration
    while sum(lengths) > cap and len(lengths) > n_classes:     # the first n_classes: one per class
        lengths.pop()
        labels.pop()
    total = sum(lengths)
    if total > cap:
        lengths = [x * cap / total for x in lengths]
    order = rng.permutation(len(labels))
    labels, lengths = [labels[i] for i in order], [lengths[i] for i in order]
    segments = _place(rng, duration, lengths)
    ambiguous = []
    if split == "test" and rng.random() < s["ambiguous_prob"]:
        for _ in range(1 + int(rng.poisson(s["ambiguous_extra_mean"]))):
            start = float(rng.uniform(0, duration))
            ambiguous.append((round(start, 1), round(min(duration, start + float(rng.uniform(1, 10))), 1)))
    name = f"synth_{SUBSETS[split]}_{index:07d}"
    return SynthVideo(name, SUBSETS[split], round(duration, 3), fps,
                      [(c, a, b) for c, (a, b) in zip(labels, segments)], ambiguous)


def real_videos(annotations: Path, split: str, n: int | None) -> tuple[list[SynthVideo], tuple[str, ...]]:
    """The first ``n`` videos (all if None) of a real split, as the THUMOS14 reader defines it."""
    data = load_thumos14(annotations, split, "wtalc")
    basnet = set(load_thumos14(annotations, "test", "basnet").videos) if split == "test" else None
    rows = range(len(data)) if n is None else range(min(n, len(data)))
    out = []
    for i in rows:
        v = data.video(i)
        inst = [(int(c), float(a), float(b)) for c, (a, b) in zip(v.instance_labels, v.instance_segments)]
        out.append(SynthVideo(v.name, SUBSETS[split], v.duration, v.fps, inst,
                              [(float(a), float(b)) for a, b in v.ambiguous],
                              basnet is None or v.name in basnet))
    return out, data.classes


# --------------------------------------------------------------------------------------------
# features
# --------------------------------------------------------------------------------------------

class World:
    """Fixed per (seed, dim, classes): latent class directions, maps and means of both streams."""

    def __init__(self, seed: int, dim: int, num_classes: int):
        rng = _rng(seed, 0, 0, _RNG_WORLD)
        with single_threaded_blas():
            self.direction = {s: unit_rows(rng.standard_normal((num_classes, LATENT_DIM))) for s in STREAMS}
            self.map = {s: latent_embedding(rng, dim) for s in STREAMS}
            self.mean = {s: rng.gamma(2.0, 0.25, dim).astype(np.float32) for s in STREAMS}

    def feature_direction(self, stream: str, c: int) -> np.ndarray:
        """Unit vector of class ``c`` in ``stream``'s feature space (for tests and probes)."""
        d = self.direction[stream][c] @ self.map[stream]
        return d / np.linalg.norm(d)


def coverage(video: SynthVideo, t: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(T, C) share of each snippet inside an instance of each class, and flow's boundary weight."""
    step = SNIPPET_FRAMES / FEATURE_FPS
    lo = np.arange(t) * step
    cover = np.zeros((t, num_classes), np.float32)
    boundary = np.zeros((t, num_classes), np.float32)
    centre = np.arange(t) + 0.5
    for c, a, b in video.instances:
        share = np.clip(np.minimum(lo + step, b) - np.maximum(lo, a), 0, None) / step
        d = np.minimum(np.abs(centre - a / step), np.abs(centre - b / step)) / _BOUNDARY_SD
        bump = np.where(share > 0, np.exp(-0.5 * d * d), 0.0)
        cover[:, c] = np.maximum(cover[:, c], share)
        boundary[:, c] = np.maximum(boundary[:, c], bump)
    return cover, boundary


def video_features(world: World, video: SynthVideo, seed: int, dim: int, num_classes: int,
                   signal: float, noise: float) -> dict[str, np.ndarray]:
    """{"rgb", "flow"}: (T, dim) float32 features of one video, from its own RNG."""
    f32 = np.float32
    rng = _rng(seed, _name_word(video.name) % (1 << 63), _RNG_FEATURES)
    t = snippet_count(video.duration)
    cover, boundary = coverage(video, t, num_classes)
    scene = f32(_SCENE_SD * noise) * rng.standard_normal(LATENT_DIM, dtype=f32)
    out = {}
    for stream in STREAMS:
        strength = f32(signal) * np.exp(f32(_VIDEO_JITTER) * rng.standard_normal(num_classes, dtype=f32))
        amp = cover * strength * np.exp(f32(_SNIPPET_JITTER) * rng.standard_normal((t, num_classes), dtype=f32))
        if stream == "flow":
            amp *= 1 + f32(_BOUNDARY_GAIN) * boundary
        z = f32(noise) * rng.standard_normal((t, LATENT_DIM), dtype=f32) + scene
        z += amp.astype(f32) @ world.direction[stream]
        x = f32(_FEATURE_NOISE * noise) * rng.standard_normal((t, dim), dtype=f32)
        x += z @ world.map[stream]
        x *= f32(_SCALE)
        x += world.mean[stream]
        out[stream] = np.ascontiguousarray(np.maximum(x, 0, out=x), dtype=f32)
    return out


# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------

def write_annotations(root: Path, videos: list[SynthVideo], classes: tuple[str, ...]) -> None:
    """The THUMOS14 annotation files for ``videos`` (gt.json's duration is the true one here)."""
    root.mkdir(parents=True, exist_ok=True)
    database = {v.name: {"subset": v.subset, "duration": v.duration, "frames": int(round(v.duration * v.fps)),
                         "annotations": [{"label": classes[c], "segment": [a, b]} for c, a, b in v.instances]}
                for v in videos}
    (root / GT_FILE).write_text(json.dumps({"version": "synthetic", "database": database}) + "\n", encoding="utf-8")
    np.save(root / "videoname.npy", np.array([v.name.encode() for v in videos], dtype="S"), allow_pickle=False)
    np.save(root / "subset.npy", np.array([v.subset.encode() for v in videos], dtype="S"), allow_pickle=False)
    np.save(root / "duration.npy", np.array([v.duration for v in videos], np.float64), allow_pickle=False)
    np.save(root / "original_fps.npy", np.array([v.fps for v in videos], np.float64), allow_pickle=False)
    np.save(root / "classlist.npy", np.array([c.encode() for c in classes], dtype="S"), allow_pickle=False)
    amb = [f"{v.name}  {a:.1f} {b:.1f}" for v in videos for a, b in v.ambiguous]
    (root / AMBIGUOUS_FILE).write_text("".join(line + "\n" for line in amb), encoding="utf-8")
    for fname, subset in ((TRAIN_FILE, "validation"), (BASNET_TEST_FILE, "test")):
        ids = [v.name for v in videos if v.subset == subset and v.in_basnet_test]
        (root / fname).write_text("".join(i + "\n" for i in ids), encoding="utf-8")


def _check_count(name: str, value) -> int | None:
    if value is None or (isinstance(value, str) and value.strip().lower() == "all"):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise UserError(f"--{name}: expected a number of videos >= 0 or 'all', got {value!r}")
    return int(value)


def generate(out_dir: str | os.PathLike, annotations: str | os.PathLike | None = None,
             n_train: int | str | None = None, n_test: int | str | None = None, seed: int = 0,
             dim: int = I3D_DIM, signal: float = 3.0, noise: float = 1.0, overwrite: bool = False,
             num_threads: int | None = None) -> dict:
    """Write a synthetic W-TAL data set to ``out_dir``; return its summary (wtal_synth.json + timing).

    ``n_*``: videos per split; None / 'all' = the whole real split with ``annotations``, else
    THUMOS14's sizes (200 / 212).
    """
    t0 = time.perf_counter()
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UserError(f"--seed: must be an integer >= 0, got {seed!r}")
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
        raise UserError(f"--dim: must be an integer >= 1, got {dim!r}")
    if not (math.isfinite(signal) and signal >= 0 and math.isfinite(noise) and noise > 0):
        raise UserError(f"--signal / --noise: need signal >= 0 and noise > 0, got {signal!r} / {noise!r}")
    seed, dim = int(seed), int(dim)
    counts = {"train": _check_count("train", n_train), "test": _check_count("test", n_test)}
    threads = num_threads or max(1, min(4, os.cpu_count() or 1))
    out = Path(out_dir)
    check_output_dir(out, overwrite=overwrite, marker=META_FILE, kind="a wtal synth output", label="--out")

    if annotations is None:
        counts = {s: CODED_THUMOS14_STATS["videos"][s] if n is None else n for s, n in counts.items()}
        videos = [coded_video(seed, s, i) for s in ("train", "test") for i in range(counts[s])]
        classes, source = THUMOS14_CLASSES, "coded THUMOS14 statistics (wtal_synth.CODED_THUMOS14_STATS)"
    else:
        ann = Path(annotations)
        train, classes = real_videos(ann, "train", counts["train"])
        test, _ = real_videos(ann, "test", counts["test"])
        videos, counts = train + test, {"train": len(train), "test": len(test)}
        source = f"THUMOS14 annotations {ann} (first videos of each split, layouts copied)"
    if not all(counts.values()):
        raise UserError(f"--train / --test: need at least one video in each split, got {counts}")
    summary = {"generator": "ppl-avvp wtal synth", "version": GENERATOR_VERSION, "seed": seed, "dim": dim,
               "counts": counts, "params": {"signal": signal, "noise": noise}, "source": source,
               "classes": list(classes), "layout": "rgb/ + flow/"}

    with published_atomically(out, "synth-tmp") as tmp:
        for s in STREAMS:
            (tmp / "features" / s).mkdir(parents=True)
        world = World(seed, dim, len(classes))

        def write_one(v: SynthVideo) -> int:
            arrays = video_features(world, v, seed, dim, len(classes), signal, noise)
            for s, arr in arrays.items():
                with open(tmp / "features" / s / f"{v.name}.npy", "wb") as fh:
                    np.lib.format.write_array(fh, arr, allow_pickle=False)
            return sum(a.nbytes for a in arrays.values())

        nbytes = write_videos(write_one, videos, threads)
        write_annotations(tmp / "annotations", videos, tuple(classes))
        (tmp / META_FILE).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        check_output_dir(out, overwrite=overwrite, marker=META_FILE, kind="a wtal synth output", label="--out")
    return {**summary, "out_dir": str(out), "feature_bytes": int(nbytes),
            "seconds": round(time.perf_counter() - t0, 3)}
