"""The annotation side of ``ppl-avvp synth``: ids, filenames, weak labels and dense event layouts,
sampled from LLP's statistics (:mod:`distributed.data.llp_stats`).

Labels (no ``--annotations``): video ids are 11 characters of YouTube's alphabet (``A-Za-z0-9-_``;
some contain ``-``/``_`` or start with ``-``), filenames are ``<id>_<start>_<end>`` with LLP's start
times; train weak labels are drawn from LLP's train label-set frequencies (which carry class
frequencies and co-occurrence), val/test ones from LLP's val/test label-count distribution (they
have more labels per video).

Layout model (per weak class c; statistics per class from LLP val+test): modality = audio only /
visual only / both with LLP's per-class rates (Speech is heard far more often than seen, Car seen
more than heard, ...); per present modality the event covers all T seconds with the class's
LLP rate, else 1-4 runs (truncated-geometric count and length matched to the class's LLP means),
placed at random with LLP's excess of events touching the clip start/end; when both modalities
hold a partial event, the visual layout copies the audio one at LLP's rate (61%). Every weak class
so gets an event in at least one modality.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from distributed.common.errors import ConfigError
from distributed.data.llp_stats import LLPStats

_MAX_RUNS = 4


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


class LayoutModel:
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


class LabelModel:
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


def make_id(rng: np.random.Generator) -> str:
    """An 11-character YouTube-style id."""
    body = rng.integers(0, len(_ID_ALPHABET), size=10)
    return "".join(_ID_ALPHABET[i] for i in body) + _ID_LAST[int(rng.integers(0, len(_ID_LAST)))]
