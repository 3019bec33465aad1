"""W-TAL data: the synthetic THUMOS14-layout generator, the two-stream feature reader and its
one-line errors, and the opt-in conversion of the pickled JOINT file (tiny sizes throughout)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from distributed.common.errors import DataError, UserError
from distributed.data.thumos14 import load_thumos14
from distributed.data.wtal_features import (CONVERTED_META_FILE, convert_joint, read_split_features,
                                            read_wtal_features, snippet_count)
from distributed.data.wtal_synth import META_FILE, World, coverage, generate, real_videos
from distributed.wtal import main as wtal_main

ENV = "PPL_AVVP_THUMOS14_DIR"
DIM = 64


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wtal") / "data"
    generate(out, n_train=6, n_test=5, seed=3, dim=DIM, num_threads=1)
    return out


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_generator_is_deterministic_per_seed_and_video(synth, tmp_path):
    again = tmp_path / "again"
    generate(again, n_train=6, n_test=5, seed=3, dim=DIM, num_threads=2)
    assert _files(again) == _files(synth)
    fewer = tmp_path / "fewer"
    generate(fewer, n_train=2, n_test=1, seed=3, dim=DIM, num_threads=1)
    name = "synth_validation_0000001"
    for s in ("rgb", "flow"):
        assert (fewer / "features" / s / f"{name}.npy").read_bytes() == \
            (synth / "features" / s / f"{name}.npy").read_bytes()
    other = tmp_path / "other"
    generate(other, n_train=1, n_test=1, seed=4, dim=DIM, num_threads=1)
    assert (other / "features/rgb/synth_validation_0000000.npy").read_bytes() != \
        (synth / "features/rgb/synth_validation_0000000.npy").read_bytes()


def test_annotations_parse_with_the_thumos14_reader_with_requested_counts(synth):
    train = load_thumos14(synth / "annotations", "train")
    test = load_thumos14(synth / "annotations", "test", "wtalc")
    basnet = load_thumos14(synth / "annotations", "test", "basnet")
    assert (len(train), len(test), len(basnet)) == (6, 5, 5)
    assert len(train.classes) == 20
    for split in (train, test):
        assert np.bincount(split.instances.video, minlength=len(split)).min() >= 1
        assert (split.labels.sum(1) >= 1).all()
        ins = split.instances
        assert (ins.end > ins.start).all() and (ins.end <= split.duration[ins.video] + 1e-9).all()
    meta = json.loads((synth / META_FILE).read_text())
    assert meta["counts"] == {"train": 6, "test": 5} and meta["dim"] == DIM


def test_features_read_back_with_the_right_shapes(synth):
    for split in ("train", "test"):
        data = load_thumos14(synth / "annotations", split)
        feats = read_split_features(synth / "features", data.videos, data.duration, dim=DIM)
        for (rgb, flow), d in zip(feats, data.duration):
            assert rgb.shape == flow.shape == (snippet_count(d), DIM)
            assert rgb.dtype == flow.dtype == np.float32 and (rgb >= 0).all()


def test_instances_carry_their_class_in_both_streams(synth):
    data = load_thumos14(synth / "annotations", "train")
    world = World(3, DIM, 20)
    videos, _ = real_videos(synth / "annotations", "train", None)   # the layouts as written, read back
    gaps = []
    for name, video in zip(data.videos, videos):
        feats = dict(zip(("rgb", "flow"), read_wtal_features(synth / "features", name, dim=DIM)))
        cover, _ = coverage(video, len(feats["rgb"]), 20)
        background = cover.sum(1) == 0
        for c, a, b in video.instances:
            inside = cover[:, c] >= 0.999
            if not inside.any() or not background.any():
                continue
            for stream, x in feats.items():
                proj = x @ world.feature_direction(stream, c)
                gap = proj[inside].mean() - proj[background].mean()
                assert gap > 0, (name, c, a, b, stream)
                gaps.append(gap / proj[background].std())
    assert len(gaps) >= 40 and np.median(gaps) > 2, (len(gaps), np.median(gaps))   # in background sds


def test_flow_is_strongest_at_motion_boundaries():
    from distributed.data.wtal_synth import SynthVideo
    video = SynthVideo("v", "validation", 64.0, 30.0, [(0, 6.4, 32.0)], [])   # snippets 10..49
    cover, boundary = coverage(video, snippet_count(64.0), 20)
    assert cover[10:50, 0].min() == 1 and cover[:10, 0].max() == 0 and cover[50:, 0].max() == 0
    assert boundary[10, 0] > boundary[30, 0] and boundary[49, 0] > boundary[30, 0]
    assert boundary[:10, 0].max() == 0


@pytest.mark.skipif(not os.environ.get(ENV), reason=f"{ENV} not set")
def test_real_layouts_are_copied(tmp_path):
    ann = Path(os.environ[ENV])
    out = tmp_path / "real"
    generate(out, annotations=ann, n_train=3, n_test=4, seed=0, dim=8, num_threads=1)
    for split, n in (("train", 3), ("test", 4)):
        real, mine = load_thumos14(ann, split), load_thumos14(out / "annotations", split)
        assert mine.videos == real.videos[:n]
        np.testing.assert_array_equal(mine.duration, real.duration[:n])
        rows = real.instances.video < n
        np.testing.assert_array_equal(mine.instances.start, real.instances.start[rows])
        np.testing.assert_array_equal(mine.instances.label, real.instances.label[rows])
        for v, d in zip(mine.videos, mine.duration):
            assert read_wtal_features(out / "features", v, dim=8, duration=d)[0].shape[0] == snippet_count(d)
    assert set(load_thumos14(out / "annotations", "test", "basnet").videos) <= \
        set(load_thumos14(ann, "test", "basnet").videos)


def test_cli_synth_and_refusal_to_overwrite(tmp_path, capsys):
    out = tmp_path / "cli"
    assert wtal_main(["synth", "--out", str(out), "--train", "1", "--test", "1", "--dim", "4"]) == 0
    assert (out / META_FILE).is_file()
    with pytest.raises(UserError, match="--overwrite"):
        wtal_main(["synth", "--out", str(out), "--train", "1", "--test", "1", "--dim", "4"])


# ---------------------------------------------------------------------------------------------
# the feature reader's bad inputs: each a one-line DataError naming the file
# ---------------------------------------------------------------------------------------------

def _one_line_naming(err: pytest.ExceptionInfo, path: Path) -> None:
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg, msg


@pytest.mark.parametrize("case", ["int dtype", "1-D", "wrong width", "zero rows", "object", "non-finite",
                                  "too big for float32", "truncated", "not npy"])
def test_bad_feature_file_is_one_line_naming_it(tmp_path, case):
    path = tmp_path / "rgb" / "v.npy"
    path.parent.mkdir()
    (tmp_path / "flow").mkdir()
    np.save(tmp_path / "flow" / "v.npy", np.zeros((5, 4), np.float32))
    good = np.zeros((5, 4), np.float32)
    if case == "int dtype":
        np.save(path, good.astype(np.int32))
    elif case == "1-D":
        np.save(path, np.zeros(20, np.float32))
    elif case == "wrong width":
        np.save(path, np.zeros((5, 3), np.float32))
    elif case == "zero rows":
        np.save(path, np.zeros((0, 4), np.float32))
    elif case == "object":
        arr = np.empty(2, dtype=object)
        arr[:] = [good, good]
        np.save(path, arr, allow_pickle=True)   # a pickled file we write, to check it is refused unread
    elif case == "non-finite":
        bad = good.copy()
        bad[2, 1] = np.nan
        np.save(path, bad)
    elif case == "too big for float32":
        np.save(path, np.full((5, 4), 1e300))
    elif case == "truncated":
        np.save(path, good)
        path.write_bytes(path.read_bytes()[:-8])
    else:
        path.write_bytes(b"hello")
    with pytest.raises(DataError) as err:
        read_wtal_features(tmp_path, "v", dim=4)
    _one_line_naming(err, path)


def test_stream_lengths_duration_and_missing_files(tmp_path):
    (tmp_path / "rgb").mkdir()
    (tmp_path / "flow").mkdir()
    np.save(tmp_path / "rgb" / "v.npy", np.zeros((10, 4), np.float32))
    np.save(tmp_path / "flow" / "v.npy", np.zeros((9, 4), np.float32))
    with pytest.raises(DataError) as err:
        read_wtal_features(tmp_path, "v", dim=4)
    _one_line_naming(err, tmp_path / "flow" / "v.npy")
    np.save(tmp_path / "flow" / "v.npy", np.zeros((10, 4), np.float32))
    assert read_wtal_features(tmp_path, "v", dim=4, duration=6.4)[0].shape == (10, 4)   # 6.4 s = 10 snippets
    with pytest.raises(DataError) as err:                    # 30 fps features: 10 * 30 / 25 = 12 snippets
        read_wtal_features(tmp_path, "v", dim=4, duration=6.4 * 1.3)
    _one_line_naming(err, tmp_path / "rgb" / "v.npy")
    (tmp_path / "flow" / "v.npy").unlink()
    with pytest.raises(DataError) as err:
        read_wtal_features(tmp_path, "v", dim=4)
    _one_line_naming(err, tmp_path / "flow" / "v.npy")
    with pytest.raises(DataError, match="no features for 'w'"):
        read_wtal_features(tmp_path, "w", dim=4)


def test_joined_layout_splits_rgb_first(tmp_path):
    both = np.arange(3 * 8, dtype=np.float64).reshape(3, 8)
    np.save(tmp_path / "v.npy", both)
    rgb, flow = read_wtal_features(tmp_path, "v", dim=4)
    np.testing.assert_array_equal(rgb, both[:, :4])
    np.testing.assert_array_equal(flow, both[:, 4:])
    assert rgb.dtype == np.float32 and rgb.flags.c_contiguous
    with pytest.raises(DataError) as err:
        read_wtal_features(tmp_path, "v", dim=3)
    _one_line_naming(err, tmp_path / "v.npy")


# ---------------------------------------------------------------------------------------------
# convert-joint: refused without the opt-in; with it, one plain file per video
# ---------------------------------------------------------------------------------------------

def _joint(tmp_path: Path, arrays: list[np.ndarray], names: list[str]) -> tuple[Path, Path]:
    obj = np.empty(len(arrays), dtype=object)
    obj[:] = arrays
    joint, videonames = tmp_path / "joint.npy", tmp_path / "videoname.npy"
    np.save(joint, obj, allow_pickle=True)      # the pickled file WE write for the test
    np.save(videonames, np.array([n.encode() for n in names], dtype="S"))
    return joint, videonames


def test_convert_joint_refuses_without_the_opt_in(tmp_path, capsys):
    rng = np.random.default_rng(0)
    joint, names = _joint(tmp_path, [rng.random((3, 8))], ["a"])
    with pytest.raises(UserError, match="--allow-pickle") as err:
        convert_joint(joint, names, tmp_path / "out", allow_pickle=False, dim=4)
    assert "\n" not in str(err.value) and "arbitrary code" in str(err.value)
    assert not (tmp_path / "out").exists()
    from distributed.cli import main as cli_main
    assert cli_main(["wtal", "convert-joint", "--joint", str(joint), "--videonames", str(names),
                     "--out", str(tmp_path / "out")]) == 2
    assert "--allow-pickle" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_convert_joint_writes_one_plain_file_per_video(tmp_path):
    rng = np.random.default_rng(0)
    arrays = [rng.random((t, 8)) for t in (3, 1, 7)]
    joint, names = _joint(tmp_path, arrays, ["video_a", "video_b", "video_c"])
    out = tmp_path / "out"
    assert wtal_main(["convert-joint", "--joint", str(joint), "--videonames", str(names), "--out", str(out),
                      "--allow-pickle", "--dim", "4"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["video_a.npy", "video_b.npy", "video_c.npy", CONVERTED_META_FILE]
    for name, arr in zip(("video_a", "video_b", "video_c"), arrays):
        plain = np.load(out / f"{name}.npy", allow_pickle=False)
        np.testing.assert_array_equal(plain, arr.astype(np.float32))
        rgb, flow = read_wtal_features(out, name, dim=4)
        np.testing.assert_array_equal(np.concatenate([rgb, flow], 1), arr.astype(np.float32))
    assert json.loads((out / CONVERTED_META_FILE).read_text())["videos"] == 3


def test_convert_joint_bad_row_writes_nothing(tmp_path):
    bad = np.ones((2, 8))
    bad[1, 3] = np.inf
    joint, names = _joint(tmp_path, [np.ones((2, 8)), bad], ["a", "b"])
    with pytest.raises(DataError, match=r"row 1 \(b\)") as err:
        convert_joint(joint, names, tmp_path / "out", allow_pickle=True, dim=4)
    _one_line_naming(err, joint)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))
    joint, names = _joint(tmp_path, [np.ones((2, 8))], ["a", "b"])
    with pytest.raises(DataError, match="1 rows") as err:
        convert_joint(joint, names, tmp_path / "out", allow_pickle=True, dim=4)
    _one_line_naming(err, joint)
