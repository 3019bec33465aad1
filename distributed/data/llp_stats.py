"""Counts describing LLP's labels and event layouts: what ``ppl-avvp synth`` samples from.

:data:`CODED_LLP_STATS` holds them as numbers (facts about LLP, not its files), so the generator
works without the annotation files; :func:`llp_statistics` recomputes them from an LLP annotation
folder (``tests/test_synth.py`` checks the two agree on the real files).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from distributed.data.llp import SPLIT_FILES, LLPSplit, load_split
from model.metrics import extract_events

__all__ = ["LLPStats", "CODED_LLP_STATS", "llp_statistics", "statistics_from_splits"]


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


def statistics_from_splits(train: LLPSplit, val: LLPSplit, test: LLPSplit, num_segments: int) -> LLPStats:
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
            starts, ends, is_run = extract_events(masks[m])                      # (K,) each
            on, off = starts[is_run], ends[is_run]
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
    splits = {s: load_split(annotation_dir, s, num_segments) for s in SPLIT_FILES}
    return statistics_from_splits(splits["train"], splits["val"], splits["test"], num_segments)


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
