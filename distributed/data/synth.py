"""`ppl-avvp synth`: write a synthetic dataset in exactly the LLP layout (annotations + features).

    ppl-avvp synth --out DIR [--annotations LLP_DIR] [--train N --val N --test N] [--seed S]
                   [--frames-per-segment 8] [--pool] [--signal X --noise X --context X] [--overwrite]

Output (``DIR``)::

    annotations/AVVP_train.csv, AVVP_val_pd.csv, AVVP_test_pd.csv, AVVP_dataset_full.csv
                AVVP_eval_audio.csv, AVVP_eval_visual.csv          (val + test dense truth)
                AVVP_train_dense_audio.csv, AVVP_train_dense_visual.csv  (ours: train dense truth,
                                                                    so pseudo-label quality is measurable)
    features/vggish/<id>.npy (T,128)  res152/<id>.npy (F*T,2048)  r2plus1d_18/<id>.npy (T,512)  float32
    synth.json   generator version, seed, parameters, counts, feature spec, source

Files are tab-separated with one header line, LF line ends, as LLP's. ``--pool`` stores res152 with
the F frames of each segment already averaged ((T, 2048), ``feature_spec.frames_per_segment = 1``
in synth.json): 1/8 of the disk, and read back it equals reading the 8-frame files with
``pool_frames=True``.

Annotations
-----------
Without ``--annotations`` everything comes from LLP statistics coded below as numbers
(:data:`CODED_LLP_STATS`; facts about LLP, not its files): video ids are 11 characters of
YouTube's alphabet (``A-Za-z0-9-_``; some contain ``-``/``_`` or start with ``-``), filenames are
``<id>_<start>_<end>``; train weak labels are drawn from LLP's train label-set frequencies (which
carry class frequencies and co-occurrence), val/test ones from LLP's val/test label-count
distribution (they have more labels per video). Every weak class then gets a layout
(see below) in at least one modality, in every split.

With ``--annotations LLP_DIR`` (a real LLP annotation folder) the ids, filenames and weak labels are
the real ones, taken as **the first N rows of each split in file order** (deterministic, the same for
every seed; ``all`` takes the whole split), weak and dense rows copied verbatim (LLP's quirks
included). Val/test dense truth is LLP's real dense truth. Train has no dense truth in LLP (unless the
folder has our ``AVVP_train_dense_*.csv``, which are then used), so each weak class's layout is
sampled from the per-class statistics of that folder's val+test dense truth: the weak label hides
which modality and which seconds hold each event, as in LLP.

Layout model (per weak class c; statistics per class from LLP val+test): modality = audio only /
visual only / both with LLP's per-class rates (Speech is heard far more often than seen, Car seen
more than heard, ...); per present modality the event covers all T seconds with the class's
LLP rate, else 1-4 runs (truncated-geometric count and length matched to the class's LLP means),
placed at random with LLP's excess of events touching the clip start/end; when both modalities
hold a partial event, the visual layout copies the audio one at LLP's rate (61%).

Feature model
-------------
Each modality has a 64-d latent "semantic" space; a fixed random map (orthogonal rows) turns it
into each stream's features, so, as with real CNN embeddings, class evidence is strong in a few
directions rather than spread thin over 2,048 noisy ones. One "world" per seed fixes a random unit
latent direction per class and modality, 8 unlabelled "distractor" directions, the maps and the
stream means. Per video and segment t (latent sd ``noise``):

* audio (vggish) = mean + map_a(z_a) + per-dimension noise, z_a = scene_a + sum over classes
  *heard* at t of strength x direction + distractors (each on 10% of seconds) + segment noise.
  Strength = ``signal`` x per-video jitter (log-normal, sd 0.3) x per-segment jitter (sd 0.2);
  scene = a per-video random vector (sd 0.7 x noise) plus ``context`` x the directions of all classes
  heard anywhere in the video (the background seconds of a dog video still look a little like dog).
* res152 = relu(mean + 0.3 x (map_2(z_v + per-frame class jitter and latent noise) + per-dimension
  noise)) for each of the F frames of a segment: non-negative like post-ReLU CNN features, frames of
  one segment share the segment's latent; z_v is built like z_a from the classes *seen* at t, with
  1.5 x the strength (real visual features are strong).
* r2plus1d = relu(mean + 0.3 x map_3(z_v + its own noise, with the class signal smoothed over the
  neighbouring seconds as a clip-level 3D CNN sees it)): shares res152's latent, so it is correlated
  with res152's class signal.
* Audio features carry only audio events and visual features only visual events: a model that
  ignores the modality is wrong on audio-only and visual-only events (Speech is heard in 98% of the
  videos labelled with it but seen in 22%).

Difficulty knobs: ``signal`` (default 3.0), ``noise`` (default 1.0), ``context`` (default 0.25).
With the defaults, the PPL-preset parser trained with the MIL loss only (Adam 3e-4, batch 16) on 1,000
videos reaches about 55-60% segment-level F1 (A, V, AV, LLP protocol) on 300 val videos after 4-6
epochs (about 37% at ``signal`` 2.0); HAN with its per-modality losses gets about A 58 / V 55 / AV 50,
close to HAN's published LLP numbers. Raise ``signal`` or lower ``noise``/``context`` for an easier set.

Determinism: each video draws from its own RNG seeded by (seed, split, index, purpose), and the
world from (seed); the same arguments give byte-identical files on the same platform regardless
of thread count. Output is written into a temporary folder next to ``DIR`` and renamed at the end;
an existing non-empty ``DIR`` is an error unless ``--overwrite`` (which only replaces a previous
synth output, i.e. a folder with ``synth.json``).
"""
from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from distributed.common.errors import ConfigError, DataError, UserError
from distributed.common.fsutil import swap_in
from distributed.data.features import FeatureSpec, feature_path
from distributed.data.llp import (DENSE_AUDIO_FILE, DENSE_VISUAL_FILE, FEATURE_DIRS, LLP_CLASSES,
                             SPLIT_FILES, TRAIN_DENSE_AUDIO_FILE, TRAIN_DENSE_VISUAL_FILE, load_split,
                             video_id)

__all__ = ["generate", "LLPStats", "CODED_LLP_STATS", "llp_statistics", "SynthParams",
           "GENERATOR_VERSION", "LLP_SPLIT_SIZES", "DATASET_FULL_FILE"]

GENERATOR_VERSION = 1
DATASET_FULL_FILE = "AVVP_dataset_full.csv"
LLP_SPLIT_SIZES = {"train": 10000, "val": 649, "test": 1200}
SPLITS = ("train", "val", "test")
_SPLIT_CODE = {"train": 1, "val": 2, "test": 3}
_WEAK_HEADER = "filename\tevent_labels"
_DENSE_HEADER = "filename\tonset\toffset\tevent_labels"
_MAX_RUNS = 4
_DENSE_COLUMNS = ("filename", "onset", "offset", "event_labels")

# RNG purposes (the last entropy word of each video's seed sequence)
_RNG_ID, _RNG_WEAK, _RNG_LAYOUT, _RNG_FEATURES, _RNG_WORLD = 1, 2, 3, 4, 5


# --------------------------------------------------------------------------------------------
# LLP statistics
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LLPStats:
    """Counts describing LLP's labels and event layouts (see :func:`llp_statistics`).

    Per-modality tuples are ``(audio, visual)``; per-class tuples follow ``LLP_CLASSES``.
    Layout counts are over the (video, class) pairs of val+test with the class in the weak label.
    """

    train_label_sets: tuple[tuple[tuple[int, ...], int], ...]  # (sorted class indices, #train videos)
    eval_label_set_sizes: tuple[int, ...]       # #val+test videos with 1, 2, 3, ... weak classes
    eval_class_counts: tuple[int, ...]          # per class: #val+test videos labelled with it
    modality_counts: tuple[tuple[int, int, int, int], ...]  # per class: neither, audio only, visual only, both
    present: tuple[tuple[int, ...], tuple[int, ...]]        # per modality, class: pairs with >= 1 second
    full: tuple[tuple[int, ...], tuple[int, ...]]           # ... covering all T seconds
    partial_runs: tuple[tuple[int, ...], tuple[int, ...]]   # ... partial: total number of runs
    partial_seconds: tuple[tuple[int, ...], tuple[int, ...]]  # ... partial: total seconds in runs
    partial_at_start: tuple[int, int]           # per modality: partial layouts whose first run starts at 0
    partial_at_end: tuple[int, int]             # ... whose last run ends at T
    both_partial: int                           # pairs partial in both modalities
    both_partial_same: int                      # ... with identical audio and visual layouts
    start_bins: tuple[tuple[int, int, int], ...]  # filename start (multiple of 10) in [lo, hi): count
    start_other: int                            # filename starts that are not a multiple of 10
    start_fractional: int                       # ... of which not whole seconds (e.g. 101.8)


def _start_of(filename: str) -> float | None:
    parts = filename[12:].split("_")
    try:
        return float(parts[0])
    except (ValueError, IndexError):
        return None


_START_EDGES = (0, 10, 20, 30, 40, 60, 100, 200, 300, 400)


def _statistics_from_splits(train, val, test, num_segments: int) -> LLPStats:
    """The counts of :class:`LLPStats` from loaded splits (val/test must have dense truth)."""
    n_classes = train.weak_labels.shape[1]
    sets: dict[tuple[int, ...], int] = {}
    for row in train.weak_labels:
        key = tuple(int(i) for i in np.flatnonzero(row))
        sets[key] = sets.get(key, 0) + 1
    train_sets = tuple(sorted(sets.items(), key=lambda kv: (-kv[1], len(kv[0]), kv[0])))
    eval_weak = np.concatenate([val.weak_labels, test.weak_labels]) > 0
    sizes = np.bincount(eval_weak.sum(1), minlength=2)[1:]
    dense = [np.concatenate([val.dense_audio, test.dense_audio]) > 0,
             np.concatenate([val.dense_visual, test.dense_visual]) > 0]
    modality = np.zeros((n_classes, 4), dtype=np.int64)
    present = np.zeros((2, n_classes), dtype=np.int64)
    full = np.zeros_like(present)
    runs = np.zeros_like(present)
    seconds = np.zeros_like(present)
    at_start = [0, 0]
    at_end = [0, 0]
    both_partial = same = 0
    for v, c in zip(*np.nonzero(eval_weak)):
        masks = [dense[0][v, :, c], dense[1][v, :, c]]
        has = [bool(m.any()) for m in masks]
        modality[c, int(has[0]) + 2 * int(has[1])] += 1
        for m in (0, 1):
            if not has[m]:
                continue
            present[m, c] += 1
            if masks[m].all():
                full[m, c] += 1
                continue
            on, off = _runs(masks[m])
            runs[m, c] += len(on)
            seconds[m, c] += int((off - on).sum())
            at_start[m] += int(on[0] == 0)
            at_end[m] += int(off[-1] == num_segments)
        if all(has) and not masks[0].all() and not masks[1].all():
            both_partial += 1
            same += int(np.array_equal(masks[0], masks[1]))
    starts = [_start_of(f) for f in train.filenames + val.filenames + test.filenames]
    starts = [s for s in starts if s is not None]
    tens = [int(s) for s in starts if s == int(s) and int(s) % 10 == 0]
    top = max([_START_EDGES[-1]] + tens) + 10
    edges = _START_EDGES + (top,)
    bins = tuple((lo, hi, sum(lo <= s < hi for s in tens)) for lo, hi in zip(edges[:-1], edges[1:]))
    return LLPStats(
        train_label_sets=train_sets,
        eval_label_set_sizes=tuple(int(x) for x in sizes),
        eval_class_counts=tuple(int(x) for x in eval_weak.sum(0)),
        modality_counts=tuple(tuple(int(x) for x in row) for row in modality),
        present=tuple(tuple(int(x) for x in r) for r in present),
        full=tuple(tuple(int(x) for x in r) for r in full),
        partial_runs=tuple(tuple(int(x) for x in r) for r in runs),
        partial_seconds=tuple(tuple(int(x) for x in r) for r in seconds),
        partial_at_start=(at_start[0], at_start[1]),
        partial_at_end=(at_end[0], at_end[1]),
        both_partial=both_partial,
        both_partial_same=same,
        start_bins=bins,
        start_other=len(starts) - len(tens),
        start_fractional=sum(s != int(s) for s in starts),
    )


def llp_statistics(annotation_dir: str | os.PathLike, num_segments: int = 10) -> LLPStats:
    """Compute :class:`LLPStats` from an LLP annotation folder (train, val, test and dense files).

    :data:`CODED_LLP_STATS` is this function's output on the real LLP annotations.
    """
    splits = {s: load_split(annotation_dir, s, num_segments) for s in SPLITS}
    return _statistics_from_splits(splits["train"], splits["val"], splits["test"], num_segments)


# Computed ONCE with `llp_statistics("<LLP annotations>")` on the real LLP files (AVVP_train.csv,
# AVVP_val_pd.csv, AVVP_test_pd.csv, the 2024 AVVP_eval_audio.csv and AVVP_eval_visual.csv; 10 s).
# They are counts (facts about LLP), not the files: label-set frequencies of the 10,000 train videos,
# label-count and class frequencies of the 1,849 val+test videos, and per-class modality / coverage
# / run statistics of the val+test dense truth. tests/test_synth.py checks them against the files.
CODED_LLP_STATS = LLPStats(
    train_label_sets=(
        ((0, 3), 668), ((0, 13), 571), ((0, 11), 497), ((9, 13), 497), ((19,), 439), ((14,), 388),
        ((0, 1), 366), ((16,), 361), ((11,), 350), ((0, 6), 320), ((0, 18), 312), ((1,), 253),
        ((0, 22), 251), ((0, 2), 247), ((12,), 228), ((0, 20), 227), ((8,), 218), ((13,), 218),
        ((2,), 215), ((23,), 213), ((5,), 208), ((0, 12), 204), ((22,), 174), ((0, 4), 164),
        ((0, 19), 146), ((0, 5), 135), ((6,), 132), ((17,), 130), ((11, 20), 129), ((7,), 116),
        ((0, 14), 104), ((0, 7), 102), ((0, 24), 96), ((0, 15), 89), ((0, 17), 85), ((0, 23), 78),
        ((18,), 76), ((0, 8), 66), ((0, 21), 62), ((0, 10), 61), ((13, 20), 61), ((20,), 58),
        ((15,), 55), ((3,), 51), ((10, 11), 45), ((0, 16), 43), ((9,), 41), ((24,), 39),
        ((2, 11), 38), ((21,), 36), ((10, 13), 36), ((11, 13), 28), ((0, 9), 26), ((11, 16), 21),
        ((10,), 17), ((4,), 16), ((0, 9, 13), 11), ((0, 2, 11), 10), ((10, 11, 13), 10),
        ((8, 18), 9), ((9, 11), 9), ((11, 24), 9), ((13, 16), 9), ((10, 20), 8), ((2, 24), 7),
        ((0, 2, 24), 7), ((3, 11), 6), ((0, 3, 4), 6), ((0, 11, 20), 6), ((3, 4), 5), ((9, 20), 5),
        ((1, 18), 4), ((3, 22), 4), ((9, 13, 16), 4), ((3, 12), 3), ((3, 14), 3), ((9, 16), 3),
        ((0, 11, 24), 3), ((0, 17, 18), 3), ((9, 11, 13), 3), ((3, 13), 2), ((3, 18), 2),
        ((17, 18), 2), ((0, 2, 6), 2), ((0, 3, 12), 2), ((0, 8, 17), 2), ((0, 8, 18), 2),
        ((0, 10, 11), 2), ((0, 10, 20), 2), ((2, 6), 1), ((3, 8), 1), ((3, 15), 1), ((3, 19), 1),
        ((3, 21), 1), ((3, 24), 1), ((4, 20), 1), ((8, 17), 1), ((9, 10), 1), ((10, 16), 1),
        ((11, 22), 1), ((13, 24), 1), ((16, 20), 1), ((17, 19), 1), ((0, 1, 18), 1),
        ((0, 2, 3), 1), ((0, 3, 11), 1), ((0, 3, 15), 1), ((0, 3, 24), 1), ((0, 10, 13), 1),
        ((0, 11, 13), 1), ((0, 11, 16), 1), ((0, 13, 16), 1), ((0, 13, 20), 1), ((9, 11, 20), 1),
        ((9, 13, 20), 1), ((10, 11, 20), 1), ((10, 13, 20), 1),
    ),
    eval_label_set_sizes=(
        616, 1016, 174, 39, 3, 0, 1,
    ),
    eval_class_counts=(
        990, 134, 132, 169, 57, 65, 81, 36, 45, 122, 45, 265, 98, 232, 99, 32, 81, 44, 82, 103,
        155, 19, 77, 56, 129,
    ),
    modality_counts=(
        (19, 752, 2, 217), (1, 2, 27, 104), (4, 74, 5, 49), (1, 13, 21, 134), (1, 2, 15, 39),
        (1, 4, 1, 59), (2, 4, 14, 61), (0, 6, 0, 30), (0, 1, 0, 44), (1, 23, 5, 93), (1, 8, 2, 34),
        (3, 81, 1, 180), (0, 7, 5, 86), (1, 39, 6, 186), (0, 6, 1, 92), (0, 7, 0, 25),
        (0, 21, 1, 59), (0, 3, 1, 40), (0, 4, 7, 71), (0, 9, 2, 92), (0, 13, 16, 126),
        (0, 8, 0, 11), (1, 13, 1, 62), (0, 0, 1, 55), (2, 52, 6, 69),
    ),
    present=(
        (
            969, 106, 123, 147, 41, 63, 65, 36, 45, 116, 42, 261, 93, 225, 98, 32, 80, 43, 75, 101,
            139, 19, 75, 55, 121,
        ),
        (
            219, 131, 54, 155, 54, 60, 75, 30, 44, 98, 36, 181, 91, 192, 93, 25, 60, 41, 78, 94,
            142, 11, 63, 56, 75,
        ),
    ),
    full=(
        (
            138, 89, 45, 34, 3, 57, 4, 16, 31, 93, 31, 103, 38, 146, 74, 6, 64, 26, 54, 85, 85, 5,
            29, 17, 33,
        ),
        (
            26, 100, 29, 133, 43, 49, 3, 13, 29, 79, 31, 56, 79, 154, 74, 7, 50, 34, 56, 71, 122,
            4, 35, 48, 24,
        ),
    ),
    partial_runs=(
        (
            1272, 20, 99, 178, 72, 6, 90, 26, 18, 29, 11, 217, 91, 101, 24, 43, 19, 23, 21, 19, 83,
            20, 66, 45, 105,
        ),
        (
            269, 36, 30, 35, 15, 12, 115, 19, 19, 22, 5, 174, 14, 47, 29, 30, 11, 10, 27, 30, 21,
            8, 37, 9, 59,
        ),
    ),
    partial_seconds=(
        (
            3737, 104, 336, 562, 160, 28, 236, 115, 78, 151, 52, 967, 291, 517, 121, 135, 101, 92,
            105, 91, 359, 65, 325, 200, 361,
        ),
        (
            790, 192, 110, 145, 69, 51, 283, 102, 93, 106, 22, 736, 65, 207, 126, 100, 45, 52, 135,
            135, 97, 37, 185, 49, 197,
        ),
    ),
    partial_at_start=(828, 400),
    partial_at_end=(897, 362),
    both_partial=582,
    both_partial_same=353,
    start_bins=(
        (0, 10, 815), (10, 20, 633), (20, 30, 540), (30, 40, 3536), (40, 60, 751), (60, 100, 1214),
        (100, 200, 1821), (200, 300, 874), (300, 400, 490), (400, 600, 441),
    ),
    start_other=734,
    start_fractional=5,
)


def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Onsets and offsets (half-open) of the runs of 1s in a 1-D boolean mask."""
    d = np.diff(np.concatenate(([0], mask.astype(np.int8), [0])))
    return np.flatnonzero(d == 1), np.flatnonzero(d == -1)


# --------------------------------------------------------------------------------------------
# Layout sampling
# --------------------------------------------------------------------------------------------

def _truncated_geometric(support: int, mean: float) -> np.ndarray:
    """Probabilities p_i ∝ r^i on {1..support} whose mean is ``mean`` (clipped into range)."""
    if support == 1:
        return np.ones(1)
    k = np.arange(1, support + 1, dtype=np.float64)
    mean = float(np.clip(mean, 1.0 + 1e-6, support - 1e-6))
    lo, hi = -20.0, 20.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        w = np.exp(mid * (k - k.max()))
        if (w * k).sum() / w.sum() < mean:
            lo = mid
        else:
            hi = mid
    w = np.exp(0.5 * (lo + hi) * (k - k.max()))
    return w / w.sum()


class _LayoutModel:
    """Samples each weak class's dense audio/visual layout from :class:`LLPStats` counts.

    Per-class rates are smoothed towards the pooled rate with 2 pseudo-observations, so classes
    with few (or no) val/test examples still get a sensible layout.
    """

    PRIOR = 2.0

    def __init__(self, stats: LLPStats, num_segments: int, num_classes: int):
        t, k = num_segments, self.PRIOR
        self.T = t
        mod = np.asarray(stats.modality_counts, dtype=np.float64).reshape(-1, 4)[:, 1:]
        if mod.shape[0] != num_classes:
            raise ConfigError(f"statistics cover {mod.shape[0]} classes, the dataset has {num_classes}")
        pooled = mod.sum(0) / max(mod.sum(), 1.0)
        self.modality_p = (mod + k * pooled) / (mod.sum(1, keepdims=True) + k)  # (C, 3): A, V, AV
        present = np.asarray(stats.present, dtype=np.float64)
        full = np.asarray(stats.full, dtype=np.float64)
        partial = present - full
        runs = np.asarray(stats.partial_runs, dtype=np.float64)
        secs = np.asarray(stats.partial_seconds, dtype=np.float64)
        pooled_full = full.sum(1, keepdims=True) / np.maximum(present.sum(1, keepdims=True), 1)
        self.full_p = (full + k * pooled_full) / (present + k)                     # (2, C)
        pooled_runs = runs.sum(1, keepdims=True) / np.maximum(partial.sum(1, keepdims=True), 1)
        mean_runs = (runs + k * pooled_runs) / (partial + k)
        pooled_len = secs.sum(1, keepdims=True) / np.maximum(runs.sum(1, keepdims=True), 1)
        mean_len = (secs + k * pooled_len) / (runs + k)
        max_runs = max(1, min(_MAX_RUNS, (t + 1) // 2))
        max_len = max(1, t - 1)
        self.runs_p = [[_truncated_geometric(max_runs, mean_runs[m, c]) for c in range(num_classes)]
                       for m in (0, 1)]
        self.len_p = [[_truncated_geometric(max_len, mean_len[m, c]) for c in range(num_classes)]
                      for m in (0, 1)]
        n_partial = np.maximum(partial.sum(1), 1)
        # LLP partial events touch the clip edges more often than uniform placement would (~1 in
        # 5 by chance): anchor that excess at the start or at the end.
        chance = 0.2
        obs_start = np.asarray(stats.partial_at_start, dtype=np.float64) / n_partial
        obs_end = np.asarray(stats.partial_at_end, dtype=np.float64) / n_partial
        self.anchor_start = np.clip((obs_start - chance) / (1 - chance), 0, 0.45)
        self.anchor_end = np.clip((obs_end - chance) / (1 - chance), 0, 0.45)
        self.sync_p = stats.both_partial_same / stats.both_partial if stats.both_partial else 0.5

    def _partial(self, rng: np.random.Generator, m: int, c: int) -> np.ndarray:
        t = self.T
        mask = np.zeros(t, dtype=bool)
        if t == 1:
            mask[0] = True
            return mask
        k = int(rng.choice(len(self.runs_p[m][c]), p=self.runs_p[m][c])) + 1
        lengths = [int(x) + 1 for x in rng.choice(len(self.len_p[m][c]), size=k, p=self.len_p[m][c])]
        while sum(lengths) + len(lengths) - 1 > t:
            if len(lengths) > 1:
                lengths.pop()
            else:
                lengths = [min(lengths[0], t - 1)]
        k = len(lengths)
        slack = t - sum(lengths) - (k - 1)
        u = rng.random()
        anchor = "start" if u < self.anchor_start[m] else (
            "end" if u < self.anchor_start[m] + self.anchor_end[m] else None)
        if k == 1 and slack == 0:
            anchor = None
        # distribute `slack` free seconds into the k+1 gaps (before, between, after), uniformly
        # over compositions, with the anchored edge gap fixed at 0
        slots = k + 1 - (anchor is not None)
        if slots > 1:
            bars = sorted(int(b) for b in rng.choice(slack + slots - 1, size=slots - 1, replace=False))
        else:
            bars = []
        edges = [-1] + bars + [slack + slots - 1]
        gaps = [b - a - 1 for a, b in zip(edges[:-1], edges[1:])]
        if anchor == "start":
            gaps = [0] + gaps
        elif anchor == "end":
            gaps = gaps + [0]
        pos = 0
        for i, length in enumerate(lengths):
            pos += gaps[i] + (1 if i > 0 else 0)
            mask[pos:pos + length] = True
            pos += length
        return mask

    def _one(self, rng: np.random.Generator, m: int, c: int) -> np.ndarray:
        if rng.random() < self.full_p[m, c]:
            return np.ones(self.T, dtype=bool)
        return self._partial(rng, m, c)

    def sample(self, rng: np.random.Generator, classes: Sequence[int], num_classes: int
               ) -> tuple[np.ndarray, np.ndarray]:
        """Dense (T, C) audio and visual masks for a video whose weak label is ``classes``."""
        audio = np.zeros((self.T, num_classes), dtype=bool)
        visual = np.zeros((self.T, num_classes), dtype=bool)
        for c in classes:
            which = int(rng.choice(3, p=self.modality_p[c]))      # 0 audio, 1 visual, 2 both
            a = self._one(rng, 0, c) if which in (0, 2) else None
            v = self._one(rng, 1, c) if which in (1, 2) else None
            if a is not None and v is not None and not a.all() and not v.all() \
                    and rng.random() < self.sync_p:
                v = a.copy()
            if a is not None:
                audio[:, c] = a
            if v is not None:
                visual[:, c] = v
        return audio, visual


# --------------------------------------------------------------------------------------------
# Ids, filenames and weak labels (no annotations given)
# --------------------------------------------------------------------------------------------

_ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_ID_LAST = "AEIMQUYcgkosw048"   # a YouTube id's 11th character carries only 4 bits


class _LabelModel:
    """Weak labels (LLP label-set frequencies) and ``<id>_<start>_<end>`` filenames."""

    def __init__(self, stats: LLPStats, num_classes: int):
        self.sets = [tuple(s) for s, _ in stats.train_label_sets]
        counts = np.asarray([n for _, n in stats.train_label_sets], dtype=np.float64)
        self.set_p = counts / counts.sum()
        self.max_train_size = max(len(s) for s in self.sets)
        sizes = np.asarray(stats.eval_label_set_sizes, dtype=np.float64)
        self.size_p = sizes / sizes.sum()
        cls = np.asarray(stats.eval_class_counts, dtype=np.float64) + 1.0
        self.eval_class_w = cls
        self.by_size = {}
        for size in range(1, self.max_train_size + 1):
            idx = [i for i, s in enumerate(self.sets) if len(s) == size]
            p = counts[idx]
            self.by_size[size] = (idx, p / p.sum())
        self.num_classes = num_classes
        bins = stats.start_bins
        total = sum(b[2] for b in bins) + stats.start_other
        self.start_bins = [(lo, hi) for lo, hi, _ in bins]
        self.start_bin_p = np.asarray([b[2] for b in bins], dtype=np.float64) / max(total, 1)
        self.start_other_p = stats.start_other / max(total, 1)
        self.start_frac_p = stats.start_fractional / max(stats.start_other, 1)
        self.start_max = bins[-1][1] if bins else 600

    def weak(self, rng: np.random.Generator, split: str) -> list[int]:
        if split == "train":
            classes = list(self.sets[int(rng.choice(len(self.sets), p=self.set_p))])
        else:
            size = int(rng.choice(len(self.size_p), p=self.size_p)) + 1
            idx, p = self.by_size[min(size, self.max_train_size)]
            classes = list(self.sets[idx[int(rng.choice(len(idx), p=p))]])
            while len(classes) < min(size, self.num_classes):
                w = self.eval_class_w.copy()
                w[classes] = 0.0
                classes.append(int(rng.choice(self.num_classes, p=w / w.sum())))
        return [classes[i] for i in rng.permutation(len(classes))]

    def filename(self, rng: np.random.Generator, vid: str, duration: int) -> str:
        u = rng.random()
        if u < self.start_other_p:
            if rng.random() < self.start_frac_p:
                start = round(float(rng.uniform(0, self.start_max)), 1)
                return f"{vid}_{start:.1f}_{start + duration:.1f}"
            start = int(rng.integers(0, self.start_max))
            if start % 10 == 0:
                start += 1 + int(rng.integers(0, 9))
        else:
            b = int(rng.choice(len(self.start_bins), p=self.start_bin_p / self.start_bin_p.sum()))
            lo, hi = self.start_bins[b]
            start = 10 * int(rng.integers(lo // 10, max(lo // 10 + 1, hi // 10)))
        return f"{vid}_{start}_{start + duration}"


def _video_rng(seed: int, split: str, index: int, purpose: int, attempt: int = 0) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, _SPLIT_CODE[split], index, purpose, attempt]))


def _make_id(rng: np.random.Generator) -> str:
    body = rng.integers(0, len(_ID_ALPHABET), size=10)
    return "".join(_ID_ALPHABET[i] for i in body) + _ID_LAST[int(rng.integers(0, len(_ID_LAST)))]


# --------------------------------------------------------------------------------------------
# Feature model
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SynthParams:
    """Difficulty knobs of the feature model (see the module docstring)."""

    signal: float = 3.0      # class strength along its latent direction, in units of the noise sd
    noise: float = 1.0       # sd of the per-segment noise (scene and frame noise scale with it)
    context: float = 0.25    # share of each present class's signal added to every second of the video

    def validate(self) -> "SynthParams":
        if not (math.isfinite(self.signal) and self.signal >= 0):
            raise ConfigError(f"signal: must be a finite number >= 0, got {self.signal!r}")
        if not (math.isfinite(self.noise) and self.noise > 0):
            raise ConfigError(f"noise: must be a finite number > 0, got {self.noise!r}")
        if not (math.isfinite(self.context) and 0 <= self.context <= 1):
            raise ConfigError(f"context: must be in [0, 1], got {self.context!r}")
        return self


# fixed shape constants of the feature model (documented in the module docstring)
_LATENT = 64             # dimension of each modality's latent "semantic" space
_SCENE_SD = 0.7          # per-video scene vector (latent), x noise
_VIDEO_JITTER = 0.3      # log-normal sd of a class's strength per video and modality
_SEGMENT_JITTER = 0.2    # ... per audio segment / per visual frame
_FRAME_NOISE = 0.5       # res152 per-frame latent noise sd, x noise (a segment's 8 frames share the rest)
_FEATURE_NOISE = 0.5     # per-dimension noise of every stream, relative to its latent-driven sd
_VISUAL_SCALE = 0.3      # visual streams: relu(mean + scale * (latent map + feature noise))
_OWN_3D_NOISE = 0.5      # r2plus1d's own latent noise on top of the shared visual latent, x noise
_DISTRACTORS = 8         # unlabelled event directions per modality
_DISTRACTOR_RATE = 0.1   # chance a distractor is on in a segment
_DISTRACTOR_GAIN = 0.7   # strength relative to signal
_SMOOTH_3D = (0.15, 0.7, 0.15)  # r2plus1d sees its neighbours' seconds
_VISUAL_GAIN = 1.5       # visual class strength relative to audio (real visual features are strong)


def _single_threaded_blas():
    """Our thread pool parallelises over videos; BLAS threads on top of it only contend (10-50x
    slower small matmuls on a busy machine). Results do not depend on BLAS's thread count."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional: only speed depends on it
        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _embedding(rng: np.random.Generator, dim: int) -> np.ndarray:
    """(LATENT, dim) map with orthogonal rows, scaled so a unit-variance latent gives unit-variance
    features (a latent direction keeps its norm up to sqrt(dim / LATENT))."""
    if dim >= _LATENT:
        q, _ = np.linalg.qr(rng.standard_normal((dim, _LATENT)))
        return (q.T * math.sqrt(dim / _LATENT)).astype(np.float32)
    return (rng.standard_normal((_LATENT, dim)) / math.sqrt(_LATENT)).astype(np.float32)


class _World:
    """Everything fixed per seed: latent class / distractor directions, the latent-to-feature maps
    of the three streams and their mean vectors."""

    def __init__(self, seed: int, spec: FeatureSpec, num_classes: int):
        with _single_threaded_blas():
            self._build(seed, spec, num_classes)

    def _build(self, seed: int, spec: FeatureSpec, num_classes: int) -> None:
        rng = np.random.default_rng(np.random.SeedSequence([seed, 0, 0, _RNG_WORLD, 0]))
        self.class_a = _unit_rows(rng.standard_normal((num_classes, _LATENT)))
        self.class_v = _unit_rows(rng.standard_normal((num_classes, _LATENT)))
        self.dis_a = _unit_rows(rng.standard_normal((_DISTRACTORS, _LATENT)))
        self.dis_v = _unit_rows(rng.standard_normal((_DISTRACTORS, _LATENT)))
        self.map_a = _embedding(rng, spec.audio_dim)
        self.map_2 = _embedding(rng, spec.visual_2d_dim)
        self.map_3 = _embedding(rng, spec.visual_3d_dim)
        self.mean_a = (0.5 * rng.standard_normal(spec.audio_dim)).astype(np.float32)
        self.mean_2 = rng.gamma(2.0, 0.25, spec.visual_2d_dim).astype(np.float32)
        self.mean_3 = rng.gamma(2.0, 0.25, spec.visual_3d_dim).astype(np.float32)


def _video_features(world: _World, rng: np.random.Generator, audio: np.ndarray, visual: np.ndarray,
                    spec: FeatureSpec, params: SynthParams, frames: int, pool: bool
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One video's (vggish, res152, r2plus1d) float32 arrays from its dense (T, C) masks."""
    f32 = np.float32
    t, c = audio.shape
    sig, noise, ctx = f32(params.signal), f32(params.noise), f32(params.context)
    normal = rng.standard_normal
    feat_sd = f32(_FEATURE_NOISE) * noise

    # --- audio latent: only the events heard
    strength_a = sig * np.exp(f32(_VIDEO_JITTER) * normal(c, dtype=f32))                   # (C,)
    amp_a = audio * strength_a * np.exp(f32(_SEGMENT_JITTER) * normal((t, c), dtype=f32))  # (T, C)
    z_a = noise * normal((t, _LATENT), dtype=f32)
    z_a += f32(_SCENE_SD) * noise * normal(_LATENT, dtype=f32)
    z_a += (ctx * strength_a * audio.any(0)).astype(f32) @ world.class_a
    z_a += amp_a.astype(f32) @ world.class_a
    on = rng.random((t, _DISTRACTORS)) < _DISTRACTOR_RATE
    z_a += (on * f32(_DISTRACTOR_GAIN) * sig).astype(f32) @ world.dis_a
    x_a = feat_sd * normal((t, spec.audio_dim), dtype=f32)
    x_a += z_a @ world.map_a
    x_a += world.mean_a

    # --- visual latent: only the events seen; per frame for res152
    strength_v = f32(_VISUAL_GAIN) * sig * np.exp(f32(_VIDEO_JITTER) * normal(c, dtype=f32))
    amp_f = (visual[:, None, :] * strength_v
             * np.exp(f32(_SEGMENT_JITTER) * normal((t, frames, c), dtype=f32))).astype(f32)  # (T, F, C)
    z_v = noise * normal((t, _LATENT), dtype=f32)                                          # (T, L)
    z_v += f32(_SCENE_SD) * noise * normal(_LATENT, dtype=f32)
    z_v += (ctx * strength_v * visual.any(0)).astype(f32) @ world.class_v
    on = rng.random((t, _DISTRACTORS)) < _DISTRACTOR_RATE
    z_v += (on * f32(_DISTRACTOR_GAIN) * sig).astype(f32) @ world.dis_v
    z_f = f32(_FRAME_NOISE) * noise * normal((t, frames, _LATENT), dtype=f32)
    z_f += z_v[:, None, :]
    z_f += (amp_f.reshape(t * frames, c) @ world.class_v).reshape(t, frames, _LATENT)
    x_2 = feat_sd * normal((t * frames, spec.visual_2d_dim), dtype=f32)
    x_2 += z_f.reshape(t * frames, _LATENT) @ world.map_2
    x_2 *= f32(_VISUAL_SCALE)
    x_2 += world.mean_2
    np.maximum(x_2, 0, out=x_2)
    if pool:
        x_2 = x_2.reshape(t, frames, -1).mean(axis=1, dtype=f32)

    # --- r2plus1d: the same visual latent, its class signal smoothed over neighbouring seconds
    amp_3 = amp_f.mean(axis=1)
    if t > 1:
        k0, k1, k2 = (f32(w) for w in _SMOOTH_3D)
        smooth = k1 * amp_3
        smooth[1:] += k0 * amp_3[:-1]
        smooth[:-1] += k2 * amp_3[1:]
        amp_3 = smooth
    z_3 = f32(_OWN_3D_NOISE) * noise * normal((t, _LATENT), dtype=f32)
    z_3 += z_v
    z_3 += amp_3 @ world.class_v
    x_3 = feat_sd * normal((t, spec.visual_3d_dim), dtype=f32)
    x_3 += z_3 @ world.map_3
    x_3 *= f32(_VISUAL_SCALE)
    x_3 += world.mean_3
    np.maximum(x_3, 0, out=x_3)
    return (np.ascontiguousarray(x_a, dtype=f32), np.ascontiguousarray(x_2, dtype=f32),
            np.ascontiguousarray(x_3, dtype=f32))


# --------------------------------------------------------------------------------------------
# Dataset assembly
# --------------------------------------------------------------------------------------------

@dataclass
class _Video:
    split: str
    index: int
    filename: str
    weak_text: str          # the event_labels field as written
    audio: np.ndarray       # (T, C) bool dense truth
    visual: np.ndarray

    @property
    def vid(self) -> str:
        return video_id(self.filename)


def _dense_rows(video: _Video, mask: np.ndarray, order: Sequence[int]) -> list[str]:
    rows = []
    for c in order:
        on, off = _runs(mask[:, c])
        rows += [f"{video.filename}\t{a}\t{b}\t{LLP_CLASSES[c]}" for a, b in zip(on, off)]
    return rows


def _class_order(video: _Video) -> list[int]:
    """Weak classes in label order, then any other class with dense truth (index order)."""
    order = []
    for name in video.weak_text.split(","):
        c = LLP_CLASSES.index(name.strip()) if name.strip() in LLP_CLASSES else None
        if c is not None and c not in order:
            order.append(c)
    extra = np.flatnonzero(video.audio.any(0) | video.visual.any(0))
    return order + [int(c) for c in extra if int(c) not in order]


def _coded_videos(counts: dict[str, int], seed: int, t: int) -> list[_Video]:
    stats = CODED_LLP_STATS
    c = len(LLP_CLASSES)
    labels = _LabelModel(stats, c)
    layouts = _LayoutModel(stats, t, c)
    used: set[str] = set()
    videos = []
    for split in SPLITS:
        for i in range(counts[split]):
            attempt = 0
            while True:
                rng = _video_rng(seed, split, i, _RNG_ID, attempt)
                vid = _make_id(rng)
                if vid not in used:
                    break
                attempt += 1
            used.add(vid)
            filename = labels.filename(rng, vid, t)
            classes = labels.weak(_video_rng(seed, split, i, _RNG_WEAK), split)
            audio, visual = layouts.sample(_video_rng(seed, split, i, _RNG_LAYOUT), classes, c)
            videos.append(_Video(split, i, filename, ",".join(LLP_CLASSES[k] for k in classes),
                                 audio, visual))
    return videos


def _raw_rows(path: Path, columns: tuple[str, ...]) -> list[list[str]]:
    """Data rows of an LLP tab-separated file as the named fields, verbatim, in file order."""
    with open(path, newline="", encoding="utf-8") as fh:
        lines = list(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
    header = [h.strip() for h in lines[0]]
    where = [header.index(col) for col in columns]
    return [[fields[i] for i in where] for fields in lines[1:] if fields]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _annotated_videos(ann: Path, counts: dict[str, int | None], seed: int, t: int
                      ) -> tuple[list[_Video], dict[str, int], dict]:
    """Videos from a real LLP annotation folder: first N rows per split, real labels/dense truth."""
    loaded = {s: load_split(ann, s, t) for s in SPLITS}
    resolved = {}
    for split in SPLITS:
        n, have = counts[split], len(loaded[split])
        if n is None:
            n = have
        if n > have:
            raise UserError(f"--{split} {n}: {ann / SPLIT_FILES[split]} has only {have} videos "
                            f"(use 'all' for the whole split)")
        resolved[split] = n
    stats = _statistics_from_splits(loaded["train"], loaded["val"], loaded["test"], t)
    layouts = _LayoutModel(stats, t, len(LLP_CLASSES))
    source_files = {}
    videos: list[_Video] = []
    seen: dict[str, str] = {}
    for split in SPLITS:
        data = loaded[split]
        path = ann / SPLIT_FILES[split]
        source_files[SPLIT_FILES[split]] = _sha256(path)
        raw = _raw_rows(path, ("filename", "event_labels"))
        for i in range(resolved[split]):
            name, labels = raw[i]
            if name != data.filenames[i]:
                raise DataError(f"{path}: row {i + 2} is {name!r}, expected {data.filenames[i]!r}")
            vid = video_id(name)
            if vid in seen:
                raise DataError(f"{path}: video id {vid!r} of {name!r} is also {seen[vid]!r}: "
                                f"their feature files would collide")
            seen[vid] = name
            if data.dense_audio is not None:
                audio, visual = data.dense_audio[i] > 0, data.dense_visual[i] > 0
            else:
                classes = [int(c) for c in np.flatnonzero(data.weak_labels[i])]
                audio, visual = layouts.sample(_video_rng(seed, split, i, _RNG_LAYOUT), classes,
                                               len(LLP_CLASSES))
            videos.append(_Video(split, i, name, labels, audio, visual))
    dense_source = {}
    for split in SPLITS:
        files = ((TRAIN_DENSE_AUDIO_FILE, TRAIN_DENSE_VISUAL_FILE) if split == "train"
                 else (DENSE_AUDIO_FILE, DENSE_VISUAL_FILE))
        if loaded[split].dense_audio is not None:
            dense_source[split] = "source"
            for name in files:
                source_files[name] = _sha256(ann / name)
        else:
            dense_source[split] = "sampled from the source's val+test statistics"
    info = {"source_files": dict(sorted(source_files.items())), "dense_truth": dense_source,
            "selection": "first N rows of each split in file order"}
    return videos, resolved, info


def _write_text(path: Path, header: str, rows: Sequence[str]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        fh.write(header + "\n")
        if rows:
            fh.write("\n".join(rows) + "\n")


def _write_annotations(root: Path, videos: list[_Video], copy_dense: dict[str, Path]) -> None:
    """Weak and dense CSVs. Dense rows of a split in ``copy_dense`` are copied from that source
    folder verbatim (file order, the chosen videos only); other splits' rows come from the masks."""
    by_split = {s: [v for v in videos if v.split == s] for s in SPLITS}
    for split in SPLITS:
        _write_text(root / SPLIT_FILES[split], _WEAK_HEADER,
                    [f"{v.filename}\t{v.weak_text}" for v in by_split[split]])
    _write_text(root / DATASET_FULL_FILE, _WEAK_HEADER,
                [f"{v.filename}\t{v.weak_text}" for s in SPLITS for v in by_split[s]])
    groups = ((("train",), (TRAIN_DENSE_AUDIO_FILE, TRAIN_DENSE_VISUAL_FILE)),
              (("val", "test"), (DENSE_AUDIO_FILE, DENSE_VISUAL_FILE)))
    for splits, names in groups:
        for m, name in enumerate(names):
            copied = [s for s in splits if s in copy_dense]
            rows = []
            if copied:  # one pass over the source file keeps its row order across splits
                wanted = {v.filename for s in copied for v in by_split[s]}
                src = copy_dense[copied[0]] / name
                rows += ["\t".join(r) for r in _raw_rows(src, _DENSE_COLUMNS) if r[0] in wanted]
            for split in splits:
                if split not in copy_dense:
                    for v in by_split[split]:
                        rows += _dense_rows(v, v.audio if m == 0 else v.visual, _class_order(v))
            _write_text(root / name, _DENSE_HEADER, rows)


def _check_target(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise UserError(f"--out {out}: directory exists and is not empty (pass --overwrite to replace it)")
        if not (out / "synth.json").is_file():
            raise UserError(f"--out {out}: refusing to overwrite a non-empty directory that is not "
                            f"a synth output (no synth.json)")


def _commit(tmp: Path, out: Path, overwrite: bool) -> None:
    _check_target(out, overwrite)
    swap_in(tmp, out)


def _resolve_count(name: str, value, annotations: bool) -> int | None:
    if value is None or (isinstance(value, str) and value.strip().lower() == "all"):
        return None if annotations else LLP_SPLIT_SIZES[name]
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        try:
            value = int(str(value).strip())
        except ValueError:
            raise UserError(f"--{name}: expected a number of videos >= 0 or 'all', got {value!r}") from None
    if value < 0:
        raise UserError(f"--{name}: expected a number of videos >= 0 or 'all', got {value}")
    return int(value)


def generate(out_dir: str | os.PathLike, annotations: str | os.PathLike | None = None,
             n_train: int | str | None = 1000, n_val: int | str | None = 200,
             n_test: int | str | None = 200, seed: int = 0, spec: FeatureSpec = FeatureSpec(),
             signal: float = SynthParams.signal, noise: float = SynthParams.noise,
             context: float = SynthParams.context, pool: bool = False, overwrite: bool = False,
             num_threads: int | None = None) -> dict:
    """Write a synthetic LLP-layout dataset to ``out_dir``; return its summary (synth.json + timing).

    ``n_*``: videos per split, or ``'all'``/None (the whole split with ``annotations``, LLP's
    split size without). ``spec``: feature shapes; ``spec.frames_per_segment`` res152 frames are
    generated per segment, stored as they are or averaged when ``pool``. See the module docstring
    for the label, layout and feature models.
    """
    t0 = time.perf_counter()
    spec.validate()
    try:
        params = SynthParams(float(signal), float(noise), float(context)).validate()
    except (TypeError, ValueError) as err:
        if isinstance(err, UserError):
            raise
        raise UserError(f"signal/noise/context: must be numbers ({err})") from None
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UserError(f"--seed: must be an integer >= 0, got {seed!r}")
    seed = int(seed)
    threads = num_threads if num_threads is not None else max(1, min(4, os.cpu_count() or 1))
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise UserError(f"--threads: must be an integer >= 1, got {num_threads!r}")
    ann = Path(annotations) if annotations is not None else None
    if ann is not None and not ann.is_dir():
        raise UserError(f"--annotations {ann}: not a directory")
    counts = {s: _resolve_count(s, n, ann is not None)
              for s, n in (("train", n_train), ("val", n_val), ("test", n_test))}
    out = Path(out_dir)
    _check_target(out, overwrite)

    t = spec.num_segments
    if ann is None:
        videos = _coded_videos(counts, seed, t)
        info = {"source": "coded LLP statistics (distributed.synth.CODED_LLP_STATS)",
                "dense_truth": {s: "sampled" for s in SPLITS}}
    else:
        videos, counts, ann_info = _annotated_videos(ann, counts, seed, t)
        info = {"source": "LLP annotations", **ann_info}

    frames = spec.frames_per_segment
    file_spec = replace(spec, frames_per_segment=1) if pool else spec
    summary = {
        "generator": "ppl-avvp synth",
        "version": GENERATOR_VERSION,
        "seed": seed,
        "counts": {s: counts[s] for s in SPLITS},
        "params": {"signal": params.signal, "noise": params.noise, "context": params.context},
        "feature_spec": file_spec.to_dict(),
        "generated_frames_per_segment": frames,
        "pooled_res152": bool(pool),
        "feature_dirs": dict(FEATURE_DIRS),
        "classes": list(LLP_CLASSES),
        **info,
    }

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.synth-tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        (tmp / "annotations").mkdir(parents=True)
        for sub in FEATURE_DIRS.values():
            (tmp / "features" / sub).mkdir(parents=True)
        world = _World(seed, spec, len(LLP_CLASSES))

        def write_one(v: _Video) -> int:
            rng = _video_rng(seed, v.split, v.index, _RNG_FEATURES)
            arrays = _video_features(world, rng, v.audio, v.visual, spec, params, frames, pool)
            size = 0
            for key, arr in zip(("audio", "visual_2d", "visual_3d"), arrays):
                path = feature_path(tmp / "features", v.vid, key)
                with open(path, "wb") as fh:
                    np.lib.format.write_array(fh, arr, allow_pickle=False)
                size += arr.nbytes
            return size

        with _single_threaded_blas():
            if threads == 1:
                nbytes = sum(map(write_one, videos))
            else:
                with ThreadPoolExecutor(max_workers=threads) as pool_:
                    nbytes = sum(pool_.map(write_one, videos))
        copy_dense = {s: ann for s, how in info["dense_truth"].items() if how == "source"}
        _write_annotations(tmp / "annotations", videos, copy_dense)
        (tmp / "synth.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n",
                                        encoding="utf-8")
        _commit(tmp, out, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {**summary, "out_dir": str(out), "feature_bytes": int(nbytes),
            "seconds": round(time.perf_counter() - t0, 3)}
