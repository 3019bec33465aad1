"""The LLP dataset layout: annotation CSVs and per-video feature folders.

This module is the one LLP reader. Annotation files are tab-separated with one header
line (see README "Data layout"); features are one ``<11-char id>.npy`` per video in
``vggish/`` (T x 128), ``res152/`` (8T x 2048) and ``r2plus1d_18/`` (T x 512).
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from distributed.common.errors import ConfigError, DataError

LLP_CLASSES: tuple[str, ...] = (
    "Speech", "Car", "Cheering", "Dog", "Cat", "Frying_(food)", "Basketball_bounce",
    "Fire_alarm", "Chainsaw", "Cello", "Banjo", "Singing", "Chicken_rooster",
    "Violin_fiddle", "Vacuum_cleaner", "Baby_laughter", "Accordion", "Lawn_mower",
    "Motorcycle", "Helicopter", "Acoustic_guitar", "Telephone_bell_ringing",
    "Baby_cry_infant_cry", "Blender", "Clapping",
)
LLP_NUM_SEGMENTS = 10
LLP_FRAMES_PER_SEGMENT = 8
SPLIT_FILES = {"train": "AVVP_train.csv", "val": "AVVP_val_pd.csv", "test": "AVVP_test_pd.csv"}
DENSE_AUDIO_FILE = "AVVP_eval_audio.csv"
DENSE_VISUAL_FILE = "AVVP_eval_visual.csv"
FEATURE_DIRS = {"audio": "vggish", "visual_2d": "res152", "visual_3d": "r2plus1d_18"}


def video_id(filename: str) -> str:
    """Feature files are named by the first 11 characters of the CSV ``filename``."""
    return filename[:11]


@dataclass
class LLPSplit:
    """One split's annotations, rows in CSV order.

    weak_labels:  (N, C) float32 in {0, 1}
    dense_audio / dense_visual: (N, T, C) uint8, or None where the split has no dense truth (train).
    """

    split: str
    filenames: list[str]
    weak_labels: np.ndarray
    dense_audio: np.ndarray | None
    dense_visual: np.ndarray | None
    classes: tuple[str, ...] = LLP_CLASSES

    @property
    def video_ids(self) -> list[str]:
        return [video_id(f) for f in self.filenames]

    def __len__(self) -> int:
        return len(self.filenames)


# --------------------------------------------------------------------------------------------
# Annotation reader
# --------------------------------------------------------------------------------------------

TRAIN_DENSE_AUDIO_FILE = "AVVP_train_dense_audio.csv"    # written by our synthetic generator only
TRAIN_DENSE_VISUAL_FILE = "AVVP_train_dense_visual.csv"
WEAK_COLUMNS = ("filename", "event_labels")                        # AVVP_{train,val_pd,test_pd}.csv
DENSE_COLUMNS = ("filename", "onset", "offset", "event_labels")     # AVVP_eval_{audio,visual}.csv


def read_table(path: Path, columns: tuple[str, ...]) -> list[tuple[int, list[str]]]:
    """Rows of a tab-separated LLP file as (line number, the named columns in ``columns`` order).

    The header names the columns (their order in the file may differ); every row must have
    as many fields as the header. Blank lines are skipped. Fields are verbatim (not stripped),
    so a copy of selected rows (``ppl-avvp synth --annotations``) keeps LLP's quirks.
    """
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:     # tolerate a byte-order mark
            lines = list(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"{path}: cannot read: {err}") from None
    if not lines or not lines[0]:
        raise DataError(f"{path}: empty file (expected a header line {' '.join(columns)!r})")
    header = [h.strip() for h in lines[0]]
    missing = [c for c in columns if c not in header]
    if missing:
        raise DataError(f"{path}:1: header lacks column(s) {', '.join(missing)} "
                        f"(got {header}; the file must be tab-separated)")
    where = [header.index(c) for c in columns]
    rows = []
    for lineno, fields in enumerate(lines[1:], start=2):
        if not fields:
            continue
        if len(fields) != len(header):
            raise DataError(f"{path}:{lineno}: expected {len(header)} tab-separated columns, "
                            f"got {len(fields)}")
        rows.append((lineno, [fields[i] for i in where]))
    return rows


def _parse_int(path: Path, lineno: int, column: str, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise DataError(f"{path}:{lineno}: {column} {text!r} is not a whole number of seconds") from None
    if value < 0:
        raise DataError(f"{path}:{lineno}: {column} {value} is negative")
    return value


def _read_dense(path: Path, row_of: dict[str, int], class_index: dict[str, int],
                num_segments: int) -> np.ndarray:
    """Dense truth (N, T, C) uint8 from an ``AVVP_eval_*`` style file.

    As the reference HAN eval: a row belongs to a split video iff its ``filename`` equals the
    split's filename exactly; other rows (the other split, or names of no video) are ignored.
    Each row sets ``truth[onset:offset, class] = 1`` (half-open, whole seconds; rows OR-ed;
    onset >= offset sets nothing, offsets beyond T clip).
    """
    rows = read_table(path, DENSE_COLUMNS)
    video, cls, onset, offset = [], [], [], []
    for lineno, (name, on_text, off_text, label) in rows:
        c = class_index.get(label.strip())
        if c is None:
            raise DataError(f"{path}:{lineno}: unknown class {label!r}")
        on = _parse_int(path, lineno, "onset", on_text)
        off = _parse_int(path, lineno, "offset", off_text)
        i = row_of.get(name)
        if i is None:               # not a video of this split (exact filename match only)
            continue
        video.append(i)
        cls.append(c)
        onset.append(on)
        offset.append(off)
    dense = np.zeros((len(row_of), num_segments, len(class_index)), dtype=np.uint8)
    if video:
        t = np.arange(num_segments)
        inside = (t >= np.asarray(onset)[:, None]) & (t < np.asarray(offset)[:, None])   # (R, T)
        r, seg = np.nonzero(inside)
        dense[np.asarray(video)[r], seg, np.asarray(cls)[r]] = 1
    return dense


def load_split(annotation_dir: str | os.PathLike, split: str, num_segments: int = LLP_NUM_SEGMENTS,
               classes: tuple[str, ...] = LLP_CLASSES, dense_audio_file: str = DENSE_AUDIO_FILE,
               dense_visual_file: str = DENSE_VISUAL_FILE) -> LLPSplit:
    """Read one split's weak labels and (val/test, or synthetic train) dense truth.

    Dense rows are matched to videos the way the reference evaluation does (exact ``filename``),
    so scores computed from this truth equal the published protocol's.
    """
    if split not in SPLIT_FILES:
        raise ConfigError(f"split: must be one of {', '.join(SPLIT_FILES)}, got {split!r}")
    if isinstance(num_segments, bool) or not isinstance(num_segments, (int, np.integer)) or num_segments < 1:
        raise ConfigError(f"num_segments: must be a positive integer, got {num_segments!r}")
    classes = tuple(classes)
    if len(set(classes)) != len(classes) or not classes:
        raise ConfigError("classes: must be a non-empty list of distinct names")
    root = Path(annotation_dir)
    if not root.is_dir():
        raise DataError(f"{root}: annotation folder not found")
    class_index = {name: i for i, name in enumerate(classes)}

    path = root / SPLIT_FILES[split]
    filenames: list[str] = []
    row_of: dict[str, int] = {}
    line_of: dict[str, int] = {}
    weak = []
    for lineno, (name, labels) in read_table(path, WEAK_COLUMNS):
        if not name:
            raise DataError(f"{path}:{lineno}: empty filename")
        if name in line_of:
            raise DataError(f"{path}:{lineno}: filename {name!r} repeats line {line_of[name]}")
        if not labels.strip():
            raise DataError(f"{path}:{lineno}: video {name!r} has no event_labels")
        idx = []
        for label in (s.strip() for s in labels.split(",")):
            if label not in class_index:
                raise DataError(f"{path}:{lineno}: unknown class {label!r}")
            idx.append(class_index[label])
        row_of[name] = len(filenames)
        line_of[name] = lineno
        filenames.append(name)
        weak.append(idx)
    weak_labels = np.zeros((len(filenames), len(classes)), dtype=np.float32)
    for i, idx in enumerate(weak):
        weak_labels[i, idx] = 1.0

    if split == "train":
        audio_path, visual_path = root / TRAIN_DENSE_AUDIO_FILE, root / TRAIN_DENSE_VISUAL_FILE
        if not (audio_path.is_file() and visual_path.is_file()):
            return LLPSplit(split, filenames, weak_labels, None, None, classes)
    else:
        audio_path, visual_path = root / dense_audio_file, root / dense_visual_file
    dense_audio = _read_dense(audio_path, row_of, class_index, num_segments)
    dense_visual = _read_dense(visual_path, row_of, class_index, num_segments)
    return LLPSplit(split, filenames, weak_labels, dense_audio, dense_visual, classes)


def split_index(split: LLPSplit) -> dict[str, int]:
    """Row of each video under both its CSV ``filename`` and its 11-char feature id.

    Predictions and feature folders name videos either way; an id shared by two rows would make
    that lookup ambiguous, so it is an error rather than a silent pick.
    """
    index: dict[str, int] = {}
    for row, name in enumerate(split.filenames):
        for key in dict.fromkeys((name, video_id(name))):
            other = index.get(key)
            if other is not None and other != row:
                raise DataError(f"{split.split} split: {key!r} names two videos "
                                f"({split.filenames[other]!r} and {name!r})")
            index[key] = row
    return index
