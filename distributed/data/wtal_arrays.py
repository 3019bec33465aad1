"""In-memory W-TAL data path (THUMOS14 layout: annotations + two-stream I3D features), variable length.

Videos keep their own number of snippets T (13 to 2,614 on THUMOS14). Batches are padded with zeros to a
common length and carry ``mask`` (B, L) bool, True = a real snippet; the model never lets the padding reach
attention, pooling, prototypes or losses (``model.network``, ``model.masking``).

Training (``data.train_snippets`` = L > 0, the peers' fixed-length sampling; **ours** in detail): a video
longer than L is cut into L equal bins over its snippets and one random snippet is drawn from each bin, in
time order (CO2-Net's ``random_perturb``); a video of at most L snippets is used whole and padded to L. With
L = 0 every training video is used whole, padded to the longest one of its batch. Evaluation always uses
whole videos, padded to the longest of the batch. Draws are deterministic by (seed, epoch, video row).

Batch layout: ``rgb``, ``flow`` (B, L, D) float32, ``mask`` (B, L) bool, ``weak_labels`` (B, C),
``dense_audio`` = ``dense_visual`` (B, L, C) the per-snippet truth of protocol A (``round(t * 25 / 16)``)
at the snippets taken — an action is both seen and moving, so both streams share it; it feeds only the
pseudo-labels' F1 — ``split_row`` (B,) int64, ``length`` (B,) int64, ``video_id`` list[str].
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from distributed.common.errors import ConfigError, DataError
from distributed.data.arrays import batches_per_rank
from distributed.data.thumos14 import PROTOCOLS, Thumos14Split, load_thumos14
from distributed.data.wtal_features import read_split_features
from model.localization import Segments


@dataclass
class WTALSplit:
    """One split in memory; rows in ``Thumos14Split.videos`` order."""

    annotations: Thumos14Split
    rgb: list[np.ndarray]
    flow: list[np.ndarray]
    dense: list[np.ndarray]          # (T_i, C) float32 per-snippet truth (protocol A snippets)

    def __len__(self) -> int:
        return len(self.rgb)

    @property
    def lengths(self) -> np.ndarray:
        return np.array([len(r) for r in self.rgb], dtype=np.int64)

    def batch(self, rows: Sequence[int], picks: Sequence[np.ndarray] | None = None, length: int = 0) -> dict:
        """Rows padded to ``length`` (0 = the longest taken); ``picks[i]``: which snippets of row i to take."""
        rows = [int(r) for r in rows]
        videos = [(self.rgb[r], self.flow[r], self.dense[r]) for r in rows]
        return collate_videos(videos, self.annotations.labels[rows], rows,
                              [self.annotations.videos[r] for r in rows], picks, length)


def collate_videos(videos: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], weak_labels: np.ndarray,
                   rows: Sequence[int], video_ids: Sequence[str], picks: Sequence[np.ndarray] | None = None,
                   length: int = 0) -> dict:
    """One padded batch (module doc) from per-video (rgb, flow, dense) arrays; the shard reader's too."""
    taken = [np.arange(len(v[0])) if picks is None else picks[i] for i, v in enumerate(videos)]
    width = length or max(len(t) for t in taken)
    n, dim, classes = len(videos), videos[0][0].shape[1], videos[0][2].shape[1]
    rgb = np.zeros((n, width, dim), np.float32)
    flow = np.zeros((n, width, videos[0][1].shape[1]), np.float32)
    dense = np.zeros((n, width, classes), np.float32)
    mask = np.zeros((n, width), bool)
    for i, ((r_arr, f_arr, d_arr), t) in enumerate(zip(videos, taken)):
        k = len(t)
        rgb[i, :k], flow[i, :k], dense[i, :k] = r_arr[t], f_arr[t], d_arr[t]
        mask[i, :k] = True
    dense_t = torch.from_numpy(dense)
    return {"rgb": torch.from_numpy(rgb), "flow": torch.from_numpy(flow), "mask": torch.from_numpy(mask),
            "weak_labels": torch.from_numpy(np.ascontiguousarray(weak_labels, dtype=np.float32)),
            "dense_audio": dense_t, "dense_visual": dense_t.clone(),
            "split_row": torch.tensor([int(r) for r in rows], dtype=torch.int64),
            "length": torch.tensor([len(t) for t in taken], dtype=torch.int64),
            "video_id": list(video_ids)}


def dense_truth(split: Thumos14Split, lengths: Sequence[int]) -> list[np.ndarray]:
    """Per video (T_i, C): 1 where a ground-truth instance covers the snippet (``[round(s·25/16), round(e·25/16))``)."""
    return dense_from_snippets(split.ground_truth("snippets"), lengths, len(split.classes))


def dense_from_snippets(gt: Segments, lengths: Sequence[int], num_classes: int) -> list[np.ndarray]:
    """``dense_truth`` from snippet-unit instances (``gt.video`` = index into ``lengths``); the shard writer's too."""
    out = [np.zeros((t, num_classes), np.float32) for t in lengths]
    for v, c, s, e in zip(gt.video, gt.label, gt.start, gt.end):
        out[v][int(max(s, 0)):int(max(e, 0)), c] = 1.0
    return out


def load_wtal_split(annotations: str, features: str, split: str, test_set: str, dim: int,
                    limit: int = 0) -> WTALSplit:
    ann = load_thumos14(annotations, split, test_set=test_set)
    if limit and limit < len(ann):
        ann = _first(ann, limit)
    if len(ann) == 0:
        raise DataError(f"{annotations}: THUMOS14 split {split!r} has no annotated videos")
    streams = read_split_features(features, ann.videos, ann.duration, dim=dim)
    rgb, flow = [s[0] for s in streams], [s[1] for s in streams]
    return WTALSplit(ann, rgb, flow, dense_truth(ann, [len(r) for r in rgb]))


def _first(ann: Thumos14Split, n: int) -> Thumos14Split:
    """The split's first ``n`` videos (data.limit_train), instances renumbered with them."""
    from dataclasses import replace

    keep = ann.instances.video < n
    return replace(ann, videos=ann.videos[:n], duration=ann.duration[:n], fps=ann.fps[:n], labels=ann.labels[:n],
                   instances=ann.instances.take(keep), ambiguous=ann.ambiguous[:n])


def stratified_snippets(length: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` snippets of a ``length``-snippet video: all of them if it is not longer, else one random
    snippet from each of ``count`` equal bins, in time order (CO2-Net's ``random_perturb``)."""
    if length <= count:
        return np.arange(length)
    edges = (np.arange(count + 1) * length) // count                # every bin holds >= 1 snippet
    return edges[:-1] + (rng.random(count) * (edges[1:] - edges[:-1])).astype(np.int64)


class WTALData:
    """The worker loop's view of a THUMOS14-layout data set: train = the annotated validation videos,
    test = the protocol's test videos (``data.protocol``). There is no val split: the loop scores test
    every epoch and reports the last and the best-on-test epoch, labelled as such (the peers' practice)."""

    def __init__(self, cfg, rank: int, world_size: int):
        d, m = cfg.data, cfg.model
        if d.protocol not in PROTOCOLS:
            raise ConfigError(f"data.protocol: must be one of {', '.join(PROTOCOLS)}, got {d.protocol!r}")
        if m.rgb_dim != m.flow_dim:
            raise ConfigError(f"model.flow_dim: {m.flow_dim} differs from model.rgb_dim={m.rgb_dim}; the I3D "
                              f"feature reader takes one width for both streams")
        self.protocol = PROTOCOLS[d.protocol]
        self.splits = {"train": load_wtal_split(d.annotations, d.features, "train", self.protocol.test_set,
                                                m.rgb_dim, limit=d.limit_train),
                       "test": load_wtal_split(d.annotations, d.features, "test", self.protocol.test_set, m.rgb_dim)}
        for split in self.splits.values():
            if len(split.annotations.classes) != m.num_classes:
                raise ConfigError(f"model.num_classes: {m.num_classes}, but {d.annotations} names "
                                  f"{len(split.annotations.classes)} classes")
        self.batch_size, self.eval_batch_size = d.batch_size, d.eval_batch_size
        self.train_snippets = d.train_snippets
        self.rank, self.world_size, self.seed = rank, world_size, cfg.seed
        self.num_train_batches = batches_per_rank(len(self.splits["train"]), self.batch_size, world_size)

    def train(self, epoch: int, skip_batches: int = 0) -> Iterator[dict]:
        split = self.splits["train"]
        lengths = split.lengths
        for rows in train_rows(len(split), self.batch_size, self.rank, self.world_size, self.seed, epoch,
                               skip_batches):
            yield split.batch(rows, *train_picks(rows, lengths, self.train_snippets, self.seed, epoch))

    def eval(self, split: str) -> Iterator[dict]:
        if split not in self.splits:
            return iter(())
        data = self.splits[split]
        return (data.batch(rows) for rows in eval_rows(len(data), self.eval_batch_size, self.rank, self.world_size))


def train_rows(num_videos: int, batch_size: int, rank: int, world_size: int, seed: int, epoch: int,
               skip_batches: int = 0) -> Iterator[list[int]]:
    """This rank's training batches as split rows: one permutation per (seed, epoch), rank r takes every
    world_size-th video, equal full batches on every rank (the shard reader reads the same rows)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(num_videos, generator=generator)[rank::world_size].tolist()
    for step in range(skip_batches, batches_per_rank(num_videos, batch_size, world_size)):
        yield order[step * batch_size:(step + 1) * batch_size]


def train_picks(rows: Sequence[int], lengths: Sequence[int], train_snippets: int, seed: int,
                epoch: int) -> tuple[list[np.ndarray] | None, int]:
    """(picks, padded length) for a training batch: ``train_snippets`` snippets per video drawn by
    (seed, epoch, row), or whole videos (None, 0) when it is 0."""
    if not train_snippets:
        return None, 0
    return [stratified_snippets(int(lengths[r]), train_snippets, np.random.default_rng([seed, epoch, r]))
            for r in rows], train_snippets


def eval_rows(num_videos: int, batch_size: int, rank: int, world_size: int) -> Iterator[list[int]]:
    """This rank's evaluation batches as split rows: every world_size-th video, whole; every video once over ranks."""
    rows = list(range(rank, num_videos, world_size))
    return (rows[i:i + batch_size] for i in range(0, len(rows), batch_size))
