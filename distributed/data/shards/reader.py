"""The per-rank shard reader: plans (``plan.py``) -> checked, decoded, collated batches.

The reader never asks the environment who it is: ``rank``/``world_size`` are arguments and the
loader-worker id comes from torch. Iterating a loader never draws from the global torch RNG (the
torch DataLoader gets its own generator, seeded by ``(seed, epoch, rank)``), so the model's
dropout stream after a resume is the one an uninterrupted run would have had.
"""
from __future__ import annotations

import itertools
import logging
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distributed.common.errors import ConfigError, DataError, UserError
from distributed.data.shards.manifest import (DENSE_FIELDS, FEATURE_FIELDS, MANIFEST_NAME, load_keys,
                                              load_manifest, shard_offsets)
from distributed.data.shards.plan import Plan, Segment, check_int, eval_plan, train_plan, worker_skips
from distributed.data.shards.samples import checked_samples, decode_sample, sha256_mismatch

log = logging.getLogger(__name__)

DEFAULT_SHUFFLE_BUFFER = 1024
# Fixed entropy words so the different random streams of one (seed, epoch) never coincide.
_SALT_BLOCK, _SALT_LOADER = 0xB10C, 0x10AD


def _collate(samples: list[dict], manifest: dict, valid: list[bool]) -> dict:
    batch: dict[str, Any] = {}
    for field in FEATURE_FIELDS:   # float16 on disk -> float32 for the model
        batch[field] = torch.from_numpy(np.stack([s[field] for s in samples]).astype(np.float32, copy=False))
    batch["weak_labels"] = torch.from_numpy(np.stack([s["labels"] for s in samples]))
    if manifest["has_dense"]:
        for field in DENSE_FIELDS:
            batch[field] = torch.from_numpy(np.stack([s[field] for s in samples]))
    batch["video_id"] = [s["__key__"] for s in samples]
    batch["filename"] = [s["filename"] for s in samples]
    batch["split_row"] = torch.tensor([s["split_row"] for s in samples], dtype=torch.int64)   # (B,)
    batch["valid"] = torch.tensor(valid, dtype=torch.bool)
    return batch


class _Bad:
    """Placeholder for a sample that could not be read (kept so positions and batch counts hold)."""

    __slots__ = ("reason",)

    def __init__(self, reason: str):
        self.reason = reason


class _ShardStream(torch.utils.data.IterableDataset):
    """What one rank reads: per-worker segment plans -> decoded, collated batches."""

    def __init__(self, shard_dir: Path, manifest: dict, plans: Plan, *, batch_size: int, train: bool,
                 seed: int, epoch: int, rank: int, shuffle_buffer: int, shuffle: bool, skip_batches: int,
                 skip_bad_samples: bool, verify: bool):
        super().__init__()
        self.shard_dir, self.manifest, self.plans = shard_dir, manifest, plans
        self.batch_size, self.train = batch_size, train
        self.seed, self.epoch, self.rank = seed, epoch, rank
        self.shuffle_buffer, self.shuffle = shuffle_buffer, shuffle
        self.skips = worker_skips(skip_batches, [n for _, n in plans])
        # The DataLoader starts its round-robin at worker 0: after skipping k batches the next
        # output batch belongs to plan worker k % W, so loader worker i serves plan (i + k) % W.
        self.rotation = skip_batches % len(plans)
        self.skip_bad_samples, self.verify = skip_bad_samples, verify
        # keys.json of the shards this rank reads: the integrity check compares every sample's key
        read = {self.manifest["shards"][seg.shard]["name"] for segments, _ in plans for seg in segments}
        self.keys = {name: ids for name, ids in load_keys(shard_dir, manifest).items() if name in read}
        self.offsets = shard_offsets(manifest)

    # -- raw samples in plan order ------------------------------------------------------------
    def _raw(self, segments: list[Segment]) -> Iterator[dict | _Bad]:
        verified: dict[int, str | None] = {}
        for seg in segments:
            entry = self.manifest["shards"][seg.shard]
            path = self.shard_dir / entry["name"]
            if seg.shard not in verified and not path.is_file():
                verified[seg.shard] = f"shard {path}: missing (listed in {MANIFEST_NAME})"
            if self.verify and seg.shard not in verified:
                mismatch = sha256_mismatch(path, entry["sha256"])
                verified[seg.shard] = None if mismatch is None else (
                    f"shard {path}: {mismatch} (corrupt or replaced; `ppl-avvp shard verify` lists all bad shards)")
            problem = verified.get(seg.shard)
            if problem is not None:
                yield from self._bad(problem, len(seg))
                continue
            done = seg.start
            try:
                for pos, sample in checked_samples(path, self.keys[entry["name"]], seg.start, seg.stop):
                    sample["__shard__"] = path
                    sample["__position__"] = self.offsets[seg.shard] + pos   # manifest order
                    done = pos + 1
                    yield sample
            except DataError as err:
                yield from self._bad(str(err), seg.stop - done)

    def _bad(self, reason: str, n: int) -> Iterator[_Bad]:
        if not self.skip_bad_samples:
            raise DataError(reason)
        bad = _Bad(reason)
        for _ in range(n):
            yield bad

    # -- shuffle blocks, batches ---------------------------------------------------------------
    def _worker_batches(self, worker: int) -> Iterator[dict]:
        segments, _ = self.plans[worker]
        total = sum(len(s) for s in segments)
        skip = min(self.skips[worker] * self.batch_size, total)
        shuffled = self.train and self.shuffle
        block = self.shuffle_buffer if shuffled else self.batch_size  # identity order: any block
        first_block = skip // block
        drop = skip - first_block * block
        start = first_block * block
        stream = self._raw(self._trim(segments, start))
        pending: list[dict | _Bad] = []
        last_good: list[dict] = []
        for b in range(first_block, math.ceil(total / block) if total else 0):
            size = min(block, total - b * block)
            items = list(itertools.islice(stream, size))
            if len(items) != size:  # _raw yields exactly one item per planned position
                raise DataError(f"worker {worker}: shard stream ended early (bug)")
            if shuffled:
                perm = np.random.default_rng(
                    [self.seed, self.epoch, self.rank, worker, b, _SALT_BLOCK]).permutation(size)
                items = [items[i] for i in perm]
            if b == first_block:
                items = items[drop:]
            for item in items:
                pending.append(item)
                if len(pending) == self.batch_size:
                    batch = self._assemble(pending, last_good)
                    pending = []
                    if batch is not None:
                        yield batch
        if pending:
            batch = self._assemble(pending, last_good)
            if batch is not None:
                yield batch
        stream.close()

    @staticmethod
    def _trim(segments: list[Segment], skip: int) -> list[Segment]:
        out = []
        for seg in segments:
            if skip >= len(seg):
                skip -= len(seg)
                continue
            out.append(Segment(seg.shard, seg.start + skip, seg.stop))
            skip = 0
        return out

    def _assemble(self, items: list[dict | _Bad], last_good: list[dict]) -> dict | None:
        decoded: list[dict | None] = []
        bad: list[str] = []
        for item in items:
            if isinstance(item, _Bad):
                decoded.append(None)
                bad.append(item.reason)
                continue
            try:
                decoded.append(decode_sample(item, self.manifest, item["__shard__"], item["__position__"]))
            except DataError as err:
                if not self.skip_bad_samples:
                    raise
                decoded.append(None)
                bad.append(str(err))
        good = [d for d in decoded if d is not None]
        if not self.train:   # eval: drop bad rows (never duplicate a video's score)
            if not good:
                return {"_empty": True, "_bad": bad}
            batch = _collate(good, self.manifest, [True] * len(good))
        else:                # train: keep the batch shape; refill bad rows with good ones
            if not good:
                if not last_good:
                    raise DataError(f"every sample of a batch is bad and no earlier batch to reuse "
                                    f"(first: {bad[0]})")
                good_src, rows = last_good, [last_good[i % len(last_good)] for i in range(len(items))]
                valid = [False] * len(items)
            else:
                good_src = good
                rows, valid, k = [], [], 0
                for d in decoded:
                    if d is None:
                        rows.append(good[k % len(good)])
                        k += 1
                        valid.append(False)
                    else:
                        rows.append(d)
                        valid.append(True)
            last_good[:] = good_src
            batch = _collate(rows, self.manifest, valid)
        batch["_bad"] = bad
        return batch

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        worker, num_workers = (0, 1) if info is None else (info.id, info.num_workers)
        if num_workers != len(self.plans):
            raise ConfigError(f"loader has {num_workers} worker(s), the shard plan was made for "
                              f"{len(self.plans)}")
        return self._worker_batches((worker + self.rotation) % num_workers)


def _unwrap_worker_errors(source: Iterator[dict]) -> Iterator[dict]:
    """Re-raise a loader worker's UserError with its own one-line message.

    torch re-raises worker exceptions as ``type(err)("Caught ... Original Traceback ...")``; the
    original message is the traceback's last line, after ``<module>.<Class>: ``.
    """
    try:
        yield from source
    except UserError as err:
        text = str(err)
        if "\n" not in text:
            raise
        last = text.strip().splitlines()[-1]
        prefix = f"{type(err).__module__}.{type(err).__qualname__}: "
        raise type(err)(last.removeprefix(prefix)) from None


class ShardLoader:
    """Iterable of batches for one rank and one epoch (iterate it once per epoch).

    ``len(loader)`` is the number of batches it yields (train: the same on every rank).
    ``stats``: ``batches``, ``samples`` (valid rows), ``skipped`` (bad samples skipped, with
    ``skip_bad_samples=True``), ``bad_samples`` (the first 100 reasons).
    """

    def __init__(self, dataset: _ShardStream, num_workers: int, expected_batches: int | None,
                 pin_memory: bool, prefetch_factor: int | None, multiprocessing_context: Any):
        self.dataset, self.num_workers = dataset, num_workers
        self.expected_batches = expected_batches
        self.pin_memory, self.prefetch_factor = pin_memory, prefetch_factor
        self.multiprocessing_context = multiprocessing_context
        self.stats: dict[str, Any] = {}

    def __len__(self) -> int:
        if self.expected_batches is not None:
            return self.expected_batches
        return sum(max(0, n - s) for (_, n), s in zip(self.dataset.plans, self.dataset.skips))

    def _generator(self) -> torch.Generator:
        """The DataLoader's own RNG (its workers' base seed), so iterating never consumes the global one."""
        d = self.dataset
        state = np.random.SeedSequence([d.seed, d.epoch, d.rank, _SALT_LOADER]).generate_state(1, np.uint64)
        return torch.Generator().manual_seed(int(state[0]) >> 1)

    def _source(self) -> Iterator[dict]:
        if self.num_workers == 0:
            return iter(self.dataset)
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_size=None, num_workers=self.num_workers, pin_memory=self.pin_memory,
            prefetch_factor=self.prefetch_factor, persistent_workers=False,
            multiprocessing_context=self.multiprocessing_context, generator=self._generator())
        return iter(loader)

    def __iter__(self) -> Iterator[dict]:
        self.stats = {"batches": 0, "samples": 0, "skipped": 0, "bad_samples": []}
        source = self._source()
        try:
            for batch in _unwrap_worker_errors(source):
                bad = batch.pop("_bad", [])
                if bad:
                    self.stats["skipped"] += len(bad)
                    for reason in bad:
                        if len(self.stats["bad_samples"]) < 100:
                            self.stats["bad_samples"].append(reason)
                        if self.stats["skipped"] <= 10:
                            log.warning("skipped bad sample: %s", reason)
                if batch.pop("_empty", False):
                    continue
                self.stats["batches"] += 1
                self.stats["samples"] += int(batch["valid"].sum())
                yield batch
        finally:
            if hasattr(source, "_shutdown_workers"):
                source._shutdown_workers()
        if self.expected_batches is not None and self.stats["batches"] != self.expected_batches:
            raise DataError(f"loader made {self.stats['batches']} batches, expected "
                            f"{self.expected_batches} (bug: equal batch counts per rank violated)")


def make_train_loader(shard_dir: str | os.PathLike, batch_size: int, rank: int, world_size: int,
                      num_workers: int = 0, epoch: int = 0, seed: int = 0,
                      samples_per_epoch: int | None = None, resample: bool = False,
                      skip_bad_samples: bool = False, skip_batches: int = 0,
                      shuffle: bool = True, shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
                      verify: bool = False, pin_memory: bool = False,
                      prefetch_factor: int | None = None,
                      multiprocessing_context: Any = None) -> ShardLoader:
    """This rank's training batches for ``epoch``; the same count on every rank.

    Batches: ``audio`` (B,T,Da), ``visual_2d`` (B,T,D2) or (B,F*T,D2) unpooled, ``visual_3d``
    (B,T,D3) float32; ``weak_labels`` (B,C) float32; ``dense_audio``/``dense_visual`` (B,T,C)
    uint8 when the split has them; ``split_row`` (B,) int64; ``valid`` (B,) bool (False only on
    rows refilled after a bad sample); ``video_id``/``filename`` lists. Exactly
    ``train_batches_per_epoch(...) - skip_batches`` batches, all of ``batch_size`` rows. The order
    is a function of ``(seed, epoch, world_size, num_workers, batch_size, shuffle_buffer)``: resume
    with the same values and ``skip_batches`` = batches already done this epoch.
    """
    shard_dir = Path(shard_dir)
    manifest = load_manifest(shard_dir)
    check_int("batch_size", batch_size, 1)
    check_int("shuffle_buffer", shuffle_buffer, 1)
    plans = train_plan(manifest, batch_size, rank, world_size, num_workers, epoch, seed,
                       samples_per_epoch, resample, shuffle)
    total = sum(n for _, n in plans)
    skip_batches = check_int("skip_batches", skip_batches, 0)
    if skip_batches > total:
        raise ConfigError(f"skip_batches: {skip_batches} is more than the epoch's {total} batches")
    dataset = _ShardStream(shard_dir, manifest, plans, batch_size=batch_size, train=True, seed=seed,
                           epoch=epoch, rank=rank, shuffle_buffer=shuffle_buffer, shuffle=shuffle,
                           skip_batches=skip_batches, skip_bad_samples=skip_bad_samples,
                           verify=verify)
    return ShardLoader(dataset, num_workers, total - skip_batches, pin_memory, prefetch_factor,
                       multiprocessing_context)


def make_eval_loader(shard_dir: str | os.PathLike, batch_size: int, rank: int, world_size: int,
                     num_workers: int = 0, skip_bad_samples: bool = False, verify: bool = False,
                     pin_memory: bool = False, prefetch_factor: int | None = None,
                     multiprocessing_context: Any = None) -> ShardLoader:
    """This rank's eval batches: each video of ``eval_assignment(shard_dir, rank, world_size)`` once.

    Batch counts may differ between ranks (by at most one; fewer when bad samples are skipped).
    Any batch may be shorter than ``batch_size`` (the last one; with ``skip_bad_samples``, bad rows
    are dropped). With loader workers, batch order interleaves workers: sort gathered predictions
    by ``split_row`` (the split's CSV order, whatever the world size).
    """
    shard_dir = Path(shard_dir)
    manifest = load_manifest(shard_dir)
    plans = eval_plan(manifest, batch_size, rank, world_size, num_workers)
    dataset = _ShardStream(shard_dir, manifest, plans, batch_size=batch_size, train=False, seed=0,
                           epoch=0, rank=rank, shuffle_buffer=1, shuffle=False, skip_batches=0,
                           skip_bad_samples=skip_bad_samples, verify=verify)
    return ShardLoader(dataset, num_workers, None, pin_memory, prefetch_factor, multiprocessing_context)
