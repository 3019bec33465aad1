"""The synthetic LLP generator: exact layout, determinism, real annotations, CLI errors."""
from __future__ import annotations

import csv
import functools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from distributed import cli
from distributed.common.errors import UserError
from distributed.common.fsutil import temp_sibling_name
from distributed.data import synth, synth_features
from distributed.data.features import FEATURE_KEYS, FeatureSpec, feature_path, load_features, read_video_features
from distributed.data.llp import (DENSE_AUDIO_FILE, DENSE_VISUAL_FILE, FEATURE_DIRS, LLP_CLASSES, SPLIT_FILES,
                                  TRAIN_DENSE_AUDIO_FILE, TRAIN_DENSE_VISUAL_FILE, load_split, video_id)
from distributed.data.llp_stats import CODED_LLP_STATS, llp_statistics
from distributed.data.shards import make_eval_loader
from distributed.shards import main as shard_main

LLP_DIR = os.environ.get("PPL_AVVP_LLP_DIR")
needs_llp = pytest.mark.skipif(not LLP_DIR, reason="PPL_AVVP_LLP_DIR (real LLP annotations) not set")

WEAK_FILES = (*SPLIT_FILES.values(), synth.DATASET_FULL_FILE)
DENSE_FILES = (DENSE_AUDIO_FILE, DENSE_VISUAL_FILE, TRAIN_DENSE_AUDIO_FILE, TRAIN_DENSE_VISUAL_FILE)
COUNTS = {"train": 6, "val": 3, "test": 4}
ID_RE = re.compile(r"^[A-Za-z0-9_-]{11}$")


def _gen(out: Path, **kw) -> dict:
    args = dict(n_train=COUNTS["train"], n_val=COUNTS["val"], n_test=COUNTS["test"], seed=7)
    args.update(kw)
    return synth.generate(out, **args)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth") / "ds"
    return out, _gen(out)


def _tsv(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _dense_consistent(split) -> None:
    weak = split.weak_labels > 0
    dense_any = (split.dense_audio > 0).any(1) | (split.dense_visual > 0).any(1)   # (N, C)
    assert not (dense_any & ~weak).any(), "a dense class is not in the weak label"
    assert not (weak & ~dense_any).any(), "a weak class has no event in either modality"


# ------------------------------------------------------------------------------------------ layout

def test_layout_files_headers_columns(dataset):
    out, summary = dataset
    ann = out / "annotations"
    assert sorted(p.name for p in ann.iterdir()) == sorted(WEAK_FILES + DENSE_FILES)
    assert sorted(p.name for p in out.iterdir()) == ["annotations", "features", "synth.json"]
    for name in WEAK_FILES:
        rows = _tsv(ann / name)
        assert rows[0] == ["filename", "event_labels"]
        assert all(len(r) == 2 for r in rows[1:])
        for filename, labels in rows[1:]:
            assert ID_RE.match(video_id(filename)) and filename[11] == "_"
            start, end = filename[12:].split("_")
            assert float(end) - float(start) == 10
            assert labels and all(c in LLP_CLASSES for c in labels.split(","))
    for name in DENSE_FILES:
        rows = _tsv(ann / name)
        assert rows[0] == ["filename", "onset", "offset", "event_labels"]
        for r in rows[1:]:
            assert len(r) == 4 and 0 <= int(r[1]) < int(r[2]) <= 10 and r[3] in LLP_CLASSES
    raw = (ann / SPLIT_FILES["train"]).read_bytes()
    assert raw.endswith(b"\n") and b"\r" not in raw
    for split, n in COUNTS.items():
        assert len(_tsv(ann / SPLIT_FILES[split])) == n + 1
    full = [r[0] for r in _tsv(ann / synth.DATASET_FULL_FILE)[1:]]
    assert full == [r[0] for s in ("train", "val", "test") for r in _tsv(ann / SPLIT_FILES[s])[1:]]
    assert len(set(video_id(f) for f in full)) == len(full)
    assert summary["counts"] == COUNTS


def test_features_shapes_dtypes(dataset):
    out, _ = dataset
    ids = [video_id(r[0]) for r in _tsv(out / "annotations" / synth.DATASET_FULL_FILE)[1:]]
    shapes = FeatureSpec().file_shapes()
    for key, sub in FEATURE_DIRS.items():
        assert sorted(p.name for p in (out / "features" / sub).iterdir()) == sorted(f"{i}.npy" for i in ids)
    for vid in ids:
        for key in FEATURE_KEYS:
            arr = np.load(feature_path(out / "features", vid, key), allow_pickle=False)
            assert arr.shape == shapes[key] and arr.dtype == np.float32 and np.isfinite(arr).all()
            if key != "audio":
                assert arr.min() >= 0          # post-ReLU-like visual features
    feats = load_features(out / "features", ids)
    assert feats["visual_2d"].shape == (len(ids), 10, 2048)


def test_synth_json(dataset):
    out, summary = dataset
    meta = json.loads((out / "synth.json").read_text())
    assert meta["version"] == synth.GENERATOR_VERSION and meta["seed"] == 7
    assert meta["counts"] == COUNTS
    assert FeatureSpec.from_dict(meta["feature_spec"]) == FeatureSpec()
    assert set(meta["params"]) == {"signal", "noise", "context"}
    assert meta["classes"] == list(LLP_CLASSES)
    assert {k: v for k, v in summary.items() if k in meta} == meta


def test_readable_by_load_split_and_dense_consistent(dataset):
    out, _ = dataset
    for split in ("train", "val", "test"):
        data = load_split(out / "annotations", split)
        assert len(data) == COUNTS[split]
        assert data.dense_audio is not None and data.dense_visual is not None
        _dense_consistent(data)


def test_generated_ids_use_youtube_alphabet():
    videos = synth._coded_videos({"train": 400, "val": 0, "test": 0}, seed=3, t=10)
    ids = [v.vid for v in videos]
    assert len(set(ids)) == len(ids) and all(ID_RE.match(i) for i in ids)
    assert any("-" in i for i in ids) and any("_" in i for i in ids)


def test_layout_statistics_follow_llp():
    """Speech is mostly heard only; Car mostly seen; every weak class has an event."""
    videos = synth._coded_videos({"train": 600, "val": 0, "test": 0}, seed=1, t=10)
    speech = [v for v in videos if v.audio[:, 0].any() or v.visual[:, 0].any()]
    heard = np.mean([v.audio[:, 0].any() for v in speech])
    seen = np.mean([v.visual[:, 0].any() for v in speech])
    assert heard > 0.9 and seen < 0.4
    sizes = [len(v.weak_text.split(",")) for v in videos]
    assert 1.4 < np.mean(sizes) < 1.8 and max(sizes) <= 3      # LLP train: 1.61 labels, at most 3


# ---------------------------------------------------------------------------------- determinism

def test_deterministic_byte_identical(dataset, tmp_path):
    out, _ = dataset
    again = tmp_path / "again"
    _gen(again, num_threads=1)            # also: thread count does not matter
    assert _files(again) == _files(out)


def test_other_seed_differs(dataset, tmp_path):
    out, _ = dataset
    other = tmp_path / "other"
    _gen(other, seed=8)
    assert _files(other)["annotations/AVVP_train.csv"] != _files(out)["annotations/AVVP_train.csv"]


def test_per_video_seeds_do_not_depend_on_counts(dataset, tmp_path):
    """Video i of a split is the same whatever the split sizes: seeds come from (seed, split, i)."""
    out, _ = dataset
    small = tmp_path / "small"
    _gen(small, n_train=2, n_val=1, n_test=0)
    big, little = _files(out), _files(small)
    assert _tsv(small / "annotations" / "AVVP_train.csv") == _tsv(out / "annotations" / "AVVP_train.csv")[:3]
    for name, data in little.items():
        if name.startswith("features/"):
            assert big[name] == data


def test_pool_equals_pooled_frames(dataset, tmp_path):
    out, _ = dataset
    pooled = tmp_path / "pooled"
    summary = _gen(pooled, pool=True)
    spec = FeatureSpec.from_dict(summary["feature_spec"])
    assert spec.frames_per_segment == 1 and summary["pooled_res152"]
    ids = [video_id(r[0]) for r in _tsv(out / "annotations" / "AVVP_train.csv")[1:]]
    a = load_features(pooled / "features", ids, spec)
    b = load_features(out / "features", ids, FeatureSpec())
    for key in FEATURE_KEYS:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-6, atol=1e-6)
    assert (_files(pooled)["annotations/AVVP_train_dense_audio.csv"]
            == _files(out)["annotations/AVVP_train_dense_audio.csv"])


def test_pooled_output_is_read_like_the_pooled_frames_by_every_reader(dataset, tmp_path):
    """`synth --pool` (res152 stored (T, 2048)) read with the default (8-frame) spec, as training and
    `ppl-avvp shard` do: load_features, read_video_features and the shard writer give the numbers of
    the unpooled files pooled on read."""
    out, _ = dataset
    pooled = tmp_path / "pooled"
    _gen(pooled, pool=True)
    ids = [video_id(r[0]) for r in _tsv(out / "annotations" / "AVVP_val_pd.csv")[1:]]
    assert np.load(feature_path(pooled / "features", ids[0], "visual_2d")).shape == (10, 2048)
    a = load_features(pooled / "features", ids)
    b = load_features(out / "features", ids)
    for key in FEATURE_KEYS:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-6, atol=1e-6)
    one = read_video_features(pooled / "features", ids[1])
    np.testing.assert_allclose(one["visual_2d"], b["visual_2d"][1], rtol=1e-6, atol=1e-6)
    shards = {}
    for name, root in (("pooled", pooled), ("frames", out)):
        shards[name] = tmp_path / f"shards-{name}"
        assert shard_main(["--features", str(root / "features"), "--annotations", str(root / "annotations"),
                           "--split", "val", "--out", str(shards[name]), "--dtype", "float32"]) == 0
    got = {name: {vid: {k: batch[k][i].numpy() for k in FEATURE_KEYS}
                  for batch in make_eval_loader(path, 2, 0, 1) for i, vid in enumerate(batch["video_id"])}
           for name, path in shards.items()}
    assert sorted(got["pooled"]) == sorted(got["frames"]) == sorted(ids)
    for vid in ids:
        for key in FEATURE_KEYS:
            np.testing.assert_allclose(got["pooled"][vid][key], got["frames"][vid][key], rtol=1e-6, atol=1e-6)


def test_frames_per_segment_option(tmp_path):
    out = tmp_path / "f2"
    _gen(out, n_train=1, n_val=0, n_test=0, spec=FeatureSpec(frames_per_segment=2))
    vid = video_id(_tsv(out / "annotations" / "AVVP_train.csv")[1][0])
    assert np.load(feature_path(out / "features", vid, "visual_2d")).shape == (20, 2048)
    pooled = read_video_features(out / "features", vid, FeatureSpec(frames_per_segment=2))
    assert pooled["visual_2d"].shape == (10, 2048)


# -------------------------------------------------------------------------------- feature model

@functools.lru_cache(maxsize=1)
def _world() -> synth_features.World:
    return synth_features.World(0, FeatureSpec(), 25)


def _features_for(audio, visual, seed=0):
    world = _world()
    rng = np.random.default_rng(seed)
    return synth_features.video_features(world, rng, audio, visual, FeatureSpec(), synth_features.SynthParams(),
                                         8, True)


def test_audio_carries_only_audio_events_and_visual_only_visual():
    t, c = 10, 25
    none = np.zeros((t, c), bool)
    dog = none.copy()
    dog[2:6, 3] = True
    a0, v0, r0 = _features_for(none, none)
    a1, v1, r1 = _features_for(dog, none)      # heard, not seen
    a2, v2, r2 = _features_for(none, dog)      # seen, not heard
    np.testing.assert_array_equal(v1, v0)
    np.testing.assert_array_equal(r1, r0)
    np.testing.assert_array_equal(a2, a0)
    assert not np.array_equal(a1, a0) and not np.array_equal(v2, v0) and not np.array_equal(r2, r0)


def test_event_seconds_stand_out():
    """The class signal is localised: active seconds move further along the class direction."""
    t, c = 10, 25
    dog = np.zeros((t, c), bool)
    dog[2:6, 3] = True
    world = _world()
    direction = world.class_a[3] @ world.map_a                # class 3's audio direction in features
    gaps = []
    for seed in range(20):
        a, _, _ = _features_for(dog, np.zeros_like(dog), seed)
        proj = a @ direction
        gaps.append(proj[2:6].mean() - np.r_[proj[:2], proj[6:]].mean())
    assert np.mean(gaps) > 0 and np.mean(np.asarray(gaps) > 0) > 0.9


# --------------------------------------------------------------------------- coded statistics

@needs_llp
def test_coded_statistics_are_llp_facts():
    assert llp_statistics(LLP_DIR) == CODED_LLP_STATS


def test_coded_statistics_are_consistent():
    s = CODED_LLP_STATS
    assert sum(n for _, n in s.train_label_sets) == 10000
    assert sum(s.eval_label_set_sizes) == 649 + 1200
    assert len(s.modality_counts) == len(LLP_CLASSES)
    present = np.asarray(s.present)
    mod = np.asarray(s.modality_counts)
    assert (present[0] == mod[:, 1] + mod[:, 3]).all() and (present[1] == mod[:, 2] + mod[:, 3]).all()
    assert (np.asarray(s.full) <= present).all()


# ------------------------------------------------------------------------ real LLP annotations

@pytest.fixture(scope="module")
def real(tmp_path_factory):
    if not LLP_DIR:
        pytest.skip("PPL_AVVP_LLP_DIR (real LLP annotations) not set")
    out = tmp_path_factory.mktemp("real") / "ds"
    summary = synth.generate(out, annotations=LLP_DIR, n_train=8, n_val=5, n_test=6, seed=1)
    return out, summary


@needs_llp
def test_real_ids_and_weak_labels(real):
    out, summary = real
    counts = {"train": 8, "val": 5, "test": 6}
    assert summary["counts"] == counts and summary["source"] == "LLP annotations"
    for split, n in counts.items():
        mine = _tsv(out / "annotations" / SPLIT_FILES[split])
        theirs = _tsv(Path(LLP_DIR) / SPLIT_FILES[split])
        assert mine == theirs[: n + 1]                    # first N rows, verbatim
        ours, src = load_split(out / "annotations", split), load_split(LLP_DIR, split)
        np.testing.assert_array_equal(ours.weak_labels, src.weak_labels[:n])
        for vid in ours.video_ids:
            assert feature_path(out / "features", vid, "audio").is_file()


@needs_llp
def test_real_val_test_dense_truth(real):
    out, _ = real
    for split, n in (("val", 5), ("test", 6)):
        ours, src = load_split(out / "annotations", split), load_split(LLP_DIR, split)
        np.testing.assert_array_equal(ours.dense_audio, src.dense_audio[:n])
        np.testing.assert_array_equal(ours.dense_visual, src.dense_visual[:n])
    names = {r[0] for s in ("val", "test") for r in _tsv(out / "annotations" / SPLIT_FILES[s])[1:]}
    for name in (DENSE_AUDIO_FILE, DENSE_VISUAL_FILE):
        theirs = [r for r in _tsv(Path(LLP_DIR) / name) if r[0] in names]
        assert _tsv(out / "annotations" / name)[1:] == theirs      # the real rows, in file order


@needs_llp
def test_real_train_dense_sampled_and_consistent(real):
    out, summary = real
    train = load_split(out / "annotations", "train")
    assert train.dense_audio is not None
    _dense_consistent(train)
    assert summary["dense_truth"]["train"].startswith("sampled")


@needs_llp
def test_real_too_many_videos_is_an_error(tmp_path):
    with pytest.raises(UserError, match="has only 649 videos"):
        synth.generate(tmp_path / "x", annotations=LLP_DIR, n_train=1, n_val=650, n_test=1)
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------------------- CLI and writing

def _cli(capsys, *args) -> tuple[int, str, str]:
    code = cli.main(["synth", *args])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


@pytest.mark.parametrize("args,needle", [
    (["--train", "-1"], "--train"),
    (["--val", "abc"], "--val"),
    (["--seed", "-5"], "--seed"),
    (["--signal", "-1"], "signal"),
    (["--context", "2"], "context"),
    (["--frames-per-segment", "0"], "--frames-per-segment"),
    (["--bogus"], "--bogus"),
])
def test_cli_bad_input_exit_2_one_line(tmp_path, capsys, args, needle):
    code, out, err = _cli(capsys, "--out", str(tmp_path / "o"), *args)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("ppl-avvp synth: error:") and needle in err
    assert not (tmp_path / "o").exists()


def test_cli_missing_out(capsys):
    code, _, err = _cli(capsys, "--train", "1")
    assert code == 2 and err.count("\n") == 1 and "--out" in err


def test_cli_existing_non_empty_out(tmp_path, capsys):
    target = tmp_path / "o"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    code, _, err = _cli(capsys, "--out", str(target), "--train", "1", "--val", "0", "--test", "0")
    assert code == 2 and err.count("\n") == 1 and "--overwrite" in err
    code, _, err = _cli(capsys, "--out", str(target), "--train", "1", "--overwrite")
    assert code == 2 and err.count("\n") == 1 and "not a synth output" in err
    assert [p.name for p in target.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]          # no temp folders left


def test_cli_writes_and_overwrites(tmp_path, capsys):
    target = tmp_path / "o"
    target.mkdir()                                                     # empty folder is fine
    base = ["--out", str(target), "--train", "2", "--val", "1", "--test", "1", "--pool"]
    code, out, err = _cli(capsys, *base)
    assert code == 0 and err == "" and "wrote 2 train / 1 val / 1 test" in out
    first = _files(target)
    code, _, err = _cli(capsys, *base, "--seed", "3")
    assert code == 2 and "--overwrite" in err
    code, _, _ = _cli(capsys, *base, "--seed", "3", "--overwrite")
    assert code == 0 and _files(target) != first
    assert json.loads((target / "synth.json").read_text())["seed"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]


def test_out_that_is_a_file_or_under_one_is_exit_2_one_line(tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("keep")
    for target in (a_file, a_file / "x", a_file / "x" / "y"):
        code, out, err = _cli(capsys, "--out", str(target), "--train", "1", "--val", "0", "--test", "0")
        assert code == 2 and out == "" and err.count("\n") == 1, err
        assert err.startswith("ppl-avvp synth: error: --out") and str(target) in err
    assert a_file.read_text() == "keep" and sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_rerun_removes_stale_temporaries_of_dead_runs_only(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    out = tmp_path / "ds"
    stale = [temp_sibling_name(out, "synth-tmp", child.pid),       # a `kill -9`ed run of this host
             tmp_path / f".ds.synth-tmp-{child.pid}"]               # ... as earlier versions named it
    live = temp_sibling_name(out, "synth-tmp", os.getpid())
    for folder in (*stale, live):
        (folder / "features").mkdir(parents=True)
    _gen(out, n_train=1, n_val=0, n_test=0)
    assert not any(p.exists() for p in stale) and (live / "features").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["ds", live.name])


def test_failure_leaves_nothing_behind(tmp_path, monkeypatch):
    def boom(*_a, **_k):
        raise RuntimeError("disk full")
    monkeypatch.setattr(synth, "_write_annotations", boom)
    with pytest.raises(RuntimeError):
        _gen(tmp_path / "o", n_train=1, n_val=0, n_test=0)
    assert list(tmp_path.iterdir()) == []


def test_generate_rejects_bad_arguments(tmp_path):
    with pytest.raises(UserError):
        synth.generate(tmp_path / "o", n_train=-2)
    with pytest.raises(UserError):
        synth.generate(tmp_path / "o", seed=-1)
    with pytest.raises(UserError):
        synth.generate(tmp_path / "o", noise=0.0)
    with pytest.raises(UserError, match="annotations"):
        synth.generate(tmp_path / "o", annotations=tmp_path / "missing")
    assert not (tmp_path / "o").exists()
