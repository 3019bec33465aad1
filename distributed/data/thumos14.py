"""THUMOS14 annotations for weakly-supervised temporal action localisation, as the field uses them.

This module is the one THUMOS14 reader. The annotation folder (README "THUMOS14") holds
``gt.json`` (ActivityNet-style instances in seconds), plain arrays in the row order of the common
joint I3D feature file (``videoname.npy``, ``subset.npy``, ``duration.npy``, ``original_fps.npy``,
and ``classlist.npy``: the 20 class names in index order), ``Ambiguous_test.txt`` (intervals the
CO2-Net / DELU evaluation ignores) and ``split_test.txt`` (the BaS-Net test list).

Train = the 200 annotated *validation* videos. Test = the annotated *test* videos: 212 in the
W-TALC -> CO2-Net -> DELU line (``test_set="wtalc"``, which drops ``video_test_0001292``), 210 in
the BaS-Net / ACM-Net line (``test_set="basnet"``: ``split_test.txt``, which also drops 0270 and
1496). Durations come from ``duration.npy``: gt.json's ``duration`` is wrong for 24/25 fps videos.
Nothing here unpickles: ``.npy`` files are read with ``allow_pickle=False``.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from distributed.common.errors import ConfigError, DataError
from model.localization import Segments, from_activitynet, seconds_to_snippets, to_activitynet

GT_FILE = "gt.json"
AMBIGUOUS_FILE = "Ambiguous_test.txt"
BASNET_TEST_FILE = "split_test.txt"
ARRAY_FILES = ("videoname.npy", "subset.npy", "duration.npy", "original_fps.npy", "classlist.npy")
SPLIT_SUBSETS = {"train": "validation", "test": "test"}
TEST_SETS = ("wtalc", "basnet")
WTALC_DROPPED = ("video_test_0001292",)        # W-TALC's annotations leave it out; CO2-Net/DELU follow
UNITS = ("snippets", "seconds")


@dataclass(frozen=True)
class Protocol:
    """How one line of work scores THUMOS14: its test videos, its unit, its ambiguous-interval filter."""

    test_set: str
    units: str
    drop_ambiguous: bool


PROTOCOLS = {
    "A": Protocol(test_set="wtalc", units="snippets", drop_ambiguous=True),     # W-TALC, CO2-Net, DELU
    "B": Protocol(test_set="basnet", units="seconds", drop_ambiguous=False),    # BaS-Net, ACM-Net
}


@dataclass(frozen=True)
class Thumos14Video:
    """One video. instance_labels: (K,) class indices; instance_segments: (K, 2) seconds;
    ambiguous: (A, 2) seconds."""

    name: str
    duration: float
    fps: float
    labels: np.ndarray
    instance_labels: np.ndarray
    instance_segments: np.ndarray
    ambiguous: np.ndarray


@dataclass(frozen=True, eq=False)
class Thumos14Split:
    """One split, videos in ``videoname.npy`` order.

    duration: (N,) seconds (duration.npy);  fps: (N,) original frame rate;
    labels: (N, C) float32 multi-hot video-level labels (the classes of the video's instances);
    instances: ground truth in seconds, ``video`` = row in ``videos``, in gt.json order;
    ambiguous: per video, (A_v, 2) intervals in seconds (empty for train).
    """

    split: str
    test_set: str | None
    classes: tuple[str, ...]
    videos: tuple[str, ...]
    duration: np.ndarray
    fps: np.ndarray
    labels: np.ndarray
    instances: Segments
    ambiguous: tuple[np.ndarray, ...]

    def __len__(self) -> int:
        return len(self.videos)

    def index(self, name: str) -> int:
        try:
            return self.videos.index(name)
        except ValueError:
            raise DataError(f"video {name!r} is not in the THUMOS14 {self.split} split") from None

    def ground_truth(self, units: str) -> Segments:
        """The instances in snippet indices (protocol A: ``round(t * 25 / 16)``) or in seconds (B)."""
        if units not in UNITS:
            raise ConfigError(f"units: must be one of {', '.join(UNITS)}, got {units!r}")
        if units == "seconds":
            return self.instances
        return Segments(self.instances.video, self.instances.label,
                        seconds_to_snippets(self.instances.start), seconds_to_snippets(self.instances.end))

    def ambiguous_snippets(self, i: int) -> np.ndarray:
        """Video ``i``'s ambiguous intervals as snippet ranges (A, 2), for ``video_proposals``."""
        return seconds_to_snippets(self.ambiguous[i])

    def video(self, i: int) -> Thumos14Video:
        rows = np.nonzero(self.instances.video == i)[0]
        return Thumos14Video(self.videos[i], float(self.duration[i]), float(self.fps[i]), self.labels[i],
                             self.instances.label[rows],
                             np.stack([self.instances.start[rows], self.instances.end[rows]], axis=1),
                             self.ambiguous[i])


# --------------------------------------------------------------------------------------------
# file readers (each error is one line naming the file and the field)
# --------------------------------------------------------------------------------------------

def load_plain_array(path: Path) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        arr = np.load(path, allow_pickle=False)
    except ValueError as err:
        if "pickle" in str(err):
            raise DataError(f"{path}: holds Python objects (reading it needs pickle, which is never "
                            f"done here); save it as a plain string or float array") from None
        raise DataError(f"{path}: unreadable .npy file ({' '.join(str(err).split())})") from None
    except (OSError, EOFError) as err:
        raise DataError(f"{path}: unreadable .npy file ({' '.join(str(err).split()) or type(err).__name__})") from None
    if not isinstance(arr, np.ndarray):
        raise DataError(f"{path}: expected a .npy array, found an .npz archive")
    return arr


def string_list(path: Path, arr: np.ndarray) -> list[str]:
    if arr.ndim != 1 or arr.dtype.kind not in "SU":
        raise DataError(f"{path}: expected a 1-D array of strings, got dtype {arr.dtype} shape {arr.shape}")
    try:
        return [s.decode("utf-8") if isinstance(s, bytes) else str(s) for s in arr.tolist()]
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: a name is not UTF-8 ({err})") from None


def _positive_floats(path: Path, arr: np.ndarray, n: int) -> np.ndarray:
    if arr.dtype.kind not in "iuf" or arr.shape not in ((n,), (n, 1)):
        raise DataError(f"{path}: expected {n} numbers (one per video of videoname.npy), "
                        f"got dtype {arr.dtype} shape {arr.shape}")
    values = arr.reshape(-1).astype(np.float64)
    bad = ~(np.isfinite(values) & (values > 0))
    if bad.any():
        raise DataError(f"{path}: row {int(np.argmax(bad))} is {values[bad][0]}, expected a positive number")
    return values


def _read_json(path: Path):
    """A JSON file, or a one-line DataError naming it."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: not readable JSON ({err})") from None
    return data


def _read_gt(path: Path, class_index: dict[str, int]) -> dict[str, dict]:
    """gt.json's ``database``: {video: {"subset", "annotations": [(label, start, end)]}}."""
    data = _read_json(path)
    database = data.get("database") if isinstance(data, dict) else None
    if not isinstance(database, dict):
        raise DataError(f"{path}: expected an object with a 'database' object of videos")
    out = {}
    for name, entry in database.items():
        where = f"{path}: database[{name!r}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("annotations"), list):
            raise DataError(f"{where}: expected an object with an 'annotations' list")
        annotations = []
        for j, ann in enumerate(entry["annotations"]):
            label = ann.get("label") if isinstance(ann, dict) else None
            if not isinstance(label, str) or label not in class_index:
                raise DataError(f"{where}.annotations[{j}].label: unknown class {label!r}")
            seg = ann.get("segment")
            ok = (isinstance(seg, list) and len(seg) == 2
                  and all(isinstance(x, (int, float)) and not isinstance(x, bool) and np.isfinite(x) for x in seg))
            if not ok:
                raise DataError(f"{where}.annotations[{j}].segment: expected [start, end] in seconds, got {seg!r}")
            start, end = float(seg[0]), float(seg[1])
            if start < 0 or end < start:
                raise DataError(f"{where}.annotations[{j}].segment: [{start}, {end}] is not an interval "
                                f"of non-negative times")
            annotations.append((class_index[label], start, end))
        out[name] = {"subset": entry.get("subset"), "annotations": annotations}
    return out


def _read_ambiguous(path: Path) -> dict[str, list[tuple[float, float]]]:
    """``video start end`` per line (seconds, any whitespace), as Ambiguous_test.txt."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    out: dict[str, list[tuple[float, float]]] = {}
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 3:
                raise DataError(f"{path}:{lineno}: expected 'video start end', got {line.strip()!r}")
            try:
                start, end = float(fields[1]), float(fields[2])
            except ValueError:
                raise DataError(f"{path}:{lineno}: start/end {fields[1]!r} {fields[2]!r} are not numbers") from None
            if not (np.isfinite(start) and np.isfinite(end)) or start < 0 or end < start:
                raise DataError(f"{path}:{lineno}: [{start}, {end}] is not an interval of non-negative times")
            out.setdefault(fields[0], []).append((start, end))
    return out


def _read_id_list(path: Path) -> list[tuple[int, str]]:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    with open(path, encoding="utf-8") as fh:
        return [(lineno, line.strip()) for lineno, line in enumerate(fh, start=1) if line.strip()]


# --------------------------------------------------------------------------------------------
# the split
# --------------------------------------------------------------------------------------------

def load_thumos14(annotation_dir: str | os.PathLike, split: str, test_set: str = "wtalc") -> Thumos14Split:
    """Read one THUMOS14 split ("train" or "test"; ``test_set`` "wtalc" = 212 or "basnet" = 210)."""
    if split not in SPLIT_SUBSETS:
        raise ConfigError(f"split: must be one of {', '.join(SPLIT_SUBSETS)}, got {split!r}")
    if test_set not in TEST_SETS:
        raise ConfigError(f"test_set: must be one of {', '.join(TEST_SETS)}, got {test_set!r}")
    root = Path(annotation_dir)
    if not root.is_dir():
        raise DataError(f"{root}: THUMOS14 annotation folder not found")

    arrays = {name: load_plain_array(root / name) for name in ARRAY_FILES}
    names = string_list(root / "videoname.npy", arrays["videoname.npy"])
    subsets = string_list(root / "subset.npy", arrays["subset.npy"])
    classes = tuple(string_list(root / "classlist.npy", arrays["classlist.npy"]))
    if len(subsets) != len(names):
        raise DataError(f"{root / 'subset.npy'}: {len(subsets)} rows, videoname.npy has {len(names)}")
    if len(set(names)) != len(names):
        raise DataError(f"{root / 'videoname.npy'}: video names repeat")
    if not classes or len(set(classes)) != len(classes):
        raise DataError(f"{root / 'classlist.npy'}: expected distinct class names, got {list(classes)}")
    duration = _positive_floats(root / "duration.npy", arrays["duration.npy"], len(names))
    fps = _positive_floats(root / "original_fps.npy", arrays["original_fps.npy"], len(names))
    gt = _read_gt(root / GT_FILE, {c: i for i, c in enumerate(classes)})
    for name, subset in zip(names, subsets):
        if name in gt and gt[name]["subset"] != subset:
            raise DataError(f"{root / GT_FILE}: database[{name!r}].subset is {gt[name]['subset']!r}, "
                            f"subset.npy says {subset!r}")

    subset = SPLIT_SUBSETS[split]
    annotated = [i for i, (name, s) in enumerate(zip(names, subsets))
                 if s == subset and name in gt and gt[name]["annotations"]]
    if split == "test" and test_set == "basnet":
        row_of = {names[i]: i for i in annotated}
        listed = _read_id_list(root / BASNET_TEST_FILE)
        for lineno, name in listed:
            if name not in row_of:
                raise DataError(f"{root / BASNET_TEST_FILE}:{lineno}: {name!r} is not an annotated test video")
        wanted = {name for _, name in listed}
        rows = [i for i in annotated if names[i] in wanted]
    elif split == "test":
        rows = [i for i in annotated if names[i] not in WTALC_DROPPED]
    else:
        rows = annotated

    ambiguous = _read_ambiguous(root / AMBIGUOUS_FILE) if split == "test" else {}
    video, label, start, end = [], [], [], []
    labels = np.zeros((len(rows), len(classes)), dtype=np.float32)
    for v, i in enumerate(rows):
        for c, s, e in gt[names[i]]["annotations"]:
            video.append(v)
            label.append(c)
            start.append(s)
            end.append(e)
            labels[v, c] = 1.0
    instances = Segments(np.array(video, dtype=np.int64), np.array(label, dtype=np.int64),
                         np.array(start, dtype=np.float64), np.array(end, dtype=np.float64))
    return Thumos14Split(
        split=split, test_set=test_set if split == "test" else None, classes=classes,
        videos=tuple(names[i] for i in rows), duration=duration[rows], fps=fps[rows], labels=labels,
        instances=instances,
        ambiguous=tuple(np.array(ambiguous.get(names[i], []), dtype=np.float64).reshape(-1, 2) for i in rows))


# --------------------------------------------------------------------------------------------
# proposals files (ActivityNet JSON)
# --------------------------------------------------------------------------------------------

def write_proposals(path: str | os.PathLike, proposals: Segments, split: Thumos14Split, units: str) -> None:
    """Save a split's proposals as an ActivityNet result file (``units`` recorded in it)."""
    if units not in UNITS:
        raise ConfigError(f"units: must be one of {', '.join(UNITS)}, got {units!r}")
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(to_activitynet(proposals, split.videos, split.classes, units), fh)


def read_proposals(path: str | os.PathLike, split: Thumos14Split, units: str) -> Segments:
    """Proposals of ``split`` from an ActivityNet result file; bad content is a one-line DataError."""
    if units not in UNITS:
        raise ConfigError(f"units: must be one of {', '.join(UNITS)}, got {units!r}")
    data = _read_json(Path(path))
    try:
        return from_activitynet(data, split.videos, split.classes, units)
    except ValueError as err:
        raise DataError(f"{path}: {err}") from None

