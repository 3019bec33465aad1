"""Shard arithmetic: which samples each rank and loader worker reads (pure functions of the manifest).

All shard arithmetic lives here (as OpenCLIP's ``data.py``). Nothing asks the environment who it
is: ``rank``/``world_size`` are arguments and the loader-worker id comes from torch.

Training epoch (no resampling). The manifest's shards are permuted by ``(seed, epoch)`` and their
samples laid end to end. Every rank runs ``L = floor(samples / (world_size * batch_size))`` batches:
rank r reads positions ``[r*L*B, (r+1)*L*B)`` of that sequence (a range may start or end inside a
shard; the reader skips to the start and stops at the end), the last ``samples - world_size*L*B``
positions are dropped (a different tail each epoch). Inside a rank, loader worker w gets a
contiguous run of ``L//W (+1 for the first L%W workers)`` batches; its samples are shuffled inside
blocks of ``shuffle_buffer`` positions with a permutation seeded by ``(seed, epoch, rank, worker,
block)``. The torch DataLoader hands out worker batches round-robin, so output batch j is batch
``j // W`` of worker ``j % W``: the order is fixed by ``(seed, epoch, world_size, num_workers,
batch_size, shuffle_buffer)`` and ``skip_batches=k`` resumes at output batch k exactly, decoding
nothing before it. With ``resample=True`` each worker draws shards with replacement (probability
proportional to their sample counts) from an RNG seeded the same way, for a fixed epoch length.

Evaluation. ``eval_assignment`` gives rank r the positions ``[floor(r*N/W), floor((r+1)*N/W))`` of
the manifest order (no shuffle): every video exactly once over the ranks; ranks differ by at most
one video and so by at most one batch. Every batch carries ``split_row`` (each video's row in the
split's annotation CSV), so predictions gathered from any number of ranks and sorted by it are in
the split's order.
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from distributed.common.errors import ConfigError, DataError
from distributed.data.shards.manifest import load_keys, load_manifest

# Fixed entropy words so the different random streams of one (seed, epoch) never coincide.
_SALT_SHARD_ORDER, _SALT_RESAMPLE = 0x5A4D, 0x2E5A

Plan = list[tuple[list["Segment"], int]]   # per loader worker: (segments to read in order, batches to make)


@dataclass(frozen=True)
class Segment:
    """Samples ``[start, stop)`` (positions inside the shard) of manifest shard ``shard``."""

    shard: int
    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start


def check_int(name: str, value: Any, low: int) -> int:
    """``value`` as an int >= ``low``, or a ConfigError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ConfigError(f"{name}: must be an integer >= {low}, got {value!r}")
    return int(value)


def _check_rank(rank: int, world_size: int) -> None:
    check_int("world_size", world_size, 1)
    check_int("rank", rank, 0)
    if rank >= world_size:
        raise ConfigError(f"rank: {rank} is not below world_size={world_size}")


def _counts(manifest: dict) -> list[int]:
    return [int(s["count"]) for s in manifest["shards"]]


def _positions_to_segments(order: Sequence[int], counts: Sequence[int], lo: int, hi: int) -> list[Segment]:
    """Positions ``[lo, hi)`` of the shards in ``order`` laid end to end, as per-shard segments."""
    segments, offset = [], 0
    for shard in order:
        n = counts[shard]
        a, b = max(lo, offset), min(hi, offset + n)
        if a < b:
            segments.append(Segment(int(shard), a - offset, b - offset))
        offset += n
        if offset >= hi:
            break
    return segments


def _worker_batches(num_batches: int, num_workers: int) -> list[int]:
    """Batches per loader worker: contiguous runs, the first ``num_batches % W`` get one more."""
    base, extra = divmod(num_batches, num_workers)
    return [base + (1 if w < extra else 0) for w in range(num_workers)]


def worker_skips(skip_batches: int, per_worker: Sequence[int]) -> list[int]:
    """Batches each worker skips so the round-robin output resumes at output batch ``skip_batches``."""
    w_count = len(per_worker)
    return [min(per_worker[w], len(range(w, skip_batches, w_count))) for w in range(w_count)]


def train_batches_per_epoch(manifest: dict | str | os.PathLike, batch_size: int, world_size: int,
                            samples_per_epoch: int | None = None, resample: bool = False) -> int:
    """Batches every rank runs per epoch: ``floor(samples / (world_size * batch_size))``.

    ``samples`` is ``samples_per_epoch`` or, by default, the manifest total. Without resampling
    the epoch cannot be longer than the data.
    """
    manifest = load_manifest(manifest)
    check_int("batch_size", batch_size, 1)
    check_int("world_size", world_size, 1)
    total = int(manifest["num_samples"])
    samples = total if samples_per_epoch is None else check_int("samples_per_epoch", samples_per_epoch, 1)
    if samples > total and not resample:
        raise ConfigError(f"samples_per_epoch: {samples} is more than the {total} samples of the "
                          f"shards; pass resample=True for longer epochs")
    batches = samples // (world_size * batch_size)
    if batches < 1:
        raise DataError(f"{manifest['split']} shards: {samples} samples are fewer than world_size "
                        f"{world_size} x batch_size {batch_size} = {world_size * batch_size}: not one "
                        f"full batch per rank; lower the batch size or the number of workers")
    return batches


def train_plan(manifest: dict | str | os.PathLike, batch_size: int, rank: int, world_size: int,
               num_workers: int = 0, epoch: int = 0, seed: int = 0,
               samples_per_epoch: int | None = None, resample: bool = False,
               shuffle: bool = True) -> Plan:
    """Per loader worker of this rank: (segments to read in order, batches to make from them).

    Pure function of the manifest and the arguments; see the module docstring for the layout.
    """
    manifest = load_manifest(manifest)
    _check_rank(rank, world_size)
    check_int("num_workers", num_workers, 0)
    epoch, seed = check_int("epoch", epoch, 0), check_int("seed", seed, 0)
    readers = max(1, num_workers)
    counts = _counts(manifest)
    if not resample and len(counts) < world_size * readers:
        need = world_size * readers
        raise DataError(
            f"{manifest['split']} shards: {len(counts)} shard(s) for {world_size} rank(s) x {readers} "
            f"loader worker(s) = {need} readers; every reader needs its own shard: rewrite the shards "
            f"with `ppl-avvp shard --num-shards {need}` (or --shard-size "
            f"{max(1, manifest['num_samples'] // need)} or smaller), lower data loader workers, or "
            f"pass resample=True")
    batches = train_batches_per_epoch(manifest, batch_size, world_size, samples_per_epoch, resample)
    per_worker = _worker_batches(batches, readers)
    per_rank = batches * batch_size
    plans: Plan = []
    if not resample:
        if shuffle:
            order = np.random.default_rng([seed, epoch, _SALT_SHARD_ORDER]).permutation(len(counts))
        else:
            order = np.arange(len(counts))
        first = rank * per_rank
        for n_w in per_worker:
            lo, hi = first, first + n_w * batch_size
            plans.append((_positions_to_segments(order, counts, lo, hi), n_w))
            first = hi
        return plans
    p = np.asarray(counts, dtype=np.float64) / float(sum(counts))
    for w, n_w in enumerate(per_worker):
        rng = np.random.default_rng([seed, epoch, rank, w, _SALT_RESAMPLE])
        need, segments = n_w * batch_size, []
        while need > 0:
            for shard in rng.choice(len(counts), size=64, p=p):
                take = min(counts[shard], need)
                segments.append(Segment(int(shard), 0, take))
                need -= take
                if need == 0:
                    break
        plans.append((segments, n_w))
    return plans


@dataclass(frozen=True)
class EvalAssignment:
    """The videos one rank scores: manifest-order positions ``[start, stop)``.

    ``video_ids`` is filled when the shard directory (its ``keys.json``) is known.
    """

    rank: int
    world_size: int
    start: int
    stop: int
    segments: tuple[Segment, ...]
    video_ids: tuple[str, ...] | None = None

    @property
    def num_samples(self) -> int:
        return self.stop - self.start

    def num_batches(self, batch_size: int) -> int:
        return math.ceil(self.num_samples / check_int("batch_size", batch_size, 1))


def eval_assignment(manifest: dict | str | os.PathLike, rank: int, world_size: int) -> EvalAssignment:
    """Rank ``rank``'s share of an eval split: every video exactly once over ranks, no shuffle.

    Contiguous, balanced ranges (sizes differ by at most one). Pass the shard directory instead of
    a manifest dict to also get the video ids (for gathering and completeness checks).
    """
    shard_dir = None if isinstance(manifest, dict) else Path(manifest)
    manifest = load_manifest(manifest)
    _check_rank(rank, world_size)
    total = int(manifest["num_samples"])
    start, stop = rank * total // world_size, (rank + 1) * total // world_size
    counts = _counts(manifest)
    segments = tuple(_positions_to_segments(range(len(counts)), counts, start, stop))
    ids = None
    if shard_dir is not None:
        keys = load_keys(shard_dir, manifest)
        ids = tuple(k for seg in segments for k in keys[manifest["shards"][seg.shard]["name"]][seg.start:seg.stop])
    return EvalAssignment(rank, world_size, start, stop, segments, ids)


def eval_plan(manifest: dict, batch_size: int, rank: int, world_size: int, num_workers: int) -> Plan:
    """Per loader worker: this rank's eval share cut into contiguous runs of whole batches."""
    check_int("batch_size", batch_size, 1)
    check_int("num_workers", num_workers, 0)
    share = eval_assignment(manifest, rank, world_size)
    counts = _counts(manifest)
    plans: Plan = []
    first = share.start
    for n_w in _worker_batches(share.num_batches(batch_size), max(1, num_workers)):
        hi = min(first + n_w * batch_size, share.stop)
        plans.append((_positions_to_segments(range(len(counts)), counts, first, hi), n_w))
        first = hi
    return plans
