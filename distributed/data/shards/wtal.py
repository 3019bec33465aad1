"""Variable-length WebDataset shards of a THUMOS14-layout W-TAL data set: the writer and the per-rank reader.

One sample per video, each with its own number of snippets T (``<split>-NNNNNN.tar``)::

    <id>.rgb.npy (T, D)   <id>.flow.npy (T, D)       float16 or float32 (--dtype)
    <id>.labels.npy (C,) float32                      video-level (weak) labels
    <id>.dense.npy (T, C) uint8                       per-snippet truth, protocol A snippets (wtal_arrays.dense_truth)
    <id>.json                                         video_id, filename, split_row, length (= T)

``manifest.json`` adds to the LLP keys: ``task: "wtal"``, fields whose shape starts with ``null`` (any T),
``widths``, ``protocol`` / ``test_set``, ``snippets`` (min, max, total) and, per shard entry, ``lengths``
(each sample's T, in shard order) and ``offsets`` (the byte where each sample starts, plus the end of the
last). ``annotations.json`` holds the split's THUMOS14 annotations as ``load_thumos14`` returned them
(videos, durations, fps, labels, instances in seconds, ambiguous intervals): what the test mAP needs, so
a run on ``data.shards`` needs no annotation folder.

Reading is random access by those offsets (an uncompressed tar keeps a sample's members contiguous):
every rank reads exactly its videos, in the rows and order the in-memory path (``wtal_arrays``) uses, so
float32 shards give the same batches as the feature folder, bit for bit — training rows by
``train_rows`` and snippets by ``train_picks`` (seed, epoch, row), evaluation by ``eval_rows``.
Each sample is checked as the LLP reader checks it (key at its position, fields, shapes, dtype, no pickle).
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distributed.common.errors import ConfigError, DataError
from distributed.data.arrays import batches_per_rank
from distributed.data.shards.manifest import DTYPES, MANIFEST_NAME, check_task, load_keys, load_manifest, one_line
from distributed.data.shards.reader import _unwrap_worker_errors
from distributed.data.shards.samples import decode_sample, read_sample_at, sha256_mismatch
from distributed.data.shards.writer import (cast_finite, check_key, check_split_name, check_workers, manifest_head,
                                            manifest_tail, npy_bytes, publish_shards, shard_sizes)
from distributed.data.thumos14 import PROTOCOLS, Thumos14Split, load_thumos14
from distributed.data.wtal_arrays import collate_videos, dense_from_snippets, eval_rows, train_picks, train_rows
from distributed.data.wtal_features import I3D_DIM, read_wtal_features
from model.localization import Segments

TASK = "wtal"             # manifest.json "task" (LLP manifests have none)
ANNOTATIONS_NAME = "annotations.json"
DEFAULT_WTAL_VIDEOS_PER_SHARD = 64      # ~64 MB per shard at I3D width, float16
SPLITS = ("train", "test")
_SALT_LOADER = 0x7A1


# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------

@dataclass
class _WTALShardJob:
    """One W-TAL tar to write (picklable: worker processes run it); records each sample's T."""

    path: str
    name: str
    ids: list[str]
    rows: list[int]
    durations: list[float]
    weak_labels: np.ndarray            # (n, C) float32
    truth: list[Segments]              # per video: its instances in snippets, video index 0
    features: str
    dim: int
    dtype: str
    num_classes: int
    lengths: list[int] = field(default_factory=list)

    def samples(self) -> Iterator[dict[str, Any]]:
        for j, vid in enumerate(self.ids):
            rgb, flow = read_wtal_features(self.features, vid, dim=self.dim, duration=self.durations[j])
            t = len(rgb)
            dense = dense_from_snippets(self.truth[j], [t], self.num_classes)[0]
            self.lengths.append(t)
            yield {"__key__": vid,
                   "rgb.npy": npy_bytes(cast_finite(rgb, self.dtype, f"video {vid!r}: rgb")),
                   "flow.npy": npy_bytes(cast_finite(flow, self.dtype, f"video {vid!r}: flow")),
                   "labels.npy": npy_bytes(self.weak_labels[j].astype(np.float32)),
                   "dense.npy": npy_bytes(dense.astype(np.uint8)),
                   "json": json.dumps({"video_id": vid, "filename": vid, "split_row": self.rows[j], "length": t},
                                      sort_keys=True).encode("utf-8")}

    def entry_fields(self, offsets: list[int]) -> dict:
        return {"lengths": list(self.lengths), "offsets": offsets}


def annotations_to_json(split: Thumos14Split) -> bytes:
    """The split as ``annotations.json`` (floats as repr: reading it back gives the same float64s)."""
    inst = split.instances
    doc = {"split": split.split, "test_set": split.test_set, "classes": list(split.classes),
           "videos": list(split.videos), "duration": split.duration.tolist(), "fps": split.fps.tolist(),
           "labels": [np.flatnonzero(row).tolist() for row in split.labels],
           "instances": {"video": inst.video.tolist(), "label": inst.label.tolist(),
                         "start": inst.start.tolist(), "end": inst.end.tolist()},
           "ambiguous": [a.tolist() for a in split.ambiguous]}
    return (json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n").encode("utf-8")


def write_wtal_shards(annotations: str | os.PathLike, features: str | os.PathLike, out: str | os.PathLike,
                      split: str, protocol: str = "A", videos_per_shard: int | None = DEFAULT_WTAL_VIDEOS_PER_SHARD,
                      num_shards: int | None = None, dim: int = I3D_DIM, dtype: str = "float16",
                      overwrite: bool = False, workers: int = 1) -> dict:
    """Shard one THUMOS14-layout split ("train" or "test"; the test videos are ``protocol``'s); returns the
    manifest. Videos stay in the split's order (the reader accesses them by row, so order on disk does not
    matter); the same input gives byte-identical tars; ``out`` appears atomically."""
    if split not in SPLITS:
        raise ConfigError(f"split: must be one of {', '.join(SPLITS)}, got {split!r}")
    if protocol not in PROTOCOLS:
        raise ConfigError(f"protocol: must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    if dtype not in DTYPES:
        raise ConfigError(f"dtype: must be one of {', '.join(DTYPES)}, got {dtype!r}")
    check_split_name(split)
    workers = check_workers(workers)
    annotations, features = Path(annotations).absolute(), Path(features).absolute()
    if not features.is_dir():
        raise DataError(f"{features}: feature directory not found")
    ann = load_thumos14(annotations, split, test_set=PROTOCOLS[protocol].test_set)
    n = len(ann)
    if n == 0:
        raise DataError(f"{annotations}: THUMOS14 split {split!r} has no annotated videos")
    for i, vid in enumerate(ann.videos):
        check_key(vid, where=f"{annotations}: split {split!r} video {i}")
    gt = ann.ground_truth("snippets")
    truth = []
    for v in range(n):
        own = gt.take(gt.video == v)
        truth.append(Segments(np.zeros(len(own), np.int64), own.label, own.start, own.end))
    jobs, start = [], 0
    for s, size in enumerate(shard_sizes(n, videos_per_shard, num_shards)):
        rows = list(range(start, start + size))
        start += size
        jobs.append(_WTALShardJob(path="", name=f"{split}-{s:06d}.tar", ids=[ann.videos[r] for r in rows], rows=rows,
                                  durations=[float(ann.duration[r]) for r in rows], weak_labels=ann.labels[rows],
                                  truth=[truth[r] for r in rows], features=str(features), dim=int(dim), dtype=dtype,
                                  num_classes=len(ann.classes)))
    ann_bytes = annotations_to_json(ann)
    classes = len(ann.classes)

    def manifest_of(entries: list[dict], keys_bytes: bytes) -> dict:
        lengths = [t for e in entries for t in e["lengths"]]
        return {
            **manifest_head(split, entries, n, task=TASK),
            "fields": {"rgb.npy": {"shape": [None, int(dim)], "dtype": dtype},
                       "flow.npy": {"shape": [None, int(dim)], "dtype": dtype},
                       "labels.npy": {"shape": [classes], "dtype": "float32"},
                       "dense.npy": {"shape": [None, classes], "dtype": "uint8"},
                       "json": {"type": "json", "keys": ["filename", "length", "split_row", "video_id"]}},
            "classes": list(ann.classes),
            "num_classes": classes,
            "widths": {"rgb": int(dim), "flow": int(dim)},
            "dtype": dtype,
            "has_dense": True,
            "protocol": protocol,
            "test_set": ann.test_set,
            "snippets": {"min": min(lengths), "max": max(lengths), "total": sum(lengths)},
            "annotations_file": ANNOTATIONS_NAME,
            "annotations_sha256": hashlib.sha256(ann_bytes).hexdigest(),
            "order": {"shuffled": False, "seed": None},
            **manifest_tail(keys_bytes, {"annotations": str(annotations), "features": str(features)}),
        }

    return publish_shards(out, split, jobs, workers=workers, overwrite=overwrite, manifest_of=manifest_of,
                          sidecars={ANNOTATIONS_NAME: ann_bytes})


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------

def load_annotations(shard_dir: Path, manifest: dict) -> Thumos14Split:
    """``annotations.json`` back as the ``Thumos14Split`` it was written from, checked against the manifest."""
    path = shard_dir / manifest.get("annotations_file", ANNOTATIONS_NAME)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DataError(f"{path}: unreadable ({one_line(err)})") from None
    if hashlib.sha256(raw).hexdigest() != manifest.get("annotations_sha256"):
        raise DataError(f"{path}: sha256 differs from the manifest")
    try:
        doc = json.loads(raw)
        videos, classes = tuple(doc["videos"]), tuple(doc["classes"])
        labels = np.zeros((len(videos), len(classes)), np.float32)
        for v, row in enumerate(doc["labels"]):
            labels[v, row] = 1.0
        inst = doc["instances"]
        split = Thumos14Split(
            split=doc["split"], test_set=doc["test_set"], classes=classes, videos=videos,
            duration=np.asarray(doc["duration"], np.float64), fps=np.asarray(doc["fps"], np.float64), labels=labels,
            instances=Segments(np.asarray(inst["video"], np.int64), np.asarray(inst["label"], np.int64),
                               np.asarray(inst["start"], np.float64), np.asarray(inst["end"], np.float64)),
            ambiguous=tuple(np.asarray(a, np.float64).reshape(-1, 2) for a in doc["ambiguous"]))
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError, IndexError) as err:
        raise DataError(f"{path}: not a W-TAL annotations file ({one_line(err)})") from None
    if len(split.duration) != len(videos) or len(split.ambiguous) != len(videos):
        raise DataError(f"{path}: durations / ambiguous intervals do not have one entry per video")
    return split


@dataclass(frozen=True)
class _Place:
    shard: int          # manifest shard index
    position: int       # position inside the shard
    index: int          # position in the manifest order
    start: int          # byte range of the sample in its tar
    stop: int
    length: int


class WTALShardSplit:
    """One W-TAL shard set opened for reading: manifest, keys, annotations and where each split row lies.

    Opening reads no tar; :meth:`video` reads one sample's byte range.
    """

    def __init__(self, shard_dir: str | os.PathLike):
        self.root = Path(shard_dir)
        self.manifest = manifest = load_manifest(self.root)
        check_task(manifest, self.root, TASK)
        self.annotations = load_annotations(self.root, manifest)
        self.keys = load_keys(self.root, manifest)
        row_of = {v: i for i, v in enumerate(self.annotations.videos)}
        places: dict[int, _Place] = {}
        index = 0
        for s, entry in enumerate(manifest["shards"]):
            lengths, offsets = entry.get("lengths"), entry.get("offsets")
            count = int(entry["count"])
            if not isinstance(lengths, list) or not isinstance(offsets, list) or len(lengths) != count \
                    or len(offsets) != count + 1:
                raise DataError(f"{self.root / MANIFEST_NAME}: shard {entry['name']} needs {count} lengths and "
                                f"{count + 1} offsets")
            for p, vid in enumerate(self.keys[entry["name"]]):
                if vid not in row_of or row_of[vid] in places:
                    raise DataError(f"{self.root / MANIFEST_NAME}: {entry['name']} sample {vid!r} is not a video of "
                                    f"{ANNOTATIONS_NAME} or appears twice")
                places[row_of[vid]] = _Place(s, p, index, int(offsets[p]), int(offsets[p + 1]), int(lengths[p]))
                index += 1
        if len(places) != len(self.annotations):
            raise DataError(f"{self.root / MANIFEST_NAME}: {len(places)} samples for the "
                            f"{len(self.annotations)} videos of {ANNOTATIONS_NAME}")
        self.places = [places[r] for r in range(len(self.annotations))]
        self.lengths = np.array([p.length for p in self.places], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.places)

    def video(self, row: int, verified: dict[int, str | None] | None = None) -> dict:
        """Split row ``row``'s decoded sample: ``rgb``, ``flow`` (T, D) float32, ``dense`` (T, C) float32, ``labels``.

        ``verified``: sha256 results per shard of this pass (None = do not check checksums).
        """
        place = self.places[row]
        entry = self.manifest["shards"][place.shard]
        path = self.root / entry["name"]
        if verified is not None:
            if place.shard not in verified:
                mismatch = sha256_mismatch(path, entry["sha256"])
                verified[place.shard] = None if mismatch is None else (
                    f"shard {path}: {mismatch} (corrupt or replaced; `ppl-avvp shard verify` lists all bad shards)")
            if verified[place.shard] is not None:
                raise DataError(verified[place.shard])
        raw = read_sample_at(path, self.keys[entry["name"]], place.position, place.start, place.stop)
        sample = decode_sample(raw, self.manifest, path, place.index)
        if sample["split_row"] != row or sample["length"] != place.length:
            raise DataError(f"shard {path}: sample {raw['__key__']!r}: json says split_row {sample['split_row']} "
                            f"length {sample['length']}, the manifest row {row} length {place.length}")
        return {"rgb": sample["rgb"].astype(np.float32), "flow": sample["flow"].astype(np.float32),
                "dense": sample["dense"].astype(np.float32), "labels": sample["labels"],
                "video_id": raw["__key__"]}


def read_batch(split: WTALShardSplit, rows: Sequence[int], picks: list[np.ndarray] | None = None, length: int = 0,
               *, verified: dict | None = None, skip_bad: bool = False, train: bool = False) -> dict:
    """The padded batch of ``rows`` (``wtal_arrays.collate_videos``'s layout) plus ``_bad`` (skipped reasons).

    A bad sample is a DataError, or with ``skip_bad``: dropped (evaluation; an all-bad batch is ``_empty``) or
    replaced by another good row of the batch (training keeps its shape).
    """
    got: list[dict | None] = []
    bad: list[str] = []
    for r in rows:
        try:
            got.append(split.video(int(r), verified))
        except DataError as err:
            if not skip_bad:
                raise
            got.append(None)
            bad.append(str(err))
    keep = [i for i, g in enumerate(got) if g is not None]
    if not keep:
        if train:
            raise DataError(f"every sample of a training batch is bad (first: {bad[0]})")
        return {"_empty": True, "_bad": bad}
    if train:   # refill bad rows with good ones so every rank keeps full batches
        take = [i if got[i] is not None else keep[k % len(keep)] for k, i in enumerate(range(len(rows)))]
    else:
        take = keep
    videos = [(got[i]["rgb"], got[i]["flow"], got[i]["dense"]) for i in take]
    batch = collate_videos(videos, np.stack([got[i]["labels"] for i in take]), [int(rows[i]) for i in take],
                           [got[i]["video_id"] for i in take], None if picks is None else [picks[i] for i in take],
                           length)
    batch["_bad"] = bad
    return batch


class _BatchJobs(torch.utils.data.IterableDataset):
    """Batches to read, as (rows, picks, length): loader worker w reads jobs w, w + W, ... so the DataLoader's
    round-robin hands them out in job order."""

    def __init__(self, split: WTALShardSplit, jobs: list[tuple], verify: bool, skip_bad: bool, train: bool):
        super().__init__()
        self.split, self.jobs, self.verify, self.skip_bad, self.train = split, jobs, verify, skip_bad, train

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        verified: dict | None = {} if self.verify else None
        for rows, picks, length in self.jobs[worker::workers]:
            yield read_batch(self.split, rows, picks, length, verified=verified, skip_bad=self.skip_bad,
                             train=self.train)


class WTALShardData:
    """The worker loop's view of W-TAL shards (``data.shards`` with ``train/`` and ``test/`` shard sets):
    the same rows, snippets and batches as ``wtal_arrays.WTALData`` on the data the shards were written from."""

    def __init__(self, cfg, rank: int, world_size: int):
        d, m = cfg.data, cfg.model
        self.root = Path(d.shards)
        for split in SPLITS:
            if not (self.root / split / MANIFEST_NAME).is_file():
                raise DataError(f"{self.root / split}: no {MANIFEST_NAME} (write W-TAL shards with `ppl-avvp wtal "
                                f"shard --annotations DIR --features DIR --out {self.root}`)")
        self.protocol = PROTOCOLS[d.protocol]
        self.splits = {split: WTALShardSplit(self.root / split) for split in SPLITS}
        for split, data in self.splits.items():
            where = data.root / MANIFEST_NAME
            if data.manifest["split"] != split:
                raise DataError(f"{where}: split is {data.manifest['split']!r}, expected {split!r} under {self.root}")
            widths = data.manifest.get("widths", {})
            if widths.get("rgb") != m.rgb_dim or widths.get("flow") != m.flow_dim:
                raise DataError(f"{where}: widths {widths}, the model config expects rgb {m.rgb_dim}, flow "
                                f"{m.flow_dim} (model.rgb_dim / model.flow_dim)")
            if data.manifest["num_classes"] != m.num_classes:
                raise DataError(f"{where}: {data.manifest['num_classes']} classes, the model config expects "
                                f"{m.num_classes} (model.num_classes)")
        test_set = self.splits["test"].annotations.test_set
        if test_set != self.protocol.test_set:
            raise DataError(f"{self.splits['test'].root / MANIFEST_NAME}: test videos of protocol "
                            f"{self.splits['test'].manifest.get('protocol')!r} ({test_set}), the run scores protocol "
                            f"{d.protocol} ({self.protocol.test_set}): rewrite the test shards with --protocol "
                            f"{d.protocol} or set data.protocol")
        self.cfg, self.rank, self.world_size, self.seed = cfg, rank, world_size, cfg.seed
        self.num_train_batches = batches_per_rank(len(self.splits["train"]), d.batch_size, world_size)
        self.skipped = 0

    def _loader(self, split: WTALShardSplit, jobs: list[tuple], num_workers: int, train: bool,
                epoch: int) -> Iterator[dict]:
        d = self.cfg.data
        dataset = _BatchJobs(split, jobs, d.verify_shards, d.skip_bad_samples, train)
        if num_workers == 0:
            source = iter(dataset)
        else:   # the loader's own RNG: iterating never draws from the global torch one
            state = np.random.SeedSequence([self.seed, epoch, self.rank, _SALT_LOADER]).generate_state(1, np.uint64)
            source = iter(torch.utils.data.DataLoader(
                dataset, batch_size=None, num_workers=min(num_workers, max(1, len(jobs))), persistent_workers=False,
                generator=torch.Generator().manual_seed(int(state[0]) >> 1)))
        for batch in _unwrap_worker_errors(source):
            bad = batch.pop("_bad", [])
            self.skipped += len(bad)
            if not batch.pop("_empty", False):
                yield batch

    def train(self, epoch: int, skip_batches: int = 0) -> Iterator[dict]:
        split = self.splits["train"]
        jobs = [(rows, *train_picks(rows, split.lengths, self.cfg.data.train_snippets, self.seed, epoch))
                for rows in train_rows(len(split), self.cfg.data.batch_size, self.rank, self.world_size, self.seed,
                                       epoch, skip_batches)]
        return self._loader(split, jobs, self.cfg.data.loader_workers, True, epoch)

    def eval(self, split: str) -> Iterator[dict]:
        if split not in self.splits:
            return iter(())
        data = self.splits[split]
        jobs = [(rows, None, 0) for rows in eval_rows(len(data), self.cfg.data.eval_batch_size, self.rank,
                                                      self.world_size)]
        return self._loader(data, jobs, 0, False, 0)
