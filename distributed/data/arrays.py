"""In-memory data path: an LLP-layout folder loaded whole, split across ranks with equal batch counts.

The shard path (``distributed.data.shards``) is the one for large collections; this one is for
single machines and small sets, and yields batches in the same dict layout:
``audio`` (B,T,Da), ``visual_2d`` (B,T,D2), ``visual_3d`` (B,T,D3), ``weak_labels`` (B,C),
``dense_audio``/``dense_visual`` (B,T,C) where known, ``split_row`` (B,) int64 (the video's row in
the split's annotation CSV, to put gathered predictions back in order), ``video_id`` list[str].
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from distributed.common.errors import DataError
from distributed.data.features import FeatureSpec, load_features
from distributed.data.llp import LLPSplit, load_split

Batch = dict


@dataclass
class ArraySplit:
    """A split held in memory as tensors; rows in annotation order."""

    video_ids: list[str]
    tensors: dict[str, torch.Tensor]

    def __len__(self) -> int:
        return len(self.video_ids)

    def batch(self, index: torch.Tensor | np.ndarray) -> Batch:
        index = torch.as_tensor(index, dtype=torch.long)
        out = {key: value[index] for key, value in self.tensors.items()}
        out["video_id"] = [self.video_ids[i] for i in index.tolist()]
        return out

    @property
    def has_dense_truth(self) -> bool:
        return "dense_audio" in self.tensors


def load_array_split(annotations: str, features: str, split: str, spec: FeatureSpec, limit: int = 0) -> ArraySplit:
    """Annotations + features of one split, frames pooled per segment (exact for the linear projection)."""
    ann: LLPSplit = load_split(annotations, split, num_segments=spec.num_segments)
    ids = ann.video_ids[:limit] if limit else ann.video_ids
    n = len(ids)
    if n == 0:
        raise DataError(f"{annotations}: split {split!r} has no videos")
    arrays = load_features(features, ids, spec, pool_frames=True)
    tensors = {key: torch.from_numpy(np.ascontiguousarray(value)) for key, value in arrays.items()}
    tensors["weak_labels"] = torch.from_numpy(ann.weak_labels[:n])
    tensors["split_row"] = torch.arange(n, dtype=torch.int64)        # rows are in CSV order
    if ann.dense_audio is not None and ann.dense_visual is not None:
        tensors["dense_audio"] = torch.from_numpy(ann.dense_audio[:n])
        tensors["dense_visual"] = torch.from_numpy(ann.dense_visual[:n])
    return ArraySplit(ids, tensors)


def batches_per_rank(num_videos: int, batch_size: int, world_size: int) -> int:
    """Every rank runs the same number of full batches (uneven ranks would hang collectives)."""
    per_rank = num_videos // world_size
    if per_rank < batch_size:
        raise DataError(f"train split: {num_videos} videos give {per_rank} per rank for {world_size} rank(s), "
                        f"fewer than data.batch_size={batch_size}; lower the batch size or the worker count")
    return per_rank // batch_size


def train_batches(data: ArraySplit, batch_size: int, rank: int, world_size: int, epoch: int, seed: int,
                  skip_batches: int = 0) -> Iterator[Batch]:
    """Deterministic by (seed, epoch): one global permutation, rank r takes every world_size-th video."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(len(data), generator=generator)[rank::world_size]
    count = batches_per_rank(len(data), batch_size, world_size)
    for step in range(skip_batches, count):
        yield data.batch(order[step * batch_size:(step + 1) * batch_size])


def eval_batches(data: ArraySplit, batch_size: int, rank: int, world_size: int) -> Iterator[Batch]:
    """Every video exactly once across ranks (rank r takes rows r, r+W, ...); counts may differ by one."""
    rows = torch.arange(rank, len(data), world_size)
    for start in range(0, len(rows), batch_size):
        yield data.batch(rows[start:start + batch_size])


class ArrayData:
    """The worker loop's view of an in-memory LLP-layout dataset (every rank loads it; fine up to ~10k videos)."""

    def __init__(self, cfg, rank: int, world_size: int):
        spec = FeatureSpec(num_segments=cfg.model.num_segments, audio_dim=cfg.model.audio_dim,
                           visual_2d_dim=cfg.model.visual_2d_dim, visual_3d_dim=cfg.model.visual_3d_dim)
        d = cfg.data
        self.splits = {split: load_array_split(d.annotations, d.features, split, spec,
                                               limit=d.limit_train if split == "train" else 0)
                       for split in ("train", "val", "test")}
        self.batch_size, self.eval_batch_size = d.batch_size, d.eval_batch_size
        self.rank, self.world_size, self.seed = rank, world_size, cfg.seed
        self.num_train_batches = batches_per_rank(len(self.splits["train"]), self.batch_size, world_size)

    def train(self, epoch: int, skip_batches: int = 0) -> Iterator[Batch]:
        return train_batches(self.splits["train"], self.batch_size, self.rank, self.world_size, epoch, self.seed,
                             skip_batches)

    def eval(self, split: str) -> Iterator[Batch]:
        return eval_batches(self.splits[split], self.eval_batch_size, self.rank, self.world_size)
