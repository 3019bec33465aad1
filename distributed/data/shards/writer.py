"""Writing the WebDataset shards of one LLP-layout split (or of in-memory arrays).

One sample per video, brace-named tars ``{split}-000000.tar …`` plus ``manifest.json`` and
``keys.json`` (see ``manifest.py``)::

    <id>.audio.npy  <id>.visual_2d.npy  <id>.visual_3d.npy  <id>.labels.npy  <id>.json
    <id>.dense_audio.npy  <id>.dense_visual.npy            (splits with dense truth only)

``<id>.json`` holds ``video_id``, ``filename`` and ``split_row`` (the video's row in the split's
annotation CSV, the order ``ppl-avvp evaluate`` aligns predictions to). The same input gives
byte-identical shards; the folder appears atomically (``distributed.common.fsutil``).
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import os
import re
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import webdataset as wds

from distributed.common.errors import ConfigError, DataError
from distributed.common.fsutil import check_output_dir, published_atomically
from distributed.data.features import FeatureSpec, folder_spec, read_video_features
from distributed.data.llp import load_split
from distributed.data.shards.manifest import (DEFAULT_VIDEOS_PER_SHARD, DENSE_FIELDS, DTYPES, FEATURE_FIELDS,
                                              FORMAT, FORMAT_VERSION, KEYS_NAME, MANIFEST_NAME)

_SALT_WRITE = 0x3817   # entropy word of the one-off video shuffle before sharding
_TAR_MTIME = 0  # fixed member mtime: the same input gives byte-identical shards (same sha256)
_KEY_RE = re.compile(r"^[!-~]+$")  # printable ASCII, no spaces


def check_key(key: str, where: str = "video id") -> str:
    """A video id usable as a WebDataset ``__key__``.

    WebDataset splits a member name at its FIRST dot (``base_plus_ext``), so a dot in an id would
    move part of the id into the field name; ``/`` would make a folder. ``-`` and ``_`` anywhere
    (also leading, as in LLP ids such as ``-0A9suni5YA``) are fine.
    """
    if not isinstance(key, str) or not key:
        raise DataError(f"{where}: empty video id")
    bad = [c for c in "./\\" if c in key]
    if bad or not _KEY_RE.match(key) or len(key) > 80:
        why = f"contains {bad[0]!r}" if bad else ("longer than 80 characters" if len(key) > 80
                                                 else "has a space or a non-ASCII/control character")
        raise DataError(f"{where}: video id {key!r} cannot be a shard key ({why})")
    return key


def npy_bytes(arr: np.ndarray) -> bytes:
    """An array as ``.npy`` bytes (never pickled)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def shard_sizes(num_videos: int, videos_per_shard: int | None = None,
                num_shards: int | None = None) -> list[int]:
    """Videos per shard: fixed ``videos_per_shard`` (last one shorter) or ``num_shards`` balanced."""
    if num_videos < 1:
        raise DataError("no videos to shard")
    if num_shards is not None:
        if isinstance(num_shards, bool) or int(num_shards) != num_shards or num_shards < 1:
            raise ConfigError(f"num_shards: must be a positive integer, got {num_shards!r}")
        if num_shards > num_videos:
            raise ConfigError(f"num_shards: {num_shards} shards for {num_videos} videos would leave "
                              f"empty shards; use at most {num_videos}")
        base, extra = divmod(num_videos, int(num_shards))
        return [base + (1 if i < extra else 0) for i in range(int(num_shards))]
    size = DEFAULT_VIDEOS_PER_SHARD if videos_per_shard is None else videos_per_shard
    if isinstance(size, bool) or int(size) != size or size < 1:
        raise ConfigError(f"shard_size: must be a positive integer, got {videos_per_shard!r}")
    size = int(size)
    full, rest = divmod(num_videos, size)
    return [size] * full + ([rest] if rest else [])


class _HashingFile:
    """Write-only file wrapper that hashes and counts what goes through (tar streams only write)."""

    def __init__(self, path: Path):
        self._fh = open(path, "wb")
        self.sha256 = hashlib.sha256()
        self.nbytes = 0

    def write(self, data) -> int:
        self.sha256.update(data)
        self.nbytes += len(data)
        return self._fh.write(data)

    def flush(self) -> None:
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


class _FileFeatures:
    """Picklable per-video loader over an LLP feature folder (used by worker processes)."""

    def __init__(self, feature_dir: str, spec: FeatureSpec, pool_frames: bool):
        self.feature_dir, self.spec, self.pool_frames = feature_dir, spec, pool_frames

    def __call__(self, index: int, vid: str) -> dict[str, np.ndarray]:
        return read_video_features(self.feature_dir, vid, self.spec, pool_frames=self.pool_frames)


class _ArrayFeatures:
    """Per-video loader over in-memory ``(N, ...)`` arrays or a callable ``(index, id) -> dict``."""

    def __init__(self, features: dict[str, np.ndarray] | Callable[[int, str], dict]):
        self.features = features

    def __call__(self, index: int, vid: str) -> dict[str, np.ndarray]:
        if callable(self.features):
            return self.features(index, vid)
        return {k: self.features[k][index] for k in FEATURE_FIELDS}


@dataclass
class _ShardJob:
    """One LLP tar to write (picklable: worker processes run it)."""

    path: str
    name: str
    ids: list[str]
    filenames: list[str]
    rows: list[int]           # row of each video in the split (CSV order): the feature loader's index, split_row
    weak_labels: np.ndarray   # (n, C) float32
    dense_audio: np.ndarray | None
    dense_visual: np.ndarray | None
    shapes: dict[str, tuple[int, ...]]
    dtype: str
    loader: Callable[[int, str], dict]

    def samples(self) -> Iterator[dict[str, Any]]:
        for j, vid in enumerate(self.ids):
            feats = self.loader(self.rows[j], vid)
            sample: dict[str, Any] = {"__key__": vid}
            for field in FEATURE_FIELDS:
                if field not in feats:
                    raise DataError(f"video {vid!r}: feature {field!r} missing")
                arr = np.asarray(feats[field])
                if arr.shape != self.shapes[field]:
                    raise DataError(f"video {vid!r}: {field} has shape {arr.shape}, "
                                    f"expected {self.shapes[field]}")
                sample[f"{field}.npy"] = npy_bytes(cast_finite(arr, self.dtype, f"video {vid!r}: {field}"))
            sample["labels.npy"] = npy_bytes(self.weak_labels[j].astype(np.float32))
            if self.dense_audio is not None:
                sample["dense_audio.npy"] = npy_bytes(self.dense_audio[j].astype(np.uint8))
                sample["dense_visual.npy"] = npy_bytes(self.dense_visual[j].astype(np.uint8))
            sample["json"] = json.dumps({"video_id": vid, "filename": self.filenames[j],
                                         "split_row": self.rows[j]}, sort_keys=True).encode("utf-8")
            yield sample

    def entry_fields(self, offsets: list[int]) -> dict:
        """What an LLP manifest entry adds to name/count/sha256/bytes: nothing (fixed-size samples)."""
        return {}


def cast_finite(arr: np.ndarray, dtype: str, where: str) -> np.ndarray:
    """``arr`` as ``dtype``, refusing values the cast turns into NaN/inf (float16 overflows past 65504)."""
    cast = arr.astype(dtype, copy=False)
    if not np.isfinite(cast).all():
        raise DataError(f"{where} has NaN/inf values after the cast to {dtype} "
                        f"(|x| > 65504 overflows float16: use --dtype float32)")
    return cast


def _write_one_shard(job) -> dict:
    """Write one tar (members in a fixed order, fixed mtime) and return its manifest entry.

    ``job``: ``path``, ``name``, ``ids``, ``samples()`` (the samples in order) and ``entry_fields(offsets)``
    (task-specific entry keys; ``offsets[i]`` = byte where sample i starts, ``offsets[-1]`` = end of the last).
    """
    out = _HashingFile(Path(job.path))
    offsets = [0]
    try:
        with wds.TarWriter(out, encoder=False, mtime=_TAR_MTIME) as sink:
            for sample in job.samples():
                sink.write(sample)
                offsets.append(sink.tarstream.offset)   # uncompressed tar: logical offset = file byte
    finally:
        out.close()
    if len(offsets) - 1 != len(job.ids):
        raise DataError(f"shard {job.name}: wrote {len(offsets) - 1} samples, expected {len(job.ids)} (bug)")
    return {"name": job.name, "count": len(job.ids), "sha256": out.sha256.hexdigest(),
            "bytes": out.nbytes, **job.entry_fields(offsets)}


def manifest_head(split: str, entries: list[dict], num_samples: int, task: str | None = None) -> dict:
    """The keys every manifest starts with (``task`` only for non-LLP shard sets: LLP manifests stay as they were)."""
    head = {"format": FORMAT, "version": FORMAT_VERSION}
    if task is not None:
        head["task"] = task
    head.update({"split": split, "pattern": f"{split}-{{000000..{len(entries) - 1:06d}}}.tar",
                 "num_shards": len(entries), "num_samples": num_samples, "shards": entries})
    return head


def manifest_tail(keys_bytes: bytes, source: dict) -> dict:
    """The keys every manifest ends with: keys.json's checksum, the source, when and with what it was written."""
    return {"keys_file": KEYS_NAME, "keys_sha256": hashlib.sha256(keys_bytes).hexdigest(), "source": source,
            "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "writer": {"webdataset": getattr(wds, "__version__", "unknown"), "numpy": np.__version__}}


def check_split_name(split: str) -> None:
    if not re.match(r"^[A-Za-z0-9_]+$", split):
        raise ConfigError(f"split: {split!r} must be letters, digits or '_' (it names the shards)")


def check_workers(workers: int) -> int:
    if isinstance(workers, bool) or int(workers) != workers or workers < 1:
        raise ConfigError(f"workers: must be a positive integer, got {workers!r}")
    return int(workers)


def publish_shards(out: str | os.PathLike, split: str, jobs: list, *, workers: int, overwrite: bool,
                   manifest_of: Callable[[list[dict], bytes], dict],
                   sidecars: dict[str, bytes] | None = None) -> dict:
    """Write ``jobs`` (one tar each, named ``{split}-NNNNNN.tar``) plus keys.json, ``sidecars`` and the manifest
    into a temporary sibling of ``out`` and rename it into place; returns the manifest.

    ``manifest_of(entries, keys_bytes)`` builds the manifest from the written shards' entries.
    """
    out = Path(out).absolute()
    check_output_dir(out, overwrite=overwrite, marker=MANIFEST_NAME, kind="a shard directory")
    with published_atomically(out, "tmp") as tmp:
        for job in jobs:
            job.path = str(tmp / job.name)
        if workers > 1 and len(jobs) > 1:
            with ProcessPoolExecutor(max_workers=min(int(workers), len(jobs))) as pool:
                entries = list(pool.map(_write_one_shard, jobs))
        else:
            entries = [_write_one_shard(job) for job in jobs]
        keys = {job.name: job.ids for job in jobs}
        keys_bytes = json.dumps(keys, separators=(",", ":")).encode("utf-8")
        (tmp / KEYS_NAME).write_bytes(keys_bytes)
        for name, data in (sidecars or {}).items():
            (tmp / name).write_bytes(data)
        manifest = manifest_of(entries, keys_bytes)
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def _write_split(out: str | os.PathLike, split: str, ids: Sequence[str], filenames: Sequence[str],
                 weak_labels: np.ndarray, dense_audio: np.ndarray | None,
                 dense_visual: np.ndarray | None, loader: Callable[[int, str], dict],
                 shapes: dict[str, tuple[int, ...]], classes: Sequence[str], *, num_segments: int,
                 frames_per_segment: int, pool_frames: bool, dtype: str,
                 videos_per_shard: int | None, num_shards: int | None, shuffle_seed: int | None,
                 overwrite: bool, workers: int, source: dict) -> dict:
    if dtype not in DTYPES:
        raise ConfigError(f"dtype: must be one of {', '.join(DTYPES)}, got {dtype!r}")
    check_split_name(split)
    n = len(ids)
    if n == 0:
        raise DataError(f"split {split!r} has no videos")
    seen: dict[str, int] = {}
    for i, vid in enumerate(ids):
        check_key(vid, where=f"split {split!r} row {i + 1} ({filenames[i]!r})")
        if vid in seen:
            raise DataError(f"split {split!r}: video id {vid!r} appears twice ({filenames[seen[vid]]!r} "
                            f"and {filenames[i]!r}); a shard sample is keyed by the id")
        seen[vid] = i
    weak_labels = np.asarray(weak_labels, dtype=np.float32)
    if weak_labels.ndim != 2 or weak_labels.shape[0] != n or weak_labels.shape[1] != len(classes):
        raise DataError(f"weak_labels: shape {weak_labels.shape}, expected ({n}, {len(classes)})")
    has_dense = dense_audio is not None and dense_visual is not None
    if (dense_audio is None) != (dense_visual is None):
        raise DataError("dense truth: give both dense_audio and dense_visual or neither")
    if has_dense:
        want = (n, num_segments, len(classes))
        for name, arr in (("dense_audio", dense_audio), ("dense_visual", dense_visual)):
            if tuple(np.shape(arr)) != want:
                raise DataError(f"{name}: shape {tuple(np.shape(arr))}, expected {want}")
    sizes = shard_sizes(n, videos_per_shard, num_shards)
    if shuffle_seed is None:
        order = np.arange(n)
    else:  # LLP's CSV order is not random; mix once so shard contents are not correlated
        order = np.random.default_rng([int(shuffle_seed), _SALT_WRITE]).permutation(n)
    workers = check_workers(workers)

    jobs, start = [], 0
    for s, size in enumerate(sizes):
        rows = [int(r) for r in order[start:start + size]]
        start += size
        jobs.append(_ShardJob(
            path="", name=f"{split}-{s:06d}.tar", ids=[ids[r] for r in rows],
            filenames=[filenames[r] for r in rows], rows=rows, weak_labels=weak_labels[rows],
            dense_audio=np.asarray(dense_audio)[rows] if has_dense else None,
            dense_visual=np.asarray(dense_visual)[rows] if has_dense else None,
            shapes=shapes, dtype=dtype, loader=loader))

    def manifest_of(entries: list[dict], keys_bytes: bytes) -> dict:
        fields: dict[str, dict] = {f"{f}.npy": {"shape": list(shapes[f]), "dtype": dtype}
                                   for f in FEATURE_FIELDS}
        fields["labels.npy"] = {"shape": [len(classes)], "dtype": "float32"}
        if has_dense:
            for f in DENSE_FIELDS:
                fields[f"{f}.npy"] = {"shape": [num_segments, len(classes)], "dtype": "uint8"}
        fields["json"] = {"type": "json", "keys": ["filename", "split_row", "video_id"]}
        return {
            **manifest_head(split, entries, n),
            "fields": fields,
            "classes": list(classes),
            "num_classes": len(classes),
            "num_segments": int(num_segments),
            "frames_per_segment": int(frames_per_segment),
            "pool_frames": bool(pool_frames),
            "dtype": dtype,
            "has_dense": bool(has_dense),
            "order": {"shuffled": shuffle_seed is not None, "seed": shuffle_seed},
            **manifest_tail(keys_bytes, source),
        }

    return publish_shards(out, split, jobs, workers=workers, overwrite=overwrite, manifest_of=manifest_of)


def write_shards(features: str | os.PathLike, annotations: str | os.PathLike, split: str,
                 out: str | os.PathLike, videos_per_shard: int | None = DEFAULT_VIDEOS_PER_SHARD,
                 num_shards: int | None = None, pool_frames: bool = True, dtype: str = "float16",
                 overwrite: bool = False, num_segments: int = 10, spec: FeatureSpec | None = None,
                 shuffle_seed: int | None = 0, workers: int = 1) -> dict:
    """Shard one split of an LLP-layout dataset; returns the manifest (also in ``out/manifest.json``).

    ``videos_per_shard`` (ignored when ``num_shards`` is given, which balances sizes instead).
    ``shuffle_seed``: videos are permuted once before sharding (None keeps CSV order).
    Output appears atomically: everything is written to a temporary sibling folder and renamed;
    on any error nothing is left behind (and an existing ``out`` is untouched). The res152 frames
    per segment are the ones the feature folder declares (``features.folder_spec``: 1 for a
    ``ppl-avvp synth --pool`` folder), else ``spec``'s.
    """
    spec = FeatureSpec(num_segments=num_segments) if spec is None else spec
    spec.validate()
    features, annotations = Path(features).absolute(), Path(annotations).absolute()
    if not features.is_dir():
        raise DataError(f"{features}: feature directory not found")
    spec = folder_spec(features, spec)
    ann = load_split(annotations, split, num_segments=spec.num_segments)
    shapes = {k: tuple(v) for k, v in spec.output_shapes(pool_frames).items()}
    return _write_split(
        out, split, ann.video_ids, ann.filenames, ann.weak_labels, ann.dense_audio, ann.dense_visual,
        _FileFeatures(str(features), spec, pool_frames), shapes, ann.classes,
        num_segments=spec.num_segments,
        frames_per_segment=1 if pool_frames else spec.frames_per_segment,
        pool_frames=pool_frames, dtype=dtype, videos_per_shard=videos_per_shard,
        num_shards=num_shards, shuffle_seed=shuffle_seed, overwrite=overwrite, workers=workers,
        source={"features": str(features), "annotations": str(annotations),
                "feature_spec": spec.to_dict()})


def write_shards_from_arrays(out: str | os.PathLike, split: str, video_ids: Sequence[str],
                             features: dict[str, np.ndarray] | Callable[[int, str], dict],
                             weak_labels: np.ndarray, classes: Sequence[str],
                             dense_audio: np.ndarray | None = None,
                             dense_visual: np.ndarray | None = None,
                             filenames: Sequence[str] | None = None,
                             shapes: dict[str, tuple[int, ...]] | None = None,
                             videos_per_shard: int | None = DEFAULT_VIDEOS_PER_SHARD,
                             num_shards: int | None = None, dtype: str = "float16",
                             pool_frames: bool = True, frames_per_segment: int = 1,
                             shuffle_seed: int | None = None, overwrite: bool = False,
                             source: dict | None = None) -> dict:
    """Shard features held in memory (benchmarks, tests, other datasets' converters).

    ``features``: ``{"audio": (N,T,Da), "visual_2d": (N,T',D2), "visual_3d": (N,T,D3)}`` or a
    callable ``(row, video_id) -> {field: array}`` (then pass ``shapes``, per-video shapes).
    A sample's ``split_row`` is its row in these arrays.
    """
    ids = list(video_ids)
    if shapes is None:
        if callable(features):
            raise ConfigError("shapes: required when features is a callable")
        shapes = {k: tuple(np.shape(features[k])[1:]) for k in FEATURE_FIELDS}
    shapes = {k: tuple(int(d) for d in shapes[k]) for k in FEATURE_FIELDS}
    return _write_split(
        out, split, ids, list(filenames) if filenames is not None else ids, weak_labels,
        dense_audio, dense_visual, _ArrayFeatures(features), shapes, tuple(classes),
        num_segments=shapes["audio"][0], frames_per_segment=frames_per_segment,
        pool_frames=pool_frames, dtype=dtype, videos_per_shard=videos_per_shard,
        num_shards=num_shards, shuffle_seed=shuffle_seed, overwrite=overwrite, workers=1,
        source=source or {"arrays": True})
