"""Two-stream I3D features for W-TAL (THUMOS14 and data sets of its shape): one plain ``.npy`` per video.

Two layouts, per video (the reader picks the one present):

* ``rgb/<video>.npy`` + ``flow/<video>.npy``, each (T, D), D = 1024 for I3D;
* ``<video>.npy`` (T, 2D), RGB columns first (the peers' "joined" files; what ``convert_joint`` writes).

One snippet = 16 frames at 25 fps (0.64 s), so a video of ``duration`` seconds has about
``duration * 25 / 16`` snippets (THUMOS14: 13 to 2,614). The reader checks T against that within
``max(2, 2 %)`` snippets (**ours**): enough for extractors that drop or pad the last snippet, too
little for features taken at 30 fps (+20 %) or matched to gt.json's wrong 24/25 fps durations
(-17 to -20 %), or for another video's file.

Files are read with ``allow_pickle=False``. The one exception in the product is
:func:`convert_joint`, the one-off conversion of the widely shared single-file "JOINT" array (a
pickled object array), which the user must opt into; it writes plain per-video files once.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from distributed.common.errors import DataError, UserError
from distributed.common.fsutil import check_output_dir, published_atomically, sha256_file
from distributed.data.features import load_checked, npy_header
from distributed.data.thumos14 import load_plain_array, string_list

FEATURE_FPS = 25.0          # frames per second the I3D features were taken at
SNIPPET_FRAMES = 16         # frames per snippet
I3D_DIM = 1024              # width of each stream
STREAMS = ("rgb", "flow")
T_TOLERANCE_SNIPPETS = 2    # |T - duration * 25 / 16| allowed: max(2 snippets, 2 % of the expected T)
T_TOLERANCE_FRACTION = 0.02
CONVERTED_META_FILE = "wtal_features.json"   # marks a convert_joint output folder


def expected_snippets(duration: float) -> float:
    """Snippets in a video of ``duration`` seconds: duration * 25 / 16 (not rounded)."""
    return duration * FEATURE_FPS / SNIPPET_FRAMES


def snippet_count(duration: float) -> int:
    """The whole snippets a generator writes for ``duration`` seconds (at least one)."""
    return max(1, int(math.floor(expected_snippets(duration))))


def check_snippet_count(where: str, t: int, duration: float) -> None:
    """One-line DataError when ``t`` snippets cannot belong to a video of ``duration`` seconds."""
    expected = expected_snippets(duration)
    tol = max(T_TOLERANCE_SNIPPETS, T_TOLERANCE_FRACTION * expected)
    if abs(t - expected) > tol:
        raise DataError(f"{where}: {t} snippets, but a {duration:.2f} s video has {expected:.1f} at "
                        f"{FEATURE_FPS:g} fps / {SNIPPET_FRAMES}-frame snippets (tolerance {tol:.1f}); "
                        f"features of another video or taken at another frame rate?")


def _read_2d(path: Path, width: int) -> np.ndarray:
    """A (T, width) float file as float32, T >= 1, finite after the cast (features.py's checks)."""
    shape, dtype = npy_header(path)
    if dtype.hasobject:
        raise DataError(f"{path}: an object array (reading it would unpickle; refused). For the pickled "
                        f"JOINT file run `ppl-avvp wtal convert-joint` once")
    if len(shape) != 2 or shape[1] != width or shape[0] < 1:
        raise DataError(f"{path}: shape {shape}, expected (T, {width}) with T >= 1 snippets")
    return load_checked(path, shape)


def feature_files(feature_dir: str | os.PathLike, video: str) -> dict[str, Path]:
    """The files that hold ``video``: {"rgb", "flow"} (split layout) or {"joined"}."""
    root = Path(feature_dir)
    split = {s: root / s / f"{video}.npy" for s in STREAMS}
    if any(p.exists() for p in split.values()):
        return split
    joined = root / f"{video}.npy"
    if joined.exists():
        return {"joined": joined}
    raise DataError(f"{root}: no features for {video!r} (expected rgb/{video}.npy + flow/{video}.npy "
                    f"or {video}.npy)")


def read_wtal_features(feature_dir: str | os.PathLike, video: str, *, dim: int = I3D_DIM,
                       duration: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One video's (rgb, flow) float32 arrays, each (T, dim); T is checked against ``duration`` if given."""
    files = feature_files(feature_dir, video)
    if "joined" in files:
        both = _read_2d(files["joined"], 2 * dim)
        rgb, flow = np.ascontiguousarray(both[:, :dim]), np.ascontiguousarray(both[:, dim:])
        where = str(files["joined"])
    else:
        rgb, flow = (_read_2d(files[s], dim) for s in STREAMS)
        if len(rgb) != len(flow):
            raise DataError(f"{files['flow']}: {len(flow)} snippets, but {files['rgb']} has {len(rgb)}")
        where = f"{files['rgb']} (and flow)"
    if duration is not None:
        check_snippet_count(where, len(rgb), duration)
    return rgb, flow


def read_split_features(feature_dir: str | os.PathLike, videos: Sequence[str], durations: Sequence[float],
                        *, dim: int = I3D_DIM) -> list[tuple[np.ndarray, np.ndarray]]:
    """Every video of a split (``Thumos14Split.videos`` / ``.duration``), checked; lengths vary."""
    if len(videos) != len(durations):
        raise UserError(f"{len(videos)} videos but {len(durations)} durations")
    return [read_wtal_features(feature_dir, v, dim=dim, duration=float(d)) for v, d in zip(videos, durations)]


# --------------------------------------------------------------------------------------------
# the one-off conversion of the pickled single-file JOINT array (the product's only unpickling)
# --------------------------------------------------------------------------------------------

def _safe_name(path: Path, row: int, name: str) -> str:
    if not name or "/" in name or "\\" in name or name.startswith(".") or "\0" in name:
        raise DataError(f"{path}: row {row} is {name!r}, not usable as a file name")
    return name


def _unpickle_joint(path: Path) -> np.ndarray:
    """The JOINT file, unpickled: only called after the user's explicit opt-in."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        arr = np.load(path, allow_pickle=True)   # the documented opt-in (convert_joint's allow_pickle)
    except Exception as err:  # noqa: BLE001 - any failure to read a foreign file is bad data
        msg = " ".join(str(err).split()) or type(err).__name__
        raise DataError(f"{path}: unreadable .npy file ({msg[:200]})") from None
    if not isinstance(arr, np.ndarray):
        raise DataError(f"{path}: expected one .npy array, found an .npz archive")
    if arr.dtype.hasobject and arr.ndim == 1:
        return arr
    if arr.dtype.kind == "f" and arr.ndim == 3:   # every video the same length: numpy stacks them
        return arr
    raise DataError(f"{path}: expected an object array of per-video (T, 2048) arrays, "
                    f"got dtype {arr.dtype} shape {arr.shape}")


def _joint_row(path: Path, row: int, name: str, item, width: int) -> np.ndarray:
    where = f"{path}: row {row} ({name})"
    if not isinstance(item, np.ndarray) or item.dtype.hasobject or item.dtype.kind != "f":
        kind = f"dtype {item.dtype}" if isinstance(item, np.ndarray) else type(item).__name__
        raise DataError(f"{where}: {kind}, expected a float array")
    if item.ndim != 2 or item.shape[1] != width or item.shape[0] < 1:
        raise DataError(f"{where}: shape {item.shape}, expected (T, {width}) with T >= 1 snippets")
    with np.errstate(over="ignore", invalid="ignore"):
        cast = np.ascontiguousarray(item, dtype=np.float32)
    if not np.isfinite(cast).all():
        raise DataError(f"{where}: non-finite value(s) (NaN or inf) as float32")
    return cast


def convert_joint(pickled_file: str | os.PathLike, videonames_file: str | os.PathLike,
                  out_dir: str | os.PathLike, *, allow_pickle: bool, dim: int = I3D_DIM,
                  overwrite: bool = False) -> dict:
    """Write the JOINT array's rows as plain ``<video>.npy`` (T, 2*dim) float32 files in ``out_dir``.

    The JOINT file is a pickled object array; unpickling a foreign file can run any code, so this
    refuses unless ``allow_pickle`` (``--allow-pickle``) says the user trusts it. Rows are in
    ``videonames_file`` order (THUMOS14's ``videoname.npy``, read without pickle). The folder
    appears whole or not at all; ``wtal_features.json`` records the source and its sha256.
    """
    src = Path(pickled_file)
    if allow_pickle is not True:
        raise UserError(f"{src}: refusing to read it: the JOINT feature file is a pickled object array and "
                        f"unpickling can run arbitrary code; if you trust its source, convert it once with "
                        f"`ppl-avvp wtal convert-joint ... --allow-pickle` (allow_pickle=True), which writes "
                        f"plain per-video .npy files that are read without pickle")
    names_path = Path(videonames_file)
    names = [_safe_name(names_path, i, n) for i, n in enumerate(string_list(names_path, load_plain_array(names_path)))]
    if len(set(names)) != len(names):
        raise DataError(f"{names_path}: video names repeat")
    out = Path(out_dir)
    check_output_dir(out, overwrite=overwrite, marker=CONVERTED_META_FILE, kind="a convert-joint output",
                     label="--out")
    joint = _unpickle_joint(src)
    if len(joint) != len(names):
        raise DataError(f"{src}: {len(joint)} rows, but {names_path} names {len(names)} videos")

    with published_atomically(out, "tmp") as tmp:
        lengths = []
        for row, (name, item) in enumerate(zip(names, joint)):
            arr = _joint_row(src, row, name, item, 2 * dim)
            with open(tmp / f"{name}.npy", "wb") as fh:
                np.lib.format.write_array(fh, arr, allow_pickle=False)
            lengths.append(len(arr))
        meta = {"source": str(src), "source_sha256": sha256_file(src), "videonames": str(names_path),
                "videos": len(names), "layout": "joined", "dim": dim,
                "snippets": {"min": min(lengths, default=0), "max": max(lengths, default=0)}}
        (tmp / CONVERTED_META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        check_output_dir(out, overwrite=overwrite, marker=CONVERTED_META_FILE, kind="a convert-joint output",
                         label="--out")
    return {**meta, "out_dir": str(out)}
