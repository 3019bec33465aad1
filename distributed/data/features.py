"""Per-video feature files in the LLP layout: reading, checking and stacking.

LLP ships one ``<11-char id>.npy`` per video and feature stream::

    <feature_dir>/vggish/<id>.npy        (T, 128)    float32   audio (VGGish)
    <feature_dir>/res152/<id>.npy        (F*T, 2048) float32   visual 2D (ResNet-152, F=8 frames/segment)
    <feature_dir>/r2plus1d_18/<id>.npy   (T, 512)    float32   visual 3D (R(2+1)D-18)

``read_video_features`` loads one video and checks every file (present, float, the expected shape,
finite values once cast to float32); anything wrong is a :class:`~distributed.common.errors.DataError`
whose single-line message names the file and the problem. With ``pool_frames=True`` (the default) the F res152 frames of each
segment are averaged into one (T, 2048) row: the network's first layer on that input is linear, so
averaging the frames first is exactly what averaging the projected frames would give, at 1/F of
the memory. ``load_features`` reads many videos with a small thread pool into preallocated
``(N, ...)`` arrays.

A folder may declare how many res152 rows per segment it stores: ``ppl-avvp synth`` writes
``synth.json`` beside its ``features/`` folder, and after ``synth --pool`` its res152 files are
``(T, 2048)`` (``feature_spec.frames_per_segment = 1``). Every reader here (and so the in-memory
training data, ``ppl-avvp shard`` and ``predict``) takes the frames per segment from that file
when present (:func:`folder_spec`), else from the caller's ``FeatureSpec`` (LLP: 8).

Files are read with ``np.load(..., allow_pickle=False)``: a feature file can never run code.
"""
from __future__ import annotations

import functools
import json
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from distributed.common.errors import ConfigError, DataError
from distributed.data.llp import FEATURE_DIRS, LLP_FRAMES_PER_SEGMENT, LLP_NUM_SEGMENTS

__all__ = ["FeatureSpec", "read_video_features", "load_features", "feature_path", "folder_spec", "FEATURE_KEYS",
           "SYNTH_META_FILE"]

FEATURE_KEYS: tuple[str, ...] = ("audio", "visual_2d", "visual_3d")
SYNTH_META_FILE = "synth.json"   # written by `ppl-avvp synth` beside its features/ folder


@dataclass(frozen=True)
class FeatureSpec:
    """Shapes of one video's features. LLP is the default; other datasets only change numbers.

    ``frames_per_segment`` is the number of res152 rows per segment stored in the file (LLP: 8;
    1 for a dataset written with pre-pooled frames).
    """

    num_segments: int = LLP_NUM_SEGMENTS
    frames_per_segment: int = LLP_FRAMES_PER_SEGMENT
    audio_dim: int = 128
    visual_2d_dim: int = 2048
    visual_3d_dim: int = 512

    def validate(self) -> "FeatureSpec":
        for name, value in asdict(self).items():
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ConfigError(f"FeatureSpec.{name}: must be a positive integer, got {value!r}")
        return self

    def file_shapes(self) -> dict[str, tuple[int, int]]:
        """Shape of each stream's ``.npy`` file."""
        t = self.num_segments
        return {
            "audio": (t, self.audio_dim),
            "visual_2d": (t * self.frames_per_segment, self.visual_2d_dim),
            "visual_3d": (t, self.visual_3d_dim),
        }

    def output_shapes(self, pool_frames: bool = True) -> dict[str, tuple[int, int]]:
        """Shape of each stream as returned by :func:`read_video_features` (per video)."""
        shapes = self.file_shapes()
        if pool_frames:
            shapes["visual_2d"] = (self.num_segments, self.visual_2d_dim)
        return shapes

    def to_dict(self) -> dict[str, int]:
        return {k: int(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> "FeatureSpec":
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"FeatureSpec: unknown field(s) {', '.join(unknown)}")
        return cls(**data).validate()


def feature_path(feature_dir: str | os.PathLike, vid: str, key: str) -> Path:
    """``<feature_dir>/<stream folder>/<vid>.npy`` for ``key`` in :data:`FEATURE_KEYS`."""
    return Path(feature_dir) / FEATURE_DIRS[key] / f"{vid}.npy"


@functools.lru_cache(maxsize=64)
def _declared_frames(meta_path: str, _mtime_ns: int, _size: int) -> int:
    """``feature_spec.frames_per_segment`` of a synth.json (cached per file version)."""
    try:
        meta = json.loads(Path(meta_path).read_text(encoding="utf-8"))
        frames = meta["feature_spec"]["frames_per_segment"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise DataError(f"{meta_path}: cannot read feature_spec.frames_per_segment "
                        f"({' '.join(str(err).split()) or type(err).__name__})") from None
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
        raise DataError(f"{meta_path}: feature_spec.frames_per_segment must be a positive integer, got {frames!r}")
    return frames


def folder_spec(feature_dir: str | os.PathLike, spec: FeatureSpec) -> FeatureSpec:
    """``spec`` with the res152 frames per segment that ``feature_dir`` stores, if it says so.

    A ``ppl-avvp synth`` output declares it in ``<feature_dir>/../synth.json`` (1 after ``--pool``);
    any other folder (LLP's own) declares nothing and ``spec`` is returned as given.
    """
    meta = Path(feature_dir).absolute().parent / SYNTH_META_FILE
    try:
        st = meta.stat()
    except OSError:
        return spec
    frames = _declared_frames(str(meta), st.st_mtime_ns, st.st_size)
    return spec if frames == spec.frames_per_segment else replace(spec, frames_per_segment=frames)


# numpy parses .npy headers with ast.literal_eval, which CPython 3.11 does not make thread-safe: parsed from
# several threads at once it fails with "AST constructor recursion depth mismatch" (python/cpython#106905).
# load_features reads with a thread pool, so headers are parsed under this lock and data read without np.load.
_HEADER_LOCK = threading.Lock()


def _read_header(path: Path) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """(shape, fortran_order, dtype, data offset) from the ``.npy`` header alone: a hostile header claiming
    10**12 rows allocates nothing."""
    try:
        with open(path, "rb") as fh, _HEADER_LOCK:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            else:
                raise ValueError(f"format version {version[0]}.{version[1]} is not supported")
            offset = fh.tell()
    except FileNotFoundError:
        raise DataError(f"{path}: feature file not found") from None
    except Exception as err:  # noqa: BLE001 - any parse failure of an untrusted header is bad data
        msg = " ".join(str(err).split()) or type(err).__name__
        raise DataError(f"{path}: unreadable .npy file ({msg[:200]})") from None
    return tuple(shape), bool(fortran), dtype, offset


def npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of a ``.npy`` file, from its header alone."""
    shape, _, dtype, _ = _read_header(path)
    return shape, dtype


def load_checked(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """The file as float32, checked; finiteness is checked after the cast (1e300 in float64 is inf)."""
    file_shape, fortran, dtype, offset = _read_header(path)
    if dtype.hasobject:
        raise DataError(f"{path}: unreadable .npy file (an object array: reading it would unpickle; refused)")
    if dtype.kind != "f":
        raise DataError(f"{path}: dtype {dtype}, expected a float array (float32)")
    if file_shape != shape:
        raise DataError(f"{path}: shape {file_shape}, expected {shape}")
    count = int(np.prod(shape))
    try:
        flat = np.fromfile(path, dtype=dtype, count=count, offset=offset)
    except Exception as err:  # noqa: BLE001 - unreadable data
        msg = " ".join(str(err).split()) or type(err).__name__
        raise DataError(f"{path}: unreadable .npy file ({msg[:200]})") from None
    if flat.size != count:
        raise DataError(f"{path}: unreadable .npy file (truncated: {flat.size} of {count} values)")
    arr = flat.reshape(shape, order="F" if fortran else "C")
    with np.errstate(over="ignore", invalid="ignore"):   # overflow is reported below, naming the file
        cast = arr.astype(np.float32, copy=False)
    finite = np.isfinite(cast)
    if not finite.all():
        bad = int(finite.size - np.count_nonzero(finite))
        beyond = " or beyond float32's range" if arr.dtype.itemsize > 4 and np.isfinite(arr).all() else ""
        raise DataError(f"{path}: {bad} non-finite value(s) (NaN or inf{beyond}) as float32")
    return cast


def _read_into(feature_dir: Path, vid: str, spec: FeatureSpec, pool_frames: bool,
               out: dict[str, np.ndarray], index: int) -> None:
    shapes = spec.file_shapes()
    for key in FEATURE_KEYS:
        arr = load_checked(feature_path(feature_dir, vid, key), shapes[key])
        if key == "visual_2d" and pool_frames and spec.frames_per_segment > 1:
            arr = arr.reshape(spec.num_segments, spec.frames_per_segment, spec.visual_2d_dim)
            np.mean(arr, axis=1, dtype=np.float32, out=out[key][index])
        else:
            out[key][index] = arr


def _allocate(n: int | None, spec: FeatureSpec, pool_frames: bool) -> dict[str, np.ndarray]:
    lead = () if n is None else (n,)
    return {k: np.empty(lead + s, dtype=np.float32) for k, s in spec.output_shapes(pool_frames).items()}


def read_video_features(feature_dir: str | os.PathLike, vid: str, spec: FeatureSpec = FeatureSpec(),
                        pool_frames: bool = True) -> dict[str, np.ndarray]:
    """One video's features as float32 arrays.

    Returns ``{"audio": (T, 128), "visual_2d": (T, 2048) if pool_frames else (F*T, 2048),
    "visual_3d": (T, 512)}`` (widths from ``spec``; F from :func:`folder_spec`). Raises DataError
    naming the file on a missing file, wrong shape, non-float dtype or NaN/inf values.
    """
    spec = folder_spec(feature_dir, spec.validate())
    out = _allocate(None, spec, pool_frames)
    # Write through 0-d indexing: reuse the batch path with a leading axis of one.
    batch = {k: v[None] for k, v in out.items()}
    _read_into(Path(feature_dir), vid, spec, pool_frames, batch, 0)
    return out


def _default_threads() -> int:
    return max(1, min(8, 2 * (os.cpu_count() or 1)))


def load_features(feature_dir: str | os.PathLike, video_ids: Sequence[str],
                  spec: FeatureSpec = FeatureSpec(), pool_frames: bool = True,
                  num_threads: int | None = None) -> dict[str, np.ndarray]:
    """Features of many videos stacked as ``(N, ...)`` float32 arrays, rows in ``video_ids`` order.

    The output is allocated once and each video is read straight into its row by a small thread
    pool (``num_threads``; default ``min(8, 2 * cpus)``; 1 reads in this thread). The first bad file
    (in ``video_ids`` order) raises its DataError. F is :func:`folder_spec`'s.
    """
    feature_dir = Path(feature_dir)
    spec = folder_spec(feature_dir, spec.validate())
    if not feature_dir.is_dir():
        raise DataError(f"{feature_dir}: feature directory not found")
    for key in FEATURE_KEYS:
        sub = feature_dir / FEATURE_DIRS[key]
        if not sub.is_dir():
            raise DataError(f"{sub}: feature folder not found (expected {FEATURE_DIRS[key]}/<id>.npy files)")
    ids = list(video_ids)
    out = _allocate(len(ids), spec, pool_frames)
    threads = _default_threads() if num_threads is None else int(num_threads)
    if threads < 1:
        raise ConfigError(f"num_threads: must be >= 1, got {num_threads!r}")
    if threads == 1 or len(ids) < 2:
        for i, vid in enumerate(ids):
            _read_into(feature_dir, vid, spec, pool_frames, out, i)
        return out
    with ThreadPoolExecutor(max_workers=min(threads, len(ids))) as pool:
        futures = [pool.submit(_read_into, feature_dir, vid, spec, pool_frames, out, i)
                   for i, vid in enumerate(ids)]
        try:
            for fut in futures:
                fut.result()
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise
    return out
