"""distributed.data.thumos14: the real THUMOS14 annotation files (PPL_AVVP_THUMOS14_DIR) parse
with the field's counts; a tiny folder in the same layout pins the rules and the one-line errors."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from distributed.common.errors import ConfigError, DataError
from distributed.data.thumos14 import (AMBIGUOUS_FILE, PROTOCOLS, Thumos14Split, load_thumos14,
                                       read_proposals, write_proposals)
from model.localization import Segments, evaluate_localization

ENV = "PPL_AVVP_THUMOS14_DIR"
CLASSES = ["BaseballPitch", "BasketballDunk", "Billiards"]


# ---------------------------------------------------------------------------------------------
# a tiny folder in the THUMOS14 layout (runs everywhere)
# ---------------------------------------------------------------------------------------------

def write_folder(root: Path) -> Path:
    """Two validation and four test videos; one of them is video_test_0001292, one is left out of
    split_test.txt (as 0270 / 1496 are), and one test video is at 25 fps with gt.json's wrong duration."""
    videos = [  # name, subset, duration.npy, fps, gt.json duration, annotations
        ("video_validation_0000051", "validation", 169.794, 30.0, 169.67, [("Billiards", 1.0, 2.5)]),
        ("video_validation_0000052", "validation", 60.0, 30.0, 60.0,
         [("BaseballPitch", 0.2, 1.1), ("BasketballDunk", 3.0, 4.0), ("BaseballPitch", 10.0, 12.0)]),
        ("video_test_0000004", "test", 33.8, 30.0, 33.7, [("Billiards", 0.32, 0.96), ("Billiards", 52.8, 53.0)]),
        ("video_test_0000270", "test", 176.2, 25.0, 146.8, [("BasketballDunk", 5.0, 9.0)]),
        ("video_test_0001292", "test", 100.0, 30.0, 100.0, [("BaseballPitch", 1.0, 3.0)]),
        ("video_test_0000006", "test", 20.0, 30.0, 20.0, [("BasketballDunk", 2.0, 2.1)]),
    ]
    root.mkdir(parents=True, exist_ok=True)
    np.save(root / "videoname.npy", np.array([v[0] for v in videos], dtype="S24"))
    np.save(root / "subset.npy", np.array([v[1] for v in videos], dtype="S10"))
    np.save(root / "duration.npy", np.array([[v[2]] for v in videos]))
    np.save(root / "original_fps.npy", np.array([v[3] for v in videos]))
    np.save(root / "classlist.npy", np.array(CLASSES, dtype="S17"))
    database = {v[0]: {"duration": v[4], "subset": v[1],
                       "annotations": [{"segment": [s, e], "label": c} for c, s, e in v[5]]} for v in videos}
    (root / "gt.json").write_text(json.dumps({"version": "TH14", "database": database}))
    (root / AMBIGUOUS_FILE).write_text("video_test_0000004  5.0 6.4\nvideo_test_0001292  1.0 2.0\n"
                                       "video_test_0000004  0.0 0.5\n")
    (root / "split_test.txt").write_text("video_test_0000006\nvideo_test_0000004\n")
    return root


@pytest.fixture()
def tiny(tmp_path) -> Path:
    return write_folder(tmp_path / "thumos14")


def test_train_is_the_annotated_validation_videos(tiny):
    train = load_thumos14(tiny, "train")
    assert train.videos == ("video_validation_0000051", "video_validation_0000052")
    assert train.labels.tolist() == [[0, 0, 1], [1, 1, 0]]                   # multi-hot over the classes
    assert train.instances.label.tolist() == [2, 0, 1, 0]                     # gt.json order
    assert train.instances.video.tolist() == [0, 1, 1, 1]
    assert len(train.ambiguous) == 2 and all(a.shape == (0, 2) for a in train.ambiguous)
    assert train.test_set is None and train.classes == tuple(CLASSES)


def test_the_two_test_sets(tiny):
    wtalc = load_thumos14(tiny, "test", "wtalc")
    basnet = load_thumos14(tiny, "test", "basnet")
    assert wtalc.videos == ("video_test_0000004", "video_test_0000270", "video_test_0000006")   # no 1292
    assert basnet.videos == ("video_test_0000004", "video_test_0000006")   # split_test.txt's, in videoname.npy order
    assert len(wtalc.instances) == 4 and len(basnet.instances) == 3


def test_durations_come_from_duration_npy_not_gt_json(tiny):
    test = load_thumos14(tiny, "test")
    i = test.index("video_test_0000270")
    assert test.duration[i] == 176.2 and test.fps[i] == 25.0               # gt.json says 146.8
    video = test.video(i)
    assert video.name == "video_test_0000270" and video.instance_segments.tolist() == [[5.0, 9.0]]


def test_ground_truth_in_snippets_rounds_like_the_peers(tiny):
    test = load_thumos14(tiny, "test")
    snippets = test.ground_truth("snippets")
    # 0.32 s -> 0.5 -> 0, 0.96 s -> 1.5 -> 2, 52.8 s -> 82.5 -> 82, 53.0 s -> 82.8125 -> 83
    assert snippets.start[:2].tolist() == [0, 82] and snippets.end[:2].tolist() == [2, 83]
    assert test.ground_truth("seconds") is test.instances
    with pytest.raises(ConfigError, match="units"):
        test.ground_truth("frames")


def test_ambiguous_intervals_per_test_video(tiny):
    test = load_thumos14(tiny, "test")
    assert test.ambiguous[0].tolist() == [[5.0, 6.4], [0.0, 0.5]]
    assert test.ambiguous_snippets(0).tolist() == [[8, 10], [0, 1]]          # 6.4 s -> 10, 0.5 s -> 0.78 -> 1
    assert len(test.ambiguous[1]) == 0


def test_protocols_name_a_test_set_a_unit_and_the_filter():
    a, b = PROTOCOLS["A"], PROTOCOLS["B"]
    assert (a.test_set, a.units, a.drop_ambiguous) == ("wtalc", "snippets", True)
    assert (b.test_set, b.units, b.drop_ambiguous) == ("basnet", "seconds", False)


def test_proposals_file_round_trip_and_errors(tiny, tmp_path):
    test = load_thumos14(tiny, "test")
    pred = Segments(np.array([0, 2]), np.array([2, 1]), np.array([0.0, 3.0]), np.array([2.0, 4.0]), np.array([0.9, 0.4]))
    path = tmp_path / "proposals.json"
    write_proposals(path, pred, test, "snippets")
    back = read_proposals(path, test, "snippets")
    assert back.video.tolist() == [0, 2] and back.score.tolist() == [0.9, 0.4]
    with pytest.raises(DataError, match=r"proposals.json: units: the file is in 'snippets'"):
        read_proposals(path, test, "seconds")
    data = json.loads(path.read_text())
    data["results"]["video_test_0000006"][0]["label"] = "Diving"
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"proposals.json: results\['video_test_0000006'\]\[0\].label: unknown class"):
        read_proposals(path, test, "snippets")
    path.write_text("{not json")
    with pytest.raises(DataError, match="proposals.json: not readable JSON"):
        read_proposals(path, test, "snippets")


def _error(root: Path, split="test", test_set="wtalc") -> str:
    with pytest.raises(DataError) as info:
        load_thumos14(root, split, test_set)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_a_missing_file_is_named(tiny):
    (tiny / "duration.npy").unlink()
    assert "duration.npy: file not found" in _error(tiny)
    (tiny / AMBIGUOUS_FILE).unlink()
    np.save(tiny / "duration.npy", np.ones(6))
    assert f"{AMBIGUOUS_FILE}: file not found" in _error(tiny)
    load_thumos14(tiny, "train")                                    # train does not need it


def test_a_pickled_array_is_refused_not_unpickled(tiny):
    np.save(tiny / "videoname.npy", np.array([b"video_validation_0000051"] * 6, dtype=object), allow_pickle=True)
    assert "videoname.npy: holds Python objects (reading it needs pickle" in _error(tiny)


@pytest.mark.parametrize("file, value, message", [
    ("duration.npy", np.ones(5), "duration.npy: expected 6 numbers"),
    ("original_fps.npy", np.array([30.0, 30, 0, 30, 30, 30]), "original_fps.npy: row 2 is 0.0"),
    ("videoname.npy", np.arange(6.0), "videoname.npy: expected a 1-D array of strings"),
    ("subset.npy", np.array([b"test"] * 5), "subset.npy: 5 rows, videoname.npy has 6"),
    ("classlist.npy", np.array([b"A", b"A"]), "classlist.npy: expected distinct class names"),
])
def test_bad_arrays_are_named(tiny, file, value, message):
    np.save(tiny / file, value)
    assert message in _error(tiny)


def _edit_gt(root: Path, edit) -> None:
    data = json.loads((root / "gt.json").read_text())
    edit(data["database"])
    (root / "gt.json").write_text(json.dumps(data))


@pytest.mark.parametrize("edit, message", [
    (lambda db: db["video_test_0000004"]["annotations"][0].update(label="Diving"),
     "database['video_test_0000004'].annotations[0].label: unknown class 'Diving'"),
    (lambda db: db["video_test_0000004"]["annotations"][1].update(segment=[53.0, 52.8]),
     "database['video_test_0000004'].annotations[1].segment: [53.0, 52.8] is not an interval"),
    (lambda db: db["video_test_0000004"]["annotations"][1].update(segment=[1.0]),
     "annotations[1].segment: expected [start, end] in seconds"),
    (lambda db: db["video_test_0000006"].update(subset="validation"),
     "database['video_test_0000006'].subset is 'validation', subset.npy says 'test'"),
])
def test_bad_gt_json_is_named(tiny, edit, message):
    _edit_gt(tiny, edit)
    assert message in _error(tiny)


def test_bad_ambiguous_and_split_lines_are_named(tiny):
    (tiny / AMBIGUOUS_FILE).write_text("video_test_0000004  5.0 6.4\nvideo_test_0000004 7.0\n")
    assert f"{AMBIGUOUS_FILE}:2: expected 'video start end'" in _error(tiny)
    (tiny / AMBIGUOUS_FILE).write_text("video_test_0000004  5.0 4.0\n")
    assert f"{AMBIGUOUS_FILE}:1: [5.0, 4.0] is not an interval" in _error(tiny)
    (tiny / AMBIGUOUS_FILE).write_text("")
    (tiny / "split_test.txt").write_text("video_test_0000004\nvideo_test_0009999\n")
    assert "split_test.txt:2: 'video_test_0009999' is not an annotated test video" in _error(tiny, test_set="basnet")


def test_bad_arguments_are_config_errors(tiny):
    with pytest.raises(ConfigError, match="split"):
        load_thumos14(tiny, "val")
    with pytest.raises(ConfigError, match="test_set"):
        load_thumos14(tiny, "test", "acm")
    with pytest.raises(DataError, match="annotation folder not found"):
        load_thumos14(tiny / "nope", "test")


# ---------------------------------------------------------------------------------------------
# the real annotation files
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def real_dir() -> Path:
    if not os.environ.get(ENV):
        pytest.skip(f"{ENV} is not set: point it at the real THUMOS14 annotation folder to run these tests")
    return Path(os.environ[ENV])


@pytest.fixture(scope="module")
def real(real_dir) -> dict[str, Thumos14Split]:
    return {"train": load_thumos14(real_dir, "train"), "wtalc": load_thumos14(real_dir, "test", "wtalc"),
            "basnet": load_thumos14(real_dir, "test", "basnet")}


def test_real_counts(real):
    assert (len(real["train"]), len(real["train"].instances)) == (200, 3007)
    assert (len(real["wtalc"]), len(real["wtalc"].instances)) == (212, 3358)
    assert (len(real["basnet"]), len(real["basnet"].instances)) == (210, 3311)
    assert len(real["wtalc"].ground_truth("snippets")) == 3358        # protocol A keeps every instance
    assert len(real["train"].classes) == 20 and real["train"].classes[0] == "BaseballPitch"


def test_real_splits_are_the_fields(real, real_dir):
    train_ids = (real_dir / "split_train.txt").read_text().split()
    assert sorted(real["train"].videos) == sorted(train_ids)
    assert all(v.startswith("video_validation_") for v in real["train"].videos)
    assert set(real["wtalc"].videos) - set(real["basnet"].videos) == {"video_test_0000270", "video_test_0001496"}
    assert "video_test_0001292" not in real["wtalc"].videos + real["basnet"].videos


def test_real_labels_are_the_classes_of_the_instances(real):
    for split in real.values():
        from_instances = np.zeros_like(split.labels)
        from_instances[split.instances.video, split.instances.label] = 1
        assert np.array_equal(split.labels, from_instances) and split.labels.sum(axis=1).min() >= 1


def test_real_durations_fix_gt_jsons_for_24_and_25_fps(real, real_dir):
    database = json.loads((real_dir / "gt.json").read_text())["database"]
    odd = 0
    for split in real.values():
        for name, duration, fps in zip(split.videos, split.duration, split.fps):
            frames = database[name]["frames"]
            assert abs(duration - frames / fps) < 2.0                    # duration.npy agrees with the frame count
            if fps != 30:
                odd += 1
                assert database[name]["duration"] < 0.85 * duration      # gt.json divided by 30 fps
    assert odd == 7 + 6 + 6                              # train, then the 212 and the 210 (they share these six)


def test_real_ambiguous_intervals(real, real_dir):
    lines = [l for l in (real_dir / AMBIGUOUS_FILE).read_text().splitlines() if l.strip()]
    assert len(lines) == 99 and len({l.split()[0] for l in lines}) == 37
    wtalc = real["wtalc"]
    assert sum(len(a) for a in wtalc.ambiguous) == 96                    # 1292's 3 lines have no video here
    assert sum(len(a) > 0 for a in wtalc.ambiguous) == 36


def test_real_protocol_a_snippet_bounds(real):
    test = real["wtalc"]
    snippets = test.ground_truth("snippets")
    assert snippets.start.tolist() == [round(t * 25 / 16) for t in test.instances.start.tolist()]
    assert snippets.end.tolist() == [round(t * 25 / 16) for t in test.instances.end.tolist()]
    # instances shorter than about half a snippet round to empty ranges: counted, never matchable
    assert int((snippets.end == snippets.start).sum()) == 17


def test_real_ground_truth_scores_itself_perfectly(real):
    for units in ("snippets", "seconds"):
        gt = real["wtalc"].ground_truth(units)
        matchable = gt.take(gt.end > gt.start)
        scores = evaluate_localization(gt, matchable, 20)
        expected = np.bincount(matchable.label, minlength=20) / np.bincount(gt.label, minlength=20)
        np.testing.assert_allclose(scores.mean_ap, [expected.mean()] * 7, rtol=0, atol=1e-12)


def test_real_folder_copy_without_split_test_still_gives_the_212(real_dir, tmp_path):
    copy = tmp_path / "th14"
    shutil.copytree(real_dir, copy)
    (copy / "split_test.txt").unlink()
    assert len(load_thumos14(copy, "test", "wtalc")) == 212
    with pytest.raises(DataError, match="split_test.txt: file not found"):
        load_thumos14(copy, "test", "basnet")
