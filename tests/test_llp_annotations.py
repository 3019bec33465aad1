"""distributed.llp.load_split on the real LLP annotation files, and on broken tmp files."""
from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from distributed.common.errors import ConfigError, DataError
from distributed.data.llp import (DENSE_AUDIO_FILE, DENSE_VISUAL_FILE, LLP_CLASSES, SPLIT_FILES, LLPSplit,
                             load_split, split_index)

ENV = "PPL_AVVP_LLP_DIR"


@pytest.fixture(scope="module")
def llp_dir() -> Path:
    if not os.environ.get(ENV):
        pytest.skip(f"{ENV} is not set: point it at the real LLP annotation folder to run these tests")
    return Path(os.environ[ENV])


@pytest.fixture(scope="module")
def splits(llp_dir) -> dict[str, LLPSplit]:
    return {name: load_split(llp_dir, name) for name in ("train", "val", "test")}


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def _video(split: LLPSplit, filename: str) -> tuple[np.ndarray, np.ndarray]:
    i = split.filenames.index(filename)
    return split.dense_audio[i], split.dense_visual[i]


C = {name: i for i, name in enumerate(LLP_CLASSES)}


# ---------------------------------------------------------------------------------------------
# real files
# ---------------------------------------------------------------------------------------------

def test_real_split_sizes_and_class_count(splits):
    assert {k: len(s) for k, s in splits.items()} == {"train": 10000, "val": 649, "test": 1200}
    for s in splits.values():
        assert s.classes == LLP_CLASSES and len(s.classes) == 25
        assert s.weak_labels.shape == (len(s), 25) and s.weak_labels.dtype == np.float32
        assert set(np.unique(s.weak_labels)) == {0.0, 1.0} and (s.weak_labels.sum(1) >= 1).all()
    for name in ("val", "test"):
        s = splits[name]
        assert s.dense_audio.shape == s.dense_visual.shape == (len(s), 10, 25)
        assert s.dense_audio.dtype == np.uint8


def test_real_train_split_has_no_dense_truth(splits):
    assert splits["train"].dense_audio is None and splits["train"].dense_visual is None


def test_real_weak_labels_match_csv(splits, llp_dir):
    s = splits["val"]
    row = _rows(llp_dir / SPLIT_FILES["val"])[0]
    assert s.filenames[0] == row["filename"] == "4O9rI-FpqLg_10_20"
    assert np.nonzero(s.weak_labels[0])[0].tolist() == sorted(C[n] for n in ("Cheering", "Speech", "Clapping"))
    assert splits["train"].filenames[0] == "BjCEufrlXm4_20_30"
    assert np.nonzero(splits["train"].weak_labels[0])[0].tolist() == [C["Speech"], C["Dog"]]


def test_real_known_videos_dense_truth(splits):
    # AVVP_eval_audio.csv lines 2-4 and AVVP_eval_visual.csv lines 2-3 (read by hand)
    audio, visual = _video(splits["test"], "4YdbENYcIyE_23_33")
    assert audio[:, C["Baby_cry_infant_cry"]].tolist() == [1] * 4 + [0] * 6
    assert visual[:, C["Baby_cry_infant_cry"]].tolist() == [1] * 10
    assert audio.sum() == 4 and visual.sum() == 10
    audio, visual = _video(splits["test"], "KSRjje7GH44_60_70")
    assert audio[:, C["Blender"]].tolist() == [0] * 8 + [1] * 2
    assert audio[:, C["Speech"]].tolist() == [1] * 8 + [0] * 2
    assert visual[:, C["Blender"]].tolist() == [1] * 10 and visual.sum() == 10
    # val 8DF2PxdT5tE_390_400: Speech rows [0,2) + [7,10) OR-ed; Cheering 9 -> 0 is empty
    audio, visual = _video(splits["val"], "8DF2PxdT5tE_390_400")
    assert audio[:, C["Speech"]].tolist() == [1, 1, 0, 0, 0, 0, 0, 1, 1, 1]
    assert audio[:, C["Basketball_bounce"]].tolist() == [0, 0] + [1] * 6 + [0, 0]
    assert audio[:, C["Cheering"]].sum() == 0
    assert visual[:, C["Speech"]].tolist() == [0] * 7 + [1, 0, 1]


def test_real_dense_rows_match_filenames_exactly_not_by_id(splits):
    # '19jWnmYnlD8_30_400 ... Clapping' names no video; the val video 19jWnmYnlD8_30_40 only has Violin_fiddle
    audio, visual = _video(splits["val"], "19jWnmYnlD8_30_40")
    for truth in (audio, visual):
        assert truth[:, C["Violin_fiddle"]].sum() == 10
        assert truth[:, C["Clapping"]].sum() == 0 and truth.sum() == 10


def test_real_rows_naming_unknown_videos_are_ignored(splits, llp_dir):
    known = set(splits["val"].filenames) | set(splits["test"].filenames)
    for name, expect_rows, expect_names in ((DENSE_AUDIO_FILE, 14, 8), (DENSE_VISUAL_FILE, 11, 7)):
        rows = _rows(llp_dir / name)
        unknown = [r for r in rows if r["filename"] not in known]
        assert len(unknown) == expect_rows and len({r["filename"] for r in unknown}) == expect_names
        assert {"7X3oSVoA_90_100", "CSWQ_HzQ_10_20", "19jWnmYnlD8_30_400"} <= {r["filename"] for r in unknown}
        # every segment that is set comes from a row of that very video: rebuild from known rows only
        key = "dense_audio" if name == DENSE_AUDIO_FILE else "dense_visual"
        for split in ("val", "test"):
            s = splits[split]
            rebuilt = np.zeros_like(getattr(s, key))
            row_of = {f: i for i, f in enumerate(s.filenames)}
            for r in rows:
                if r["filename"] in row_of:
                    rebuilt[row_of[r["filename"]], int(r["onset"]):int(r["offset"]), C[r["event_labels"]]] = 1
            assert np.array_equal(rebuilt, getattr(s, key))


def test_real_six_empty_audio_rows_contribute_nothing(splits, llp_dir, tmp_path):
    rows = _rows(llp_dir / DENSE_AUDIO_FILE)
    empty = [r for r in rows if int(r["onset"]) >= int(r["offset"])]
    assert len(empty) == 6
    for name in list(SPLIT_FILES.values()) + [DENSE_VISUAL_FILE]:
        shutil.copy(llp_dir / name, tmp_path / name)
    with open(tmp_path / DENSE_AUDIO_FILE, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]), delimiter="\t", lineterminator="\n")
        writer.writeheader()
        writer.writerows(r for r in rows if int(r["onset"]) < int(r["offset"]))
    for split in ("val", "test"):
        assert np.array_equal(load_split(tmp_path, split).dense_audio, splits[split].dense_audio)
    # H5WcJwyjxIg_2_12's only audio row is [0, 0): its audio truth is empty
    assert _video(splits["test"], "H5WcJwyjxIg_2_12")[0].sum() == 0


def test_real_val_and_test_dense_coverage(splits):
    counts = {}
    for name in ("val", "test"):
        s = splits[name]
        has_a, has_v = s.dense_audio.any(axis=(1, 2)), s.dense_visual.any(axis=(1, 2))
        counts[name] = (int(has_a.sum()), int(has_v.sum()), int((has_a | has_v).sum()),
                        int(s.dense_audio.sum()), int(s.dense_visual.sum()))
    assert counts == {"val": (645, 579, 649, 8089, 6115), "test": (1194, 1079, 1200, 14576, 11789)}


def test_real_pre2024_audio_file_differs_in_two_test_videos(splits, llp_dir):
    old = load_split(llp_dir, "test", dense_audio_file="AVVP_eval_audio_pre2024.csv")
    changed = np.nonzero((old.dense_audio != splits["test"].dense_audio).any(axis=(1, 2)))[0]
    assert sorted(splits["test"].filenames[i] for i in changed) == ["JfZEqeLZqWk_30_40", "KvIjsmANkxI_10_20"]
    assert np.array_equal(load_split(llp_dir, "val", dense_audio_file="AVVP_eval_audio_pre2024.csv").dense_audio,
                          splits["val"].dense_audio)


def test_real_split_index_maps_filename_and_id(splits):
    s = splits["test"]
    index = split_index(s)
    assert len(index) == 2 * len(s)
    assert index["KSRjje7GH44_60_70"] == index["KSRjje7GH44"] == 1


# ---------------------------------------------------------------------------------------------
# synthetic / broken files
# ---------------------------------------------------------------------------------------------

def _write(folder: Path, name: str, lines: list[str]) -> Path:
    path = folder / name
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def tiny(tmp_path) -> Path:
    """A 3-video val split in LLP layout; ids with '-' and '_', one row per quirk."""
    _write(tmp_path, SPLIT_FILES["val"], ["filename\tevent_labels", "-abc_def-gh_10_20\tSpeech,Dog",
                                          "AAAAAAAAAAA_0_10\tCar", "BBBBBBBBBBB_5_15\tCat,Speech"])
    _write(tmp_path, DENSE_AUDIO_FILE, [
        "filename\tonset\toffset\tevent_labels",
        "-abc_def-gh_10_20\t0\t3\tSpeech", "-abc_def-gh_10_20\t2\t5\tSpeech",   # OR-ed -> [0, 5)
        "-abc_def-gh_10_20\t8\t12\tDog",                                       # clipped at T
        "AAAAAAAAAAA_0_10\t4\t4\tCar",                                         # empty
        "AAAAAAAAAAA_0_100\t0\t10\tCar",                                       # no such video
        "BBBBBBBBBBB_5_15\t6\t2\tCat"])                                        # onset > offset: empty
    _write(tmp_path, DENSE_VISUAL_FILE, ["filename\tonset\toffset\tevent_labels", "BBBBBBBBBBB_5_15\t0\t10\tCat"])
    return tmp_path


def test_tiny_split_dense_rules(tiny):
    s = load_split(tiny, "val")
    assert s.filenames == ["-abc_def-gh_10_20", "AAAAAAAAAAA_0_10", "BBBBBBBBBBB_5_15"]
    assert s.video_ids == ["-abc_def-gh", "AAAAAAAAAAA", "BBBBBBBBBBB"]
    assert s.dense_audio[0, :, C["Speech"]].tolist() == [1] * 5 + [0] * 5
    assert s.dense_audio[0, :, C["Dog"]].tolist() == [0] * 8 + [1] * 2
    assert s.dense_audio[1:].sum() == 0 and s.dense_audio.sum() == 7
    assert s.dense_visual[2, :, C["Cat"]].sum() == 10 and s.dense_visual.sum() == 10


def test_num_segments_other_than_ten_clips_offsets(tiny):
    s = load_split(tiny, "val", num_segments=4)
    assert s.dense_audio.shape == (3, 4, 25)
    assert s.dense_audio[0, :, C["Speech"]].tolist() == [1] * 4 and s.dense_audio[0, :, C["Dog"]].sum() == 0


def test_train_dense_truth_is_read_only_when_both_files_exist(tiny):
    _write(tiny, SPLIT_FILES["train"], ["filename\tevent_labels", "CCCCCCCCCCC_0_10\tDog"])
    assert load_split(tiny, "train").dense_audio is None
    _write(tiny, "AVVP_train_dense_audio.csv", ["filename\tonset\toffset\tevent_labels", "CCCCCCCCCCC_0_10\t1\t3\tDog"])
    assert load_split(tiny, "train").dense_audio is None
    _write(tiny, "AVVP_train_dense_visual.csv", ["filename\tonset\toffset\tevent_labels"])
    s = load_split(tiny, "train")
    assert s.dense_audio[0, :, C["Dog"]].tolist() == [0, 1, 1] + [0] * 7 and s.dense_visual.sum() == 0


def _one_line_error(exc_info, *parts):
    msg = str(exc_info.value)
    assert "\n" not in msg
    for part in parts:
        assert part in msg, (part, msg)


def test_unknown_class_in_split_file_names_file_line_and_class(tiny):
    _write(tiny, SPLIT_FILES["val"], ["filename\tevent_labels", "AAAAAAAAAAA_0_10\tCar,Kazoo"])
    with pytest.raises(DataError) as e:
        load_split(tiny, "val")
    _one_line_error(e, SPLIT_FILES["val"], ":2:", "Kazoo")


def test_unknown_class_in_dense_file_names_file_line_and_class(tiny):
    with open(tiny / DENSE_VISUAL_FILE, "a") as fh:
        fh.write("BBBBBBBBBBB_5_15\t0\t1\tcat\n")
    with pytest.raises(DataError) as e:
        load_split(tiny, "val")
    _one_line_error(e, DENSE_VISUAL_FILE, ":3:", "'cat'")


@pytest.mark.parametrize("missing", [SPLIT_FILES["val"], DENSE_AUDIO_FILE, DENSE_VISUAL_FILE])
def test_missing_annotation_file_is_a_data_error_naming_it(tiny, missing):
    (tiny / missing).unlink()
    with pytest.raises(DataError) as e:
        load_split(tiny, "val")
    _one_line_error(e, missing, "not found")


@pytest.mark.parametrize("row,expect", [
    ("BBBBBBBBBBB_5_15\t0\tCat", "expected 4 tab-separated columns, got 3"),
    ("BBBBBBBBBBB_5_15 0 1 Cat", "expected 4 tab-separated columns, got 1"),
    ("BBBBBBBBBBB_5_15\tone\t3\tCat", "onset 'one' is not a whole number"),
    ("BBBBBBBBBBB_5_15\t0\t2.5\tCat", "offset '2.5' is not a whole number"),
    ("BBBBBBBBBBB_5_15\t-1\t2\tCat", "onset -1 is negative"),
])
def test_malformed_dense_row_is_a_data_error_naming_file_and_line(tiny, row, expect):
    with open(tiny / DENSE_AUDIO_FILE, "a") as fh:
        fh.write(row + "\n")
    with pytest.raises(DataError) as e:
        load_split(tiny, "val")
    _one_line_error(e, f"{DENSE_AUDIO_FILE}:8:", expect)


def test_malformed_split_row_and_header_are_data_errors(tiny):
    _write(tiny, SPLIT_FILES["val"], ["filename\tevent_labels", "AAAAAAAAAAA_0_10\tCar\textra"])
    with pytest.raises(DataError) as e:
        load_split(tiny, "val")
    _one_line_error(e, f"{SPLIT_FILES['val']}:2:", "expected 2")
    _write(tiny, SPLIT_FILES["val"], ["filename,event_labels", "AAAAAAAAAAA_0_10,Car"])
    with pytest.raises(DataError) as e:
        load_split(tiny, "val")
    _one_line_error(e, f"{SPLIT_FILES['val']}:1:", "tab-separated")


def test_duplicate_filename_in_split_is_a_data_error(tiny):
    _write(tiny, SPLIT_FILES["val"], ["filename\tevent_labels", "AAAAAAAAAAA_0_10\tCar", "AAAAAAAAAAA_0_10\tDog"])
    with pytest.raises(DataError) as e:
        load_split(tiny, "val")
    _one_line_error(e, ":3:", "repeats line 2")


def test_unknown_split_name_is_rejected(tiny):
    with pytest.raises(ConfigError, match="split: must be one of train, val, test, got 'valid'"):
        load_split(tiny, "valid")


def test_split_index_rejects_an_id_shared_by_two_videos(tiny):
    _write(tiny, SPLIT_FILES["val"], ["filename\tevent_labels", "AAAAAAAAAAA_0_10\tCar", "AAAAAAAAAAA_20_30\tDog"])
    with pytest.raises(DataError) as e:
        split_index(load_split(tiny, "val"))
    _one_line_error(e, "'AAAAAAAAAAA'", "AAAAAAAAAAA_0_10", "AAAAAAAAAAA_20_30")
