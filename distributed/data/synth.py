"""`ppl-avvp synth`: write a synthetic dataset in exactly the LLP layout (annotations + features).

    ppl-avvp synth --out DIR [--annotations LLP_DIR] [--train N --val N --test N] [--seed S]
                   [--frames-per-segment 8] [--pool] [--signal X --noise X --context X] [--overwrite]

Output (``DIR``)::

    annotations/AVVP_train.csv, AVVP_val_pd.csv, AVVP_test_pd.csv, AVVP_dataset_full.csv
                AVVP_eval_audio.csv, AVVP_eval_visual.csv          (val + test dense truth)
                AVVP_train_dense_audio.csv, AVVP_train_dense_visual.csv  (ours: train dense truth,
                                                                    so pseudo-label quality is measurable)
    features/vggish/<id>.npy (T,128)  res152/<id>.npy (F*T,2048)  r2plus1d_18/<id>.npy (T,512)  float32
    synth.json   generator version, seed, parameters, counts, feature spec, source

Files are tab-separated with one header line, LF line ends, as LLP's. ``--pool`` stores res152 with
the F frames of each segment already averaged ((T, 2048), ``feature_spec.frames_per_segment = 1``
in synth.json): 1/8 of the disk. Every feature reader takes the frames per segment from synth.json
(``features.folder_spec``), so read back (``load_features``, training, ``ppl-avvp shard``) it equals
reading the 8-frame files with ``pool_frames=True``.

Annotations
-----------
Without ``--annotations`` everything comes from LLP statistics coded as numbers
(:data:`~distributed.data.llp_stats.CODED_LLP_STATS`; facts about LLP, not its files), through the
label and layout models of :mod:`distributed.data.synth_labels`. Every weak class gets a layout in
at least one modality, in every split.

With ``--annotations LLP_DIR`` (a real LLP annotation folder) the ids, filenames and weak labels are
the real ones, taken as **the first N rows of each split in file order** (deterministic, the same for
every seed; ``all`` takes the whole split), weak and dense rows copied verbatim (LLP's quirks
included). Val/test dense truth is LLP's real dense truth. Train has no dense truth in LLP (unless the
folder has our ``AVVP_train_dense_*.csv``, which are then used), so each weak class's layout is
sampled from the per-class statistics of that folder's val+test dense truth: the weak label hides
which modality and which seconds hold each event, as in LLP.

Features: :mod:`distributed.data.synth_features` (the feature model and its difficulty knobs).

Determinism: each video draws from its own RNG seeded by (seed, split, index, purpose), and the
world from (seed); the same arguments give byte-identical files on the same platform regardless
of thread count. Output is written into a temporary folder next to ``DIR`` and renamed at the end
(a rerun removes the temporaries of killed runs, ``common.fsutil``); an existing non-empty ``DIR``
is an error unless ``--overwrite`` (which only replaces a previous synth output, i.e. a folder with
``synth.json``).
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from distributed.common.errors import DataError, UserError
from distributed.common.fsutil import check_output_dir, published_atomically, sha256_file
from distributed.data.features import SYNTH_META_FILE, FeatureSpec, feature_path
from distributed.data.llp import (DENSE_AUDIO_FILE, DENSE_COLUMNS, DENSE_VISUAL_FILE, FEATURE_DIRS, LLP_CLASSES,
                                  SPLIT_FILES, TRAIN_DENSE_AUDIO_FILE, TRAIN_DENSE_VISUAL_FILE, WEAK_COLUMNS,
                                  load_split, read_table, video_id)
from distributed.data.llp_stats import CODED_LLP_STATS, statistics_from_splits
from distributed.data.synth_features import SynthParams, World, video_features, write_videos
from distributed.data.synth_labels import LabelModel, LayoutModel, make_id
from model.metrics import extract_events

__all__ = ["generate", "GENERATOR_VERSION", "LLP_SPLIT_SIZES", "DATASET_FULL_FILE"]

GENERATOR_VERSION = 1
DATASET_FULL_FILE = "AVVP_dataset_full.csv"
LLP_SPLIT_SIZES = {"train": 10000, "val": 649, "test": 1200}
SPLITS = tuple(SPLIT_FILES)                    # train, val, test
_SPLIT_CODE = {"train": 1, "val": 2, "test": 3}
_WEAK_HEADER = "\t".join(WEAK_COLUMNS)
_DENSE_HEADER = "\t".join(DENSE_COLUMNS)

# RNG purposes (the last entropy word but one of each video's seed sequence; 5 is the world's)
_RNG_ID, _RNG_WEAK, _RNG_LAYOUT, _RNG_FEATURES = 1, 2, 3, 4


def _video_rng(seed: int, split: str, index: int, purpose: int, attempt: int = 0) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, _SPLIT_CODE[split], index, purpose, attempt]))


# --------------------------------------------------------------------------------------------
# Dataset assembly
# --------------------------------------------------------------------------------------------

@dataclass
class _Video:
    split: str
    index: int
    filename: str
    weak_text: str          # the event_labels field as written
    audio: np.ndarray       # (T, C) bool dense truth
    visual: np.ndarray

    @property
    def vid(self) -> str:
        return video_id(self.filename)


def _dense_rows(video: _Video, mask: np.ndarray, order: Sequence[int]) -> list[str]:
    """``mask`` (T, C) as AVVP_eval_* rows: one per event run, classes in ``order``."""
    starts, ends, is_run = extract_events(mask.T)                                   # (C, K) each
    rows = []
    for c in order:
        runs = zip(starts[c][is_run[c]], ends[c][is_run[c]])
        rows += [f"{video.filename}\t{a}\t{b}\t{LLP_CLASSES[c]}" for a, b in runs]
    return rows


def _class_order(video: _Video) -> list[int]:
    """Weak classes in label order, then any other class with dense truth (index order)."""
    order = []
    for name in video.weak_text.split(","):
        c = LLP_CLASSES.index(name.strip()) if name.strip() in LLP_CLASSES else None
        if c is not None and c not in order:
            order.append(c)
    extra = np.flatnonzero(video.audio.any(0) | video.visual.any(0))
    return order + [int(c) for c in extra if int(c) not in order]


def _coded_videos(counts: dict[str, int], seed: int, t: int) -> list[_Video]:
    """Videos drawn from the coded LLP statistics (no annotation folder)."""
    stats = CODED_LLP_STATS
    c = len(LLP_CLASSES)
    labels = LabelModel(stats, c)
    layouts = LayoutModel(stats, t, c)
    used: set[str] = set()
    videos = []
    for split in SPLITS:
        for i in range(counts[split]):
            attempt = 0
            while True:
                rng = _video_rng(seed, split, i, _RNG_ID, attempt)
                vid = make_id(rng)
                if vid not in used:
                    break
                attempt += 1
            used.add(vid)
            filename = labels.filename(rng, vid, t)
            classes = labels.weak(_video_rng(seed, split, i, _RNG_WEAK), split)
            audio, visual = layouts.sample(_video_rng(seed, split, i, _RNG_LAYOUT), classes, c)
            videos.append(_Video(split, i, filename, ",".join(LLP_CLASSES[k] for k in classes),
                                 audio, visual))
    return videos


def _annotated_videos(ann: Path, counts: dict[str, int | None], seed: int, t: int
                      ) -> tuple[list[_Video], dict[str, int], dict]:
    """Videos from a real LLP annotation folder: first N rows per split, real labels/dense truth."""
    loaded = {s: load_split(ann, s, t) for s in SPLITS}
    resolved = {}
    for split in SPLITS:
        n, have = counts[split], len(loaded[split])
        if n is None:
            n = have
        if n > have:
            raise UserError(f"--{split} {n}: {ann / SPLIT_FILES[split]} has only {have} videos "
                            f"(use 'all' for the whole split)")
        resolved[split] = n
    stats = statistics_from_splits(loaded["train"], loaded["val"], loaded["test"], t)
    layouts = LayoutModel(stats, t, len(LLP_CLASSES))
    source_files = {}
    videos: list[_Video] = []
    seen: dict[str, str] = {}
    for split in SPLITS:
        data = loaded[split]
        path = ann / SPLIT_FILES[split]
        source_files[SPLIT_FILES[split]] = sha256_file(path)
        rows = read_table(path, WEAK_COLUMNS)          # the event_labels text verbatim, rows as load_split's
        for i in range(resolved[split]):
            name, labels = rows[i][1]
            vid = video_id(name)
            if vid in seen:
                raise DataError(f"{path}: video id {vid!r} of {name!r} is also {seen[vid]!r}: "
                                f"their feature files would collide")
            seen[vid] = name
            if data.dense_audio is not None:
                audio, visual = data.dense_audio[i] > 0, data.dense_visual[i] > 0
            else:
                classes = [int(c) for c in np.flatnonzero(data.weak_labels[i])]
                audio, visual = layouts.sample(_video_rng(seed, split, i, _RNG_LAYOUT), classes,
                                               len(LLP_CLASSES))
            videos.append(_Video(split, i, name, labels, audio, visual))
    dense_source = {}
    for split in SPLITS:
        files = ((TRAIN_DENSE_AUDIO_FILE, TRAIN_DENSE_VISUAL_FILE) if split == "train"
                 else (DENSE_AUDIO_FILE, DENSE_VISUAL_FILE))
        if loaded[split].dense_audio is not None:
            dense_source[split] = "source"
            for name in files:
                source_files[name] = sha256_file(ann / name)
        else:
            dense_source[split] = "sampled from the source's val+test statistics"
    info = {"source_files": dict(sorted(source_files.items())), "dense_truth": dense_source,
            "selection": "first N rows of each split in file order"}
    return videos, resolved, info


def _write_text(path: Path, header: str, rows: Sequence[str]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        fh.write(header + "\n")
        if rows:
            fh.write("\n".join(rows) + "\n")


def _write_annotations(root: Path, videos: list[_Video], copy_dense: dict[str, Path]) -> None:
    """Weak and dense CSVs. Dense rows of a split in ``copy_dense`` are copied from that source
    folder verbatim (file order, the chosen videos only); other splits' rows come from the masks."""
    by_split = {s: [v for v in videos if v.split == s] for s in SPLITS}
    for split in SPLITS:
        _write_text(root / SPLIT_FILES[split], _WEAK_HEADER,
                    [f"{v.filename}\t{v.weak_text}" for v in by_split[split]])
    _write_text(root / DATASET_FULL_FILE, _WEAK_HEADER,
                [f"{v.filename}\t{v.weak_text}" for s in SPLITS for v in by_split[s]])
    groups = ((("train",), (TRAIN_DENSE_AUDIO_FILE, TRAIN_DENSE_VISUAL_FILE)),
              (("val", "test"), (DENSE_AUDIO_FILE, DENSE_VISUAL_FILE)))
    for splits, names in groups:
        for m, name in enumerate(names):
            copied = [s for s in splits if s in copy_dense]
            rows = []
            if copied:  # one pass over the source file keeps its row order across splits
                wanted = {v.filename for s in copied for v in by_split[s]}
                src = copy_dense[copied[0]] / name
                rows += ["\t".join(r) for _, r in read_table(src, DENSE_COLUMNS) if r[0] in wanted]
            for split in splits:
                if split not in copy_dense:
                    for v in by_split[split]:
                        rows += _dense_rows(v, v.audio if m == 0 else v.visual, _class_order(v))
            _write_text(root / name, _DENSE_HEADER, rows)


def _check_target(out: Path, overwrite: bool) -> None:
    check_output_dir(out, overwrite=overwrite, marker=SYNTH_META_FILE, kind="a synth output", label="--out")


def _resolve_count(name: str, value, annotations: bool) -> int | None:
    if value is None or (isinstance(value, str) and value.strip().lower() == "all"):
        return None if annotations else LLP_SPLIT_SIZES[name]
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        try:
            value = int(str(value).strip())
        except ValueError:
            raise UserError(f"--{name}: expected a number of videos >= 0 or 'all', got {value!r}") from None
    if value < 0:
        raise UserError(f"--{name}: expected a number of videos >= 0 or 'all', got {value}")
    return int(value)


def generate(out_dir: str | os.PathLike, annotations: str | os.PathLike | None = None,
             n_train: int | str | None = 1000, n_val: int | str | None = 200,
             n_test: int | str | None = 200, seed: int = 0, spec: FeatureSpec = FeatureSpec(),
             signal: float = SynthParams.signal, noise: float = SynthParams.noise,
             context: float = SynthParams.context, pool: bool = False, overwrite: bool = False,
             num_threads: int | None = None) -> dict:
    """Write a synthetic LLP-layout dataset to ``out_dir``; return its summary (synth.json + timing).

    ``n_*``: videos per split, or ``'all'``/None (the whole split with ``annotations``, LLP's
    split size without). ``spec``: feature shapes; ``spec.frames_per_segment`` res152 frames are
    generated per segment, stored as they are or averaged when ``pool``. See the module docstring
    for the label, layout and feature models.
    """
    t0 = time.perf_counter()
    spec.validate()
    try:
        params = SynthParams(float(signal), float(noise), float(context)).validate()
    except (TypeError, ValueError) as err:
        if isinstance(err, UserError):
            raise
        raise UserError(f"signal/noise/context: must be numbers ({err})") from None
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UserError(f"--seed: must be an integer >= 0, got {seed!r}")
    seed = int(seed)
    threads = num_threads if num_threads is not None else max(1, min(4, os.cpu_count() or 1))
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise UserError(f"--threads: must be an integer >= 1, got {num_threads!r}")
    ann = Path(annotations) if annotations is not None else None
    if ann is not None and not ann.is_dir():
        raise UserError(f"--annotations {ann}: not a directory")
    counts = {s: _resolve_count(s, n, ann is not None)
              for s, n in (("train", n_train), ("val", n_val), ("test", n_test))}
    out = Path(out_dir)
    _check_target(out, overwrite)

    t = spec.num_segments
    if ann is None:
        videos = _coded_videos(counts, seed, t)
        info = {"source": "coded LLP statistics (distributed.data.llp_stats.CODED_LLP_STATS)",
                "dense_truth": {s: "sampled" for s in SPLITS}}
    else:
        videos, counts, ann_info = _annotated_videos(ann, counts, seed, t)
        info = {"source": "LLP annotations", **ann_info}

    frames = spec.frames_per_segment
    file_spec = replace(spec, frames_per_segment=1) if pool else spec
    summary = {
        "generator": "ppl-avvp synth",
        "version": GENERATOR_VERSION,
        "seed": seed,
        "counts": {s: counts[s] for s in SPLITS},
        "params": {"signal": params.signal, "noise": params.noise, "context": params.context},
        "feature_spec": file_spec.to_dict(),
        "generated_frames_per_segment": frames,
        "pooled_res152": bool(pool),
        "feature_dirs": dict(FEATURE_DIRS),
        "classes": list(LLP_CLASSES),
        **info,
    }

    with published_atomically(out, "synth-tmp") as tmp:
        (tmp / "annotations").mkdir(parents=True)
        for sub in FEATURE_DIRS.values():
            (tmp / "features" / sub).mkdir(parents=True)
        world = World(seed, spec, len(LLP_CLASSES))

        def write_one(v: _Video) -> int:
            rng = _video_rng(seed, v.split, v.index, _RNG_FEATURES)
            arrays = video_features(world, rng, v.audio, v.visual, spec, params, frames, pool)
            size = 0
            for key, arr in zip(("audio", "visual_2d", "visual_3d"), arrays):
                path = feature_path(tmp / "features", v.vid, key)
                with open(path, "wb") as fh:
                    np.lib.format.write_array(fh, arr, allow_pickle=False)
                size += arr.nbytes
            return size

        nbytes = write_videos(write_one, videos, threads)
        copy_dense = {s: ann for s, how in info["dense_truth"].items() if how == "source"}
        _write_annotations(tmp / "annotations", videos, copy_dense)
        (tmp / SYNTH_META_FILE).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n",
                                           encoding="utf-8")
        _check_target(out, overwrite)      # again: another writer may have filled it meanwhile
    return {**summary, "out_dir": str(out), "feature_bytes": int(nbytes),
            "seconds": round(time.perf_counter() - t0, 3)}
