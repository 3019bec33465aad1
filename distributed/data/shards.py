"""WebDataset shards of an LLP-layout split: writer, verifier and the per-rank reader.

One sample per video, brace-named tars ``{split}-000000.tar …`` plus ``manifest.json`` (counts,
sha256, shapes, dtypes, classes, source) and ``keys.json`` (the video ids of each shard, in order)::

    <id>.audio.npy  <id>.visual_2d.npy  <id>.visual_3d.npy  <id>.labels.npy  <id>.json
    <id>.dense_audio.npy  <id>.dense_visual.npy            (splits with dense truth only)

Decoding never unpickles: ``np.load(..., allow_pickle=False)`` and ``json`` only.

All shard arithmetic lives here (as OpenCLIP's ``data.py``). The reader never asks the environment
who it is: ``rank``/``world_size`` are arguments and the loader-worker id comes from torch.

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
one video and so by at most one batch. ``max_eval_batches`` is the largest per-rank batch count;
``make_eval_loader(pad_to=...)`` appends all-invalid padding batches up to it, for collectives
(ZeRO-3 forwards) that need every rank to run the same number of steps.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import io
import itertools
import json
import logging
import math
import os
import re
import shutil
import tarfile
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds
from webdataset.tariterators import base_plus_ext, tar_file_iterator

from distributed.common.errors import ConfigError, DataError, UserError
from distributed.common.fsutil import swap_in

__all__ = [
    "MANIFEST_NAME", "KEYS_NAME", "write_shards", "write_shards_from_arrays", "verify_shards",
    "load_manifest", "Segment", "train_batches_per_epoch", "train_plan", "EvalAssignment",
    "eval_assignment", "max_eval_batches", "ShardLoader", "ShardReader", "make_train_loader",
    "make_eval_loader", "check_key",
]

log = logging.getLogger(__name__)

FORMAT = "ppl-avvp-shards"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
KEYS_NAME = "keys.json"
FEATURE_FIELDS = ("audio", "visual_2d", "visual_3d")
DENSE_FIELDS = ("dense_audio", "dense_visual")
DTYPES = ("float16", "float32")
DEFAULT_VIDEOS_PER_SHARD = 256
DEFAULT_SHUFFLE_BUFFER = 1024
# Fixed entropy words so the different random streams of one (seed, epoch) never coincide.
_SALT_SHARD_ORDER, _SALT_BLOCK, _SALT_RESAMPLE, _SALT_WRITE = 0x5A4D, 0xB10C, 0x2E5A, 0x3817
_TAR_MTIME = 0  # fixed member mtime: the same input gives byte-identical shards (same sha256)
_KEY_RE = re.compile(r"^[!-~]+$")  # printable ASCII, no spaces


# ============================================================================================
# Writer
# ============================================================================================

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


def _npy_bytes(arr: np.ndarray) -> bytes:
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

    def __init__(self, feature_dir: str, spec: Any, pool_frames: bool):
        self.feature_dir, self.spec, self.pool_frames = feature_dir, spec, pool_frames

    def __call__(self, index: int, vid: str) -> dict[str, np.ndarray]:
        from distributed.data.features import read_video_features
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
    path: str
    name: str
    ids: list[str]
    filenames: list[str]
    rows: list[int]           # row of each video in the split arrays (for the feature loader)
    weak_labels: np.ndarray   # (n, C) float32
    dense_audio: np.ndarray | None
    dense_visual: np.ndarray | None
    shapes: dict[str, tuple[int, ...]]
    dtype: str
    loader: Callable[[int, str], dict]


def _write_one_shard(job: _ShardJob) -> dict:
    """Write one tar (members in a fixed order, fixed mtime) and return its manifest entry."""
    out = _HashingFile(Path(job.path))
    try:
        with wds.TarWriter(out, encoder=False, mtime=_TAR_MTIME) as sink:
            for j, vid in enumerate(job.ids):
                feats = job.loader(job.rows[j], vid)
                sample: dict[str, Any] = {"__key__": vid}
                for field in FEATURE_FIELDS:
                    if field not in feats:
                        raise DataError(f"video {vid!r}: feature {field!r} missing")
                    arr = np.asarray(feats[field])
                    if arr.shape != job.shapes[field]:
                        raise DataError(f"video {vid!r}: {field} has shape {arr.shape}, "
                                        f"expected {job.shapes[field]}")
                    cast = arr.astype(job.dtype, copy=False)
                    if not np.isfinite(cast).all():
                        raise DataError(f"video {vid!r}: {field} has NaN/inf values after the cast "
                                        f"to {job.dtype} (|x| > 65504 overflows float16: use --dtype float32)")
                    sample[f"{field}.npy"] = _npy_bytes(cast)
                sample["labels.npy"] = _npy_bytes(job.weak_labels[j].astype(np.float32))
                if job.dense_audio is not None:
                    sample["dense_audio.npy"] = _npy_bytes(job.dense_audio[j].astype(np.uint8))
                    sample["dense_visual.npy"] = _npy_bytes(job.dense_visual[j].astype(np.uint8))
                sample["json"] = json.dumps({"video_id": vid, "filename": job.filenames[j]},
                                            sort_keys=True).encode("utf-8")
                sink.write(sample)
    finally:
        out.close()
    return {"name": job.name, "count": len(job.ids), "sha256": out.sha256.hexdigest(),
            "bytes": out.nbytes}


def _prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise UserError(f"{out}: exists and is not a directory")
        if any(out.iterdir()):
            if not overwrite:
                raise UserError(f"{out}: already exists and is not empty; pass --overwrite to replace it")
            if not (out / MANIFEST_NAME).is_file():
                raise UserError(f"{out}: refusing to overwrite a directory that is not a shard "
                                f"directory (no {MANIFEST_NAME})")
    out.parent.mkdir(parents=True, exist_ok=True)


def _write_split(out: str | os.PathLike, split: str, ids: Sequence[str], filenames: Sequence[str],
                 weak_labels: np.ndarray, dense_audio: np.ndarray | None,
                 dense_visual: np.ndarray | None, loader: Callable[[int, str], dict],
                 shapes: dict[str, tuple[int, ...]], classes: Sequence[str], *, num_segments: int,
                 frames_per_segment: int, pool_frames: bool, dtype: str,
                 videos_per_shard: int | None, num_shards: int | None, shuffle_seed: int | None,
                 overwrite: bool, workers: int, source: dict) -> dict:
    if dtype not in DTYPES:
        raise ConfigError(f"dtype: must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if not re.match(r"^[A-Za-z0-9_]+$", split):
        raise ConfigError(f"split: {split!r} must be letters, digits or '_' (it names the shards)")
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
    if isinstance(workers, bool) or int(workers) != workers or workers < 1:
        raise ConfigError(f"workers: must be a positive integer, got {workers!r}")

    out = Path(out).absolute()
    _prepare_out(out, overwrite)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        jobs, start = [], 0
        for s, size in enumerate(sizes):
            rows = [int(r) for r in order[start:start + size]]
            start += size
            name = f"{split}-{s:06d}.tar"
            jobs.append(_ShardJob(
                path=str(tmp / name), name=name, ids=[ids[r] for r in rows],
                filenames=[filenames[r] for r in rows], rows=rows, weak_labels=weak_labels[rows],
                dense_audio=np.asarray(dense_audio)[rows] if has_dense else None,
                dense_visual=np.asarray(dense_visual)[rows] if has_dense else None,
                shapes=shapes, dtype=dtype, loader=loader))
        if workers > 1 and len(jobs) > 1:
            with ProcessPoolExecutor(max_workers=min(int(workers), len(jobs))) as pool:
                entries = list(pool.map(_write_one_shard, jobs))
        else:
            entries = [_write_one_shard(job) for job in jobs]
        keys = {job.name: job.ids for job in jobs}
        keys_bytes = json.dumps(keys, separators=(",", ":")).encode("utf-8")
        (tmp / KEYS_NAME).write_bytes(keys_bytes)
        fields: dict[str, dict] = {f"{f}.npy": {"shape": list(shapes[f]), "dtype": dtype}
                                   for f in FEATURE_FIELDS}
        fields["labels.npy"] = {"shape": [len(classes)], "dtype": "float32"}
        if has_dense:
            for f in DENSE_FIELDS:
                fields[f"{f}.npy"] = {"shape": [num_segments, len(classes)], "dtype": "uint8"}
        fields["json"] = {"type": "json", "keys": ["filename", "video_id"]}
        last = len(sizes) - 1
        manifest = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "split": split,
            "pattern": f"{split}-{{000000..{last:06d}}}.tar",
            "num_shards": len(sizes),
            "num_samples": n,
            "shards": entries,
            "fields": fields,
            "classes": list(classes),
            "num_classes": len(classes),
            "num_segments": int(num_segments),
            "frames_per_segment": int(frames_per_segment),
            "pool_frames": bool(pool_frames),
            "dtype": dtype,
            "has_dense": bool(has_dense),
            "order": {"shuffled": shuffle_seed is not None, "seed": shuffle_seed},
            "keys_file": KEYS_NAME,
            "keys_sha256": hashlib.sha256(keys_bytes).hexdigest(),
            "source": source,
            "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "writer": {"webdataset": getattr(wds, "__version__", "unknown"), "numpy": np.__version__},
        }
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1) + "\n")
        swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def write_shards(features: str | os.PathLike, annotations: str | os.PathLike, split: str,
                 out: str | os.PathLike, videos_per_shard: int | None = DEFAULT_VIDEOS_PER_SHARD,
                 num_shards: int | None = None, pool_frames: bool = True, dtype: str = "float16",
                 overwrite: bool = False, num_segments: int = 10, spec: Any = None,
                 shuffle_seed: int | None = 0, workers: int = 1) -> dict:
    """Shard one split of an LLP-layout dataset; returns the manifest (also in ``out/manifest.json``).

    ``videos_per_shard`` (ignored when ``num_shards`` is given, which balances sizes instead).
    ``shuffle_seed``: videos are permuted once before sharding (None keeps CSV order).
    Output appears atomically: everything is written to a temporary sibling folder and renamed;
    on any error nothing is left behind (and an existing ``out`` is untouched).
    """
    from distributed.data.features import FeatureSpec
    from distributed.data.llp import load_split

    spec = FeatureSpec(num_segments=num_segments) if spec is None else spec
    spec.validate()
    features, annotations = Path(features).absolute(), Path(annotations).absolute()
    if not features.is_dir():
        raise DataError(f"{features}: feature directory not found")
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


# ============================================================================================
# Manifest and verification
# ============================================================================================

def load_manifest(shard_dir: str | os.PathLike | dict) -> dict:
    """The manifest of a shard directory (a dict passes through), checked for the keys we use."""
    if isinstance(shard_dir, dict):
        return shard_dir
    path = Path(shard_dir) / MANIFEST_NAME
    if not Path(shard_dir).is_dir():
        raise DataError(f"{shard_dir}: shard directory not found")
    if not path.is_file():
        raise DataError(f"{path}: not found (write shards with `ppl-avvp shard`)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: unreadable manifest ({' '.join(str(err).split())})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(f"{path}: not a {FORMAT} manifest")
    if manifest.get("version") != FORMAT_VERSION:
        raise DataError(f"{path}: version {manifest.get('version')!r}, this reader reads {FORMAT_VERSION}")
    for key in ("split", "shards", "fields", "num_samples", "classes", "has_dense"):
        if key not in manifest:
            raise DataError(f"{path}: field {key!r} missing")
    shards = manifest["shards"]
    if not shards or any(not isinstance(s, dict) or not {"name", "count", "sha256"} <= set(s)
                         for s in shards):
        raise DataError(f"{path}: field 'shards' must list {{name, count, sha256}} entries")
    if sum(int(s["count"]) for s in shards) != manifest["num_samples"]:
        raise DataError(f"{path}: shard counts do not add up to num_samples={manifest['num_samples']}")
    return manifest


def _sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def verify_shards(shard_dir: str | os.PathLike, deep: bool = False) -> list[str]:
    """Problems found (empty list = all good): sha256, sample counts and keys against the manifest.

    ``deep=True`` also decodes every sample and checks fields, shapes and dtypes.
    """
    shard_dir = Path(shard_dir)
    manifest = load_manifest(shard_dir)
    keys_path = shard_dir / manifest.get("keys_file", KEYS_NAME)
    problems: list[str] = []
    keys: dict | None = None
    try:
        raw = keys_path.read_bytes()
        if manifest.get("keys_sha256") and hashlib.sha256(raw).hexdigest() != manifest["keys_sha256"]:
            problems.append(f"{keys_path}: sha256 differs from the manifest")
        else:
            keys = json.loads(raw)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        problems.append(f"{keys_path}: unreadable ({_one_line(err)})")
    for entry in manifest["shards"]:
        path = shard_dir / entry["name"]
        if not path.is_file():
            problems.append(f"{path}: missing")
            continue
        issues: list[str] = []
        digest = _sha256_file(path)
        if digest != entry["sha256"]:
            issues.append(f"sha256 {digest[:12]}… differs from the manifest's {entry['sha256'][:12]}…")
        found: list[str] = []
        try:
            for sample in _iter_tar_samples(path):
                found.append(sample["__key__"])
                if deep:
                    _decode_sample(sample, manifest, path)
        except DataError as err:
            issues.append(str(err).removeprefix(f"shard {path}: "))
        else:
            if len(found) != entry["count"]:
                issues.append(f"{len(found)} samples, manifest says {entry['count']}")
            elif keys is not None and keys.get(entry["name"]) != found:
                issues.append(f"sample keys differ from {keys_path.name}")
        if issues:
            problems.append(f"{path}: " + "; ".join(issues))
    return problems


# ============================================================================================
# Reader: shard arithmetic (pure functions of the manifest)
# ============================================================================================

@dataclass(frozen=True)
class Segment:
    """Samples ``[start, stop)`` (positions inside the shard) of manifest shard ``shard``."""

    shard: int
    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ConfigError(f"{name}: must be an integer >= {low}, got {value!r}")
    return int(value)


def _check_rank(rank: int, world_size: int) -> None:
    _check_int("world_size", world_size, 1)
    _check_int("rank", rank, 0)
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


def _worker_skips(skip_batches: int, per_worker: Sequence[int]) -> list[int]:
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
    _check_int("batch_size", batch_size, 1)
    _check_int("world_size", world_size, 1)
    total = int(manifest["num_samples"])
    samples = total if samples_per_epoch is None else _check_int("samples_per_epoch", samples_per_epoch, 1)
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
               shuffle: bool = True) -> list[tuple[list[Segment], int]]:
    """Per loader worker of this rank: (segments to read in order, batches to make from them).

    Pure function of the manifest and the arguments; see the module docstring for the layout.
    """
    manifest = load_manifest(manifest)
    _check_rank(rank, world_size)
    _check_int("num_workers", num_workers, 0)
    epoch, seed = _check_int("epoch", epoch, 0), _check_int("seed", seed, 0)
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
    plans: list[tuple[list[Segment], int]] = []
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
        return math.ceil(self.num_samples / _check_int("batch_size", batch_size, 1))


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
        keys = _load_keys(shard_dir, manifest)
        ids = tuple(k for seg in segments for k in keys[manifest["shards"][seg.shard]["name"]][seg.start:seg.stop])
    return EvalAssignment(rank, world_size, start, stop, segments, ids)


def max_eval_batches(manifest: dict | str | os.PathLike, batch_size: int, world_size: int) -> int:
    """The largest number of eval batches any rank gets (ranks differ by at most one batch).

    The largest share is ``ceil(N / world_size)`` videos (rank sizes are floor or ceil of N/W).
    """
    manifest = load_manifest(manifest)
    _check_int("batch_size", batch_size, 1)
    _check_int("world_size", world_size, 1)
    return math.ceil(math.ceil(int(manifest["num_samples"]) / world_size) / batch_size)


def _load_keys(shard_dir: Path, manifest: dict) -> dict[str, list[str]]:
    path = shard_dir / manifest.get("keys_file", KEYS_NAME)
    try:
        keys = json.loads(path.read_bytes())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: unreadable ({_one_line(err)})") from None
    for entry in manifest["shards"]:
        if len(keys.get(entry["name"], ())) != entry["count"]:
            raise DataError(f"{path}: keys of {entry['name']} do not match the manifest count")
    return keys


# ============================================================================================
# Reader: tar iteration and decoding
# ============================================================================================

_TAR_ERRORS = (tarfile.TarError, OSError, EOFError, ValueError, AssertionError)


class _TarSamples:
    """Samples of one tar, grouped as WebDataset does (consecutive members sharing a key).

    ``current`` names the sample being read when an error happens, for the message.
    """

    def __init__(self, path: Path):
        self.path = path
        self.current: str | None = None
        self.count = 0

    def __iter__(self) -> Iterator[dict]:
        sample: dict | None = None
        with open(self.path, "rb") as fh:
            for member in tar_file_iterator(fh):
                key, suffix = base_plus_ext(member["fname"])
                if key is None:
                    continue
                suffix = suffix.lower()
                if sample is None or key != sample["__key__"]:
                    if sample is not None:
                        self.count += 1
                        yield sample
                    sample = {"__key__": key}
                    self.current = key
                if suffix in sample:
                    raise DataError(f"shard {self.path}: sample {key!r}: {suffix} appears twice")
                sample[suffix] = member["data"]
        if sample is not None:
            self.count += 1
            self.current = None
            yield sample


def _iter_tar_samples(path: Path) -> Iterator[dict]:
    reader = _TarSamples(path)
    try:
        yield from reader
    except DataError:
        raise
    except _TAR_ERRORS as err:
        where = f"sample {reader.current!r}" if reader.current else f"sample #{reader.count}"
        raise DataError(f"shard {path}: corrupt or truncated tar at {where} ({_one_line(err)})") from None


_NPY_MAGIC = b"\x93NUMPY\x01"
_npy_headers: dict[bytes, tuple[np.dtype, tuple[int, ...], int]] = {}


def _load_npy(data: bytes) -> np.ndarray:
    """``np.load(allow_pickle=False)`` of ``.npy`` bytes, with the header parse cached.

    Every sample of a field has the same header; once ``np.load`` has parsed a header and
    produced a plain C-ordered array, later payloads with byte-identical headers and the right
    length are viewed with ``np.frombuffer`` (same result, no ``ast`` parse per array). Anything
    else goes through ``np.load``.
    """
    if data[:7] == _NPY_MAGIC and len(data) >= 10:
        end = 10 + int.from_bytes(data[8:10], "little")
        hit = _npy_headers.get(data[:end])
        if hit is not None and len(data) - end == hit[2]:
            return np.frombuffer(data, dtype=hit[0], offset=end).reshape(hit[1])
    arr = np.load(io.BytesIO(data), allow_pickle=False)
    if (isinstance(arr, np.ndarray) and data[:7] == _NPY_MAGIC and arr.flags.c_contiguous
            and not arr.dtype.hasobject and len(_npy_headers) < 256):
        end = 10 + int.from_bytes(data[8:10], "little")
        if len(data) - end == arr.nbytes:
            _npy_headers[data[:end]] = (arr.dtype, arr.shape, arr.nbytes)
    return arr


def _decode_sample(raw: dict, manifest: dict, path: Path) -> dict:
    """Check and decode one raw sample; DataError names the shard and the sample key."""
    key = raw.get("__key__")
    where = f"shard {path}: sample {key!r}"
    out: dict[str, Any] = {"__key__": key}
    for field, spec in manifest["fields"].items():
        if field not in raw:
            raise DataError(f"{where}: missing {field}")
        if spec.get("type") == "json":
            try:
                meta = json.loads(raw[field].decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as err:
                raise DataError(f"{where}: {field} is not valid JSON ({_one_line(err)})") from None
            if not isinstance(meta, dict):
                raise DataError(f"{where}: {field} must be a JSON object")
            out["filename"] = str(meta.get("filename", key))
            continue
        try:
            arr = _load_npy(raw[field])
        except Exception as err:  # noqa: BLE001 - any parse failure of untrusted bytes is bad data
            raise DataError(f"{where}: {field} is not a readable .npy ({_one_line(err)})") from None
        if not isinstance(arr, np.ndarray):
            arr.close()
            raise DataError(f"{where}: {field} is an .npz archive, expected .npy")
        if list(arr.shape) != list(spec["shape"]) or str(arr.dtype) != spec["dtype"]:
            raise DataError(f"{where}: {field} is {arr.dtype}{list(arr.shape)}, manifest says "
                            f"{spec['dtype']}{list(spec['shape'])}")
        out[field[:-4]] = arr
    return out


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
    batch["valid"] = torch.tensor(valid, dtype=torch.bool)
    return batch


def _padding_batch(manifest: dict) -> dict:
    """One all-zero row marked invalid: lets a rank take part in a collective with nothing to score."""
    sample: dict[str, Any] = {"__key__": "", "filename": ""}
    for field, spec in manifest["fields"].items():
        if spec.get("type") != "json":
            sample[field[:-4]] = np.zeros(spec["shape"], dtype=spec["dtype"])
    batch = _collate([sample], manifest, [False])
    batch["_bad"] = []
    return batch


class _Bad:
    """Placeholder for a sample that could not be read (kept so positions and batch counts hold)."""

    __slots__ = ("reason",)

    def __init__(self, reason: str):
        self.reason = reason


class _ShardStream(torch.utils.data.IterableDataset):
    """What one rank reads: per-worker segment plans -> decoded, collated batches."""

    def __init__(self, shard_dir: Path, manifest: dict, plans: list[tuple[list[Segment], int]], *,
                 batch_size: int, train: bool, seed: int, epoch: int, rank: int,
                 shuffle_buffer: int, shuffle: bool, skip_batches: int, skip_bad_samples: bool,
                 verify: bool):
        super().__init__()
        self.shard_dir, self.manifest, self.plans = shard_dir, manifest, plans
        self.batch_size, self.train = batch_size, train
        self.seed, self.epoch, self.rank = seed, epoch, rank
        self.shuffle_buffer, self.shuffle = shuffle_buffer, shuffle
        self.skips = _worker_skips(skip_batches, [n for _, n in plans])
        # The DataLoader starts its round-robin at worker 0: after skipping k batches the next
        # output batch belongs to plan worker k % W, so loader worker i serves plan (i + k) % W.
        self.rotation = skip_batches % len(plans)
        self.skip_bad_samples, self.verify = skip_bad_samples, verify

    # -- raw samples in plan order ------------------------------------------------------------
    def _raw(self, segments: list[Segment]) -> Iterator[dict | _Bad]:
        verified: dict[int, str | None] = {}
        for seg in segments:
            entry = self.manifest["shards"][seg.shard]
            path = self.shard_dir / entry["name"]
            if seg.shard not in verified and not path.is_file():
                verified[seg.shard] = f"shard {path}: missing (listed in {MANIFEST_NAME})"
            if self.verify and seg.shard not in verified:
                verified[seg.shard] = self._check_sha(path, entry["sha256"])
            problem = verified.get(seg.shard)
            if problem is not None:
                yield from self._bad(problem, len(seg))
                continue
            pos = 0
            try:
                for sample in _iter_tar_samples(path):
                    if pos >= seg.stop:
                        break
                    if pos >= seg.start:
                        sample["__shard__"] = path
                        yield sample
                    pos += 1
            except DataError as err:
                yield from self._bad(str(err), seg.stop - max(pos, seg.start))
                continue
            if pos < seg.stop:
                yield from self._bad(f"shard {path}: ends after {pos} samples, manifest says "
                                     f"{entry['count']} (truncated?)", seg.stop - max(pos, seg.start))

    def _check_sha(self, path: Path, expected: str) -> str | None:
        try:
            digest = _sha256_file(path)
        except OSError as err:
            return f"shard {path}: unreadable ({_one_line(err)})"
        if digest != expected:
            return (f"shard {path}: sha256 {digest[:12]}… differs from the manifest's {expected[:12]}… "
                    f"(corrupt or replaced; `ppl-avvp shard verify` lists all bad shards)")
        return None

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
                decoded.append(_decode_sample(item, self.manifest, item["__shard__"]))
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
    ``skip_bad_samples=True``), ``bad_samples`` (the first 100 reasons), ``padding`` (eval).
    """

    def __init__(self, dataset: _ShardStream, num_workers: int, expected_batches: int | None,
                 pad_to: int | None, pin_memory: bool, prefetch_factor: int | None,
                 multiprocessing_context: Any):
        self.dataset, self.num_workers = dataset, num_workers
        self.expected_batches, self.pad_to = expected_batches, pad_to
        self.pin_memory, self.prefetch_factor = pin_memory, prefetch_factor
        self.multiprocessing_context = multiprocessing_context
        self.stats: dict[str, Any] = {}

    def __len__(self) -> int:
        if self.pad_to is not None:
            return self.pad_to
        if self.expected_batches is not None:
            return self.expected_batches
        return sum(max(0, n - s) for (_, n), s in zip(self.dataset.plans, self.dataset.skips))

    def _source(self) -> Iterator[dict]:
        if self.num_workers == 0:
            return iter(self.dataset)
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_size=None, num_workers=self.num_workers, pin_memory=self.pin_memory,
            prefetch_factor=self.prefetch_factor, persistent_workers=False,
            multiprocessing_context=self.multiprocessing_context)
        return iter(loader)

    def __iter__(self) -> Iterator[dict]:
        self.stats = {"batches": 0, "samples": 0, "skipped": 0, "bad_samples": [], "padding": 0}
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
        if self.pad_to is not None:
            if self.stats["batches"] > self.pad_to:
                raise ConfigError(f"pad_to: {self.pad_to} is fewer than this rank's "
                                  f"{self.stats['batches']} eval batches (use max_eval_batches)")
            while self.stats["batches"] < self.pad_to:
                self.stats["batches"] += 1
                self.stats["padding"] += 1
                batch = _padding_batch(self.dataset.manifest)
                batch.pop("_bad")
                yield batch


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
    uint8 when the split has them; ``valid`` (B,) bool (False only on rows refilled after a bad
    sample); ``video_id``/``filename`` lists. Exactly ``train_batches_per_epoch(...) -
    skip_batches`` batches, all of ``batch_size`` rows. The order is a function of
    ``(seed, epoch, world_size, num_workers, batch_size, shuffle_buffer)``: resume with the same
    values and ``skip_batches`` = batches already done this epoch.
    """
    shard_dir = Path(shard_dir)
    manifest = load_manifest(shard_dir)
    _check_int("batch_size", batch_size, 1)
    _check_int("shuffle_buffer", shuffle_buffer, 1)
    plans = train_plan(manifest, batch_size, rank, world_size, num_workers, epoch, seed,
                       samples_per_epoch, resample, shuffle)
    total = sum(n for _, n in plans)
    skip_batches = _check_int("skip_batches", skip_batches, 0)
    if skip_batches > total:
        raise ConfigError(f"skip_batches: {skip_batches} is more than the epoch's {total} batches")
    dataset = _ShardStream(shard_dir, manifest, plans, batch_size=batch_size, train=True, seed=seed,
                           epoch=epoch, rank=rank, shuffle_buffer=shuffle_buffer, shuffle=shuffle,
                           skip_batches=skip_batches, skip_bad_samples=skip_bad_samples,
                           verify=verify)
    return ShardLoader(dataset, num_workers, total - skip_batches, None, pin_memory,
                       prefetch_factor, multiprocessing_context)


def make_eval_loader(shard_dir: str | os.PathLike, batch_size: int, rank: int, world_size: int,
                     num_workers: int = 0, skip_bad_samples: bool = False, pad_to: int | None = None,
                     verify: bool = False, pin_memory: bool = False,
                     prefetch_factor: int | None = None,
                     multiprocessing_context: Any = None) -> ShardLoader:
    """This rank's eval batches: each video of ``eval_assignment(shard_dir, rank, world_size)`` once.

    Batch counts may differ between ranks (by at most one; fewer when bad samples are skipped).
    ``pad_to=max_eval_batches(shard_dir, batch_size, world_size)`` appends one-row batches with
    ``valid == False`` until every rank has yielded exactly ``pad_to`` batches. Any batch may be
    shorter than ``batch_size`` (the last one; with ``skip_bad_samples``, bad rows are dropped).
    With loader workers, batch order interleaves workers; gather by ``video_id``.
    """
    shard_dir = Path(shard_dir)
    manifest = load_manifest(shard_dir)
    _check_int("batch_size", batch_size, 1)
    _check_int("num_workers", num_workers, 0)
    if pad_to is not None:
        _check_int("pad_to", pad_to, 0)
    share = eval_assignment(manifest, rank, world_size)
    readers = max(1, num_workers)
    per_worker = _worker_batches(share.num_batches(batch_size), readers)
    plans, first = [], share.start
    counts = _counts(manifest)
    for n_w in per_worker:
        hi = min(first + n_w * batch_size, share.stop)
        plans.append((_positions_to_segments(range(len(counts)), counts, first, hi), n_w))
        first = hi
    dataset = _ShardStream(shard_dir, manifest, plans, batch_size=batch_size, train=False, seed=0,
                           epoch=0, rank=rank, shuffle_buffer=1, shuffle=False, skip_batches=0,
                           skip_bad_samples=skip_bad_samples, verify=verify)
    return ShardLoader(dataset, num_workers, None, pad_to, pin_memory, prefetch_factor,
                       multiprocessing_context)


class ShardReader:
    """One shard directory, read by one rank: the training loop's handle on the shard path.

        reader = ShardReader(cfg.shards.train, rank=rank, world_size=world_size, num_workers=2)
        steps = reader.train_batches_per_epoch(batch_size)           # same on every rank
        for batch in reader.train_loader(batch_size, epoch=e, seed=cfg.seed, skip_batches=k): ...
    """

    def __init__(self, shard_dir: str | os.PathLike, rank: int = 0, world_size: int = 1,
                 num_workers: int = 0, skip_bad_samples: bool = False, verify: bool = False):
        _check_rank(rank, world_size)
        self.shard_dir = Path(shard_dir)
        self.manifest = load_manifest(self.shard_dir)
        self.rank, self.world_size = rank, world_size
        self.num_workers = _check_int("num_workers", num_workers, 0)
        self.skip_bad_samples, self.verify = skip_bad_samples, verify

    @property
    def num_samples(self) -> int:
        return int(self.manifest["num_samples"])

    @property
    def classes(self) -> list[str]:
        return list(self.manifest["classes"])

    @property
    def has_dense(self) -> bool:
        return bool(self.manifest["has_dense"])

    def train_batches_per_epoch(self, batch_size: int, samples_per_epoch: int | None = None,
                                resample: bool = False) -> int:
        return train_batches_per_epoch(self.manifest, batch_size, self.world_size,
                                       samples_per_epoch, resample)

    def train_loader(self, batch_size: int, epoch: int, seed: int = 0, **kw: Any) -> ShardLoader:
        kw.setdefault("num_workers", self.num_workers)
        kw.setdefault("skip_bad_samples", self.skip_bad_samples)
        kw.setdefault("verify", self.verify)
        return make_train_loader(self.shard_dir, batch_size, self.rank, self.world_size,
                                 epoch=epoch, seed=seed, **kw)

    def eval_assignment(self) -> EvalAssignment:
        return eval_assignment(self.shard_dir, self.rank, self.world_size)

    def max_eval_batches(self, batch_size: int) -> int:
        return max_eval_batches(self.manifest, batch_size, self.world_size)

    def eval_loader(self, batch_size: int, pad: bool = False, **kw: Any) -> ShardLoader:
        kw.setdefault("num_workers", self.num_workers)
        kw.setdefault("skip_bad_samples", self.skip_bad_samples)
        kw.setdefault("verify", self.verify)
        if pad:
            kw["pad_to"] = self.max_eval_batches(batch_size)
        return make_eval_loader(self.shard_dir, batch_size, self.rank, self.world_size, **kw)
