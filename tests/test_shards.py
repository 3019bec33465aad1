"""WebDataset shards: writer, manifest, verify, and the per-rank reader's guarantees.

Most tests use a tiny LLP-layout folder built here with numpy (small feature widths, ids with
'-'/'_' and a leading '-'); one runs the real synthetic generator end to end.
float16 tolerance: float16 keeps 11 significant bits, so a round trip is within a relative
2**-11 of the float32 value (plus 2**-24 absolute for subnormals).
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds

from distributed.common.commandline import run_command
from distributed.common.errors import DataError, UserError
from distributed.common.fsutil import HOST_TAG, temp_sibling_name
from distributed.data.arrays import eval_batches, load_array_split
from distributed.data.features import FeatureSpec, read_video_features
from distributed.data.llp import LLP_CLASSES, load_split
from distributed.data.shards import (
    check_key, eval_assignment, load_manifest, make_eval_loader, make_train_loader,
    train_batches_per_epoch, verify_shards, write_shards,
)
from distributed.shards import main

SPEC = FeatureSpec(num_segments=10, frames_per_segment=2, audio_dim=8, visual_2d_dim=16, visual_3d_dim=4)
F16_RTOL, F16_ATOL = 2.0 ** -11, 2.0 ** -24


def _vid(i: int) -> str:
    return f"-{i:04d}_abc-d" if i % 4 == 0 else f"v{i:04d}-ab_cd"   # 11 chars, '-'/'_', leading '-'


def _write_layout(root: Path, n_train: int, n_val: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    ann = root / "annotations"
    ann.mkdir(parents=True)
    feats = {k: root / "features" / d for k, d in (("audio", "vggish"), ("visual_2d", "res152"),
                                                  ("visual_3d", "r2plus1d_18"))}
    for d in feats.values():
        d.mkdir(parents=True)
    shapes = SPEC.file_shapes()
    dense_a, dense_v = [], []
    for split, n, offset, csv in (("train", n_train, 0, "AVVP_train.csv"),
                                  ("val", n_val, 1000, "AVVP_val_pd.csv")):
        lines = ["filename\tevent_labels"]
        for i in range(offset, offset + n):
            vid = _vid(i)
            name = f"{vid}_{i % 50}_{i % 50 + 10}"
            labels = sorted({LLP_CLASSES[i % 25], LLP_CLASSES[(7 * i) % 25]})
            lines.append(f"{name}\t{','.join(labels)}")
            if split == "val":
                dense_a.append(f"{name}\t{i % 3}\t{i % 3 + 4}\t{labels[0]}")
                dense_v.append(f"{name}\t0\t10\t{labels[-1]}")
            for key, path in feats.items():
                np.save(path / f"{vid}.npy", rng.standard_normal(shapes[key]).astype(np.float32))
        (ann / csv).write_text("\n".join(lines) + "\n")
    (ann / "AVVP_test_pd.csv").write_text("filename\tevent_labels\n")
    (ann / "AVVP_eval_audio.csv").write_text("filename\tonset\toffset\tevent_labels\n" + "\n".join(dense_a) + "\n")
    (ann / "AVVP_eval_visual.csv").write_text("filename\tonset\toffset\tevent_labels\n" + "\n".join(dense_v) + "\n")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("llp")
    _write_layout(root, n_train=50, n_val=21)
    return root


@pytest.fixture(scope="module")
def train_shards(data: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards") / "train"
    write_shards(data / "features", data / "annotations", "train", out, videos_per_shard=6, spec=SPEC)
    return out  # 50 videos: 8 shards of 6 + one of 2


@pytest.fixture(scope="module")
def val_shards(data: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards") / "val"
    write_shards(data / "features", data / "annotations", "val", out, num_shards=3, spec=SPEC)
    return out


def _ids(loader) -> list[list[str]]:
    return [list(b["video_id"]) for b in loader]


def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / src.name
    shutil.copytree(src, dst)
    return dst


def _member_offsets(path: Path) -> dict[str, tuple[int, int]]:
    with tarfile.open(path) as tf:
        return {m.name: (m.offset_data, m.size) for m in tf.getmembers()}


def _rewrite_shard(shard_dir: Path, index: int, mutate) -> str:
    """Rewrite one shard through ``mutate(samples)`` and update the manifest to match (so only
    decoding can notice). Returns the shard's file name."""
    manifest = load_manifest(shard_dir)
    entry = manifest["shards"][index]
    path = shard_dir / entry["name"]
    samples = []
    with tarfile.open(path) as tf:
        for m in tf.getmembers():
            key, field = m.name.split(".", 1)
            if not samples or samples[-1]["__key__"] != key:
                samples.append({"__key__": key})
            samples[-1][field] = tf.extractfile(m).read()
    mutate(samples)
    with wds.TarWriter(str(path), encoder=False) as sink:
        for s in samples:
            sink.write(s)
    entry["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    (shard_dir / "manifest.json").write_text(json.dumps(manifest))
    return entry["name"]


# ---------------------------------------------------------------------------------------------
# writer, manifest, verify
# ---------------------------------------------------------------------------------------------

def test_round_trip_equals_source_within_float16_precision(data: Path, train_shards: Path):
    got = {}
    for batch in make_eval_loader(train_shards, 7, 0, 1):
        for i, vid in enumerate(batch["video_id"]):
            got[vid] = {k: batch[k][i].numpy() for k in ("audio", "visual_2d", "visual_3d", "weak_labels")}
    ann = load_split(data / "annotations", "train")
    assert sorted(got) == sorted(ann.video_ids)
    for row, vid in enumerate(ann.video_ids):
        want = read_video_features(data / "features", vid, SPEC, pool_frames=True)
        for key in ("audio", "visual_2d", "visual_3d"):
            assert got[vid][key].dtype == np.float32
            np.testing.assert_allclose(got[vid][key], want[key], rtol=F16_RTOL, atol=F16_ATOL)
        np.testing.assert_array_equal(got[vid]["weak_labels"], ann.weak_labels[row])


def test_float32_unpooled_round_trip_is_exact(data: Path, tmp_path: Path):
    out = tmp_path / "f32"
    m = write_shards(data / "features", data / "annotations", "val", out, videos_per_shard=8,
                     pool_frames=False, dtype="float32", spec=SPEC)
    assert m["fields"]["visual_2d.npy"] == {"shape": [20, 16], "dtype": "float32"}
    ann = load_split(data / "annotations", "val")
    row = {v: i for i, v in enumerate(ann.video_ids)}
    for batch in make_eval_loader(out, 5, 0, 1):
        assert batch["visual_2d"].shape[1:] == (20, 16)
        for i, vid in enumerate(batch["video_id"]):
            want = read_video_features(data / "features", vid, SPEC, pool_frames=False)
            for key in ("audio", "visual_2d", "visual_3d"):
                np.testing.assert_array_equal(batch[key][i].numpy(), want[key])
            np.testing.assert_array_equal(batch["dense_audio"][i].numpy(), ann.dense_audio[row[vid]])
            np.testing.assert_array_equal(batch["dense_visual"][i].numpy(), ann.dense_visual[row[vid]])


def test_manifest_describes_the_shards(data: Path, train_shards: Path, val_shards: Path):
    m = load_manifest(train_shards)
    assert m["split"] == "train" and m["num_samples"] == 50 and m["num_shards"] == 9
    assert m["pattern"] == "train-{000000..000008}.tar"
    assert [s["count"] for s in m["shards"]] == [6] * 8 + [2]
    for s in m["shards"]:
        assert hashlib.sha256((train_shards / s["name"]).read_bytes()).hexdigest() == s["sha256"]
    assert m["fields"]["audio.npy"] == {"shape": [10, 8], "dtype": "float16"}
    assert m["fields"]["visual_2d.npy"] == {"shape": [10, 16], "dtype": "float16"}
    assert m["fields"]["labels.npy"] == {"shape": [25], "dtype": "float32"}
    assert "dense_audio.npy" not in m["fields"] and m["has_dense"] is False
    assert m["classes"] == list(LLP_CLASSES) and m["num_segments"] == 10
    assert m["pool_frames"] is True and m["dtype"] == "float16"
    assert m["source"]["features"] == str((data / "features").absolute())
    keys = json.loads((train_shards / "keys.json").read_text())
    assert sorted(k for s in m["shards"] for k in keys[s["name"]]) == sorted(_vid(i) for i in range(50))
    v = load_manifest(val_shards)
    assert v["has_dense"] and v["fields"]["dense_visual.npy"] == {"shape": [10, 25], "dtype": "uint8"}
    assert [s["count"] for s in v["shards"]] == [7, 7, 7]


def test_same_input_gives_byte_identical_shards(data: Path, train_shards: Path, tmp_path: Path):
    again = write_shards(data / "features", data / "annotations", "train", tmp_path / "again",
                         videos_per_shard=6, spec=SPEC)
    assert [s["sha256"] for s in again["shards"]] == [s["sha256"] for s in load_manifest(train_shards)["shards"]]


def test_verify_passes_then_names_the_shard_with_a_flipped_byte(train_shards: Path, tmp_path: Path, capsys):
    shards = _copy(train_shards, tmp_path)
    assert run_command(main, ["verify", str(shards)]) == 0
    assert "ok: 9 shards, 50 samples" in capsys.readouterr().out
    path = shards / "train-000003.tar"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    assert verify_shards(shards) and verify_shards(shards)[0].startswith(str(path))
    assert run_command(main, ["verify", str(shards)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train-000003.tar" in err[0] and "sha256" in err[0]


def test_video_ids_with_dots_or_slashes_are_refused_as_keys():
    for ok in ("-0A9suni5YA", "a_b-c_d-e_f", "__x__ab-cde"):
        assert check_key(ok) == ok
    for bad in ("a.b", "a/b", "a b", ""):
        with pytest.raises(DataError):
            check_key(bad)


def test_writer_error_leaves_no_output_and_keeps_existing(data: Path, tmp_path: Path):
    feats = _copy(data / "features", tmp_path)
    (feats / "r2plus1d_18" / f"{_vid(13)}.npy").unlink()
    out = tmp_path / "out"
    with pytest.raises(DataError, match=_vid(13)):
        write_shards(feats, data / "annotations", "train", out, videos_per_shard=6, spec=SPEC)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["features"]   # no out, no tmp dir
    write_shards(data / "features", data / "annotations", "val", out, videos_per_shard=6, spec=SPEC)
    before = (out / "manifest.json").read_text()
    with pytest.raises(UserError, match="--overwrite"):
        write_shards(data / "features", data / "annotations", "val", out, spec=SPEC)
    with pytest.raises(DataError):
        write_shards(feats, data / "annotations", "train", out, spec=SPEC, overwrite=True)
    assert (out / "manifest.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["features", "out"]


def test_cli_bad_input_is_exit_2_and_one_stderr_line(data: Path, tmp_path: Path, capsys):
    cases = [
        ["--features", str(tmp_path / "nope"), "--annotations", str(data / "annotations"),
         "--split", "train", "--out", str(tmp_path / "o")],
        ["--features", str(data / "features"), "--annotations", str(data / "annotations"),
         "--split", "bogus", "--out", str(tmp_path / "o")],
        ["--features", str(data / "features"), "--annotations", str(data / "annotations"),
         "--split", "train", "--out", str(tmp_path / "o"), "--shard-size", "0"],
        ["verify", str(tmp_path / "missing")],
    ]
    for argv in cases:
        assert run_command(main, argv, prog="ppl-avvp shard") == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("ppl-avvp shard: error:"), err
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------------------------
# training reader
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("num_workers", [0, 2])
def test_two_ranks_two_workers_are_disjoint_and_cover_all_but_the_dropped_tail(train_shards: Path, num_workers):
    # 50 videos, 2 ranks x batch 4: 6 batches per rank, 48 videos read, 2 dropped (the same 2
    # nowhere in particular: the tail of this epoch's shard order)
    per_rank = [sum(_ids(make_train_loader(train_shards, 4, r, 2, num_workers=num_workers, epoch=3, seed=7)), [])
                for r in range(2)]
    assert len(per_rank[0]) == len(per_rank[1]) == 24
    assert not set(per_rank[0]) & set(per_rank[1])
    seen = per_rank[0] + per_rank[1]
    assert len(set(seen)) == 48 and set(seen) <= {_vid(i) for i in range(50)}


def test_epochs_together_see_every_video(train_shards: Path):
    seen = set()
    for epoch in range(6):
        for r in range(2):
            seen |= set(sum(_ids(make_train_loader(train_shards, 4, r, 2, epoch=epoch, seed=1)), []))
    assert seen == {_vid(i) for i in range(50)}


def test_every_rank_gets_the_same_number_of_full_batches(train_shards: Path):
    for world, bs, workers in ((2, 4, 2), (3, 5, 1), (3, 2, 2), (1, 7, 2)):
        expected = train_batches_per_epoch(train_shards, bs, world)
        assert expected == 50 // (world * bs)
        for r in range(world):
            loader = make_train_loader(train_shards, bs, r, world, num_workers=workers, epoch=1)
            sizes = [len(b["video_id"]) for b in loader]
            assert len(loader) == len(sizes) == expected and set(sizes) == {bs}, (world, bs, workers, r)


def test_shuffle_is_deterministic_per_seed_and_epoch(train_shards: Path):
    def run(epoch, seed, workers=2):
        return _ids(make_train_loader(train_shards, 4, 1, 2, num_workers=workers, epoch=epoch, seed=seed))
    first = run(0, 5)
    assert run(0, 5) == first
    assert run(1, 5) != first and run(0, 6) != first
    assert sorted(sum(run(0, 5, workers=0), [])) != sum(run(0, 5, workers=0), [])  # really shuffled


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
@pytest.mark.parametrize("num_workers", [0, 2, 3])
def test_skip_batches_resumes_at_the_right_batch(train_shards: Path, num_workers):
    # 8 batches per rank: with 3 workers they get 3/3/2, so the round-robin tail is uneven too
    kw = dict(num_workers=num_workers, epoch=2, seed=3, shuffle_buffer=5)
    full = _ids(make_train_loader(train_shards, 3, 0, 2, **kw))
    assert len(full) == 8
    for k in (1, 2, 4, 7, 8):
        loader = make_train_loader(train_shards, 3, 0, 2, skip_batches=k, **kw)
        assert len(loader) == 8 - k
        assert _ids(loader) == full[k:], k


def test_too_few_shards_for_ranks_times_workers_is_a_clear_error(train_shards: Path):
    with pytest.raises(DataError) as err:
        make_train_loader(train_shards, 2, 0, 4, num_workers=3)
    msg = str(err.value)
    assert "9 shard(s)" in msg and "4 rank(s) x 3 loader worker(s) = 12" in msg
    assert "--num-shards 12" in msg and "resample" in msg and "\n" not in msg


def test_resampling_gives_equal_fixed_length_epochs_with_few_shards(train_shards: Path):
    # 9 shards, 5 ranks x 2 workers = 10 readers: only resampling can serve them
    kw = dict(num_workers=2, epoch=1, seed=2, resample=True, samples_per_epoch=120)
    with pytest.raises(DataError, match="resample"):
        make_train_loader(train_shards, 4, 0, 5, num_workers=2)
    runs = [_ids(make_train_loader(train_shards, 4, r, 5, **kw)) for r in range(5)]
    assert [len(r) for r in runs] == [6] * 5                       # 120 // (5 * 4)
    assert all(len(b) == 4 for r in runs for b in r)
    assert _ids(make_train_loader(train_shards, 4, 2, 5, **kw)) == runs[2]
    assert _ids(make_train_loader(train_shards, 4, 2, 5, skip_batches=3, **kw)) == runs[2][3:]
    assert _ids(make_train_loader(train_shards, 4, 2, 5, **{**kw, "epoch": 2})) != runs[2]


def test_rank_and_world_size_come_from_arguments_not_the_environment(train_shards: Path, monkeypatch):
    want = _ids(make_train_loader(train_shards, 4, 1, 2, epoch=0))
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "5")
    assert _ids(make_train_loader(train_shards, 4, 1, 2, epoch=0)) == want


# ---------------------------------------------------------------------------------------------
# evaluation reader
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("world,num_workers", [(1, 0), (2, 2), (4, 0), (5, 2), (25, 0)])
def test_eval_scores_every_video_exactly_once_over_ranks(val_shards: Path, world, num_workers):
    bs = 4
    largest_share = math.ceil(21 / world)          # rank shares are floor or ceil of N / world
    seen, counts = [], []
    for r in range(world):
        share = eval_assignment(val_shards, r, world)
        loader = make_eval_loader(val_shards, bs, r, world, num_workers=num_workers)
        ids = sum(_ids(loader), [])
        assert sorted(ids) == sorted(share.video_ids) and len(ids) == share.num_samples
        counts.append(loader.stats["batches"])
        seen += ids
    assert sorted(seen) == sorted(_vid(i) for i in range(1000, 1021))
    assert max(counts) == math.ceil(largest_share / bs) and max(counts) - min(counts) <= 1


def _gathered_in_split_order(batches) -> dict:
    """Every rank's eval batches concatenated, then sorted by split_row (what the loop's gather does)."""
    order = torch.argsort(torch.cat([b["split_row"] for b in batches]))
    ids = sum((list(b["video_id"]) for b in batches), [])
    out = {key: torch.cat([b[key] for b in batches])[order]
           for key in ("split_row", "audio", "visual_2d", "visual_3d", "weak_labels")}
    return {**out, "video_id": [ids[i] for i in order.tolist()]}


@pytest.mark.parametrize("num_workers", [0, 2])
def test_eval_batches_sorted_by_split_row_are_the_split_in_csv_order_for_any_world_size(
        data: Path, val_shards: Path, num_workers):
    ann = load_split(data / "annotations", "val")
    assert eval_assignment(val_shards, 0, 1).video_ids != tuple(ann.video_ids)   # shards are shuffled
    want = {key: np.stack([read_video_features(data / "features", v, SPEC)[key] for v in ann.video_ids])
            for key in ("audio", "visual_2d", "visual_3d")}
    first = None
    for world in (1, 2, 3):
        got = _gathered_in_split_order([b for r in range(world) for b in
                                        make_eval_loader(val_shards, 4, r, world, num_workers=num_workers)])
        assert got["split_row"].dtype == torch.int64 and got["split_row"].tolist() == list(range(len(ann)))
        assert got["video_id"] == ann.video_ids
        np.testing.assert_array_equal(got["weak_labels"].numpy(), ann.weak_labels)
        for key, value in want.items():
            np.testing.assert_allclose(got[key].numpy(), value, rtol=F16_RTOL, atol=F16_ATOL)
        first = first or got
        for key in ("audio", "visual_2d", "visual_3d"):
            assert torch.equal(got[key], first[key])                     # bit-identical for every world size
    train = next(iter(make_train_loader(val_shards, 4, 0, 1)))
    assert train["split_row"].shape == (4,) and train["split_row"].dtype == torch.int64
    assert [ann.video_ids[i] for i in train["split_row"].tolist()] == train["video_id"]


def test_array_eval_batches_sorted_by_split_row_are_the_split_in_csv_order(data: Path):
    split = load_array_split(str(data / "annotations"), str(data / "features"), "val", SPEC)
    ann = load_split(data / "annotations", "val")
    for world in (1, 2, 3):
        got = _gathered_in_split_order([b for r in range(world) for b in eval_batches(split, 4, r, world)])
        assert got["split_row"].tolist() == list(range(len(ann))) and got["video_id"] == ann.video_ids
        for key in ("audio", "visual_2d", "visual_3d"):
            np.testing.assert_array_equal(got[key].numpy(), split.tensors[key].numpy())


def test_shards_without_split_row_fall_back_to_the_manifest_order(val_shards: Path, tmp_path: Path):
    shards = _copy(val_shards, tmp_path)

    def drop_split_row(samples):
        for s in samples:
            s["json"] = json.dumps({k: v for k, v in json.loads(s["json"]).items() if k != "split_row"}).encode()
        return samples

    for index in range(load_manifest(shards)["num_shards"]):
        _rewrite_shard(shards, index, drop_split_row)
    manifest_order = list(eval_assignment(shards, 0, 1).video_ids)
    for world in (1, 3):
        got = _gathered_in_split_order([b for r in range(world) for b in make_eval_loader(shards, 4, r, world)])
        assert got["split_row"].tolist() == list(range(21)) and got["video_id"] == manifest_order


# ---------------------------------------------------------------------------------------------
# bad data
# ---------------------------------------------------------------------------------------------

def test_truncated_shard_is_a_data_error_naming_shard_and_sample(train_shards: Path, tmp_path: Path):
    shards = _copy(train_shards, tmp_path)
    path = shards / "train-000000.tar"
    offsets = _member_offsets(path)
    key = json.loads((shards / "keys.json").read_text())["train-000000.tar"][2]
    cut = offsets[f"{key}.visual_2d.npy"][0] + 10          # inside sample #2's visual_2d.npy
    path.write_bytes(path.read_bytes()[:cut])
    with pytest.raises(DataError) as err:
        list(make_eval_loader(shards, 4, 0, 1))
    assert str(path) in str(err.value) and repr(key) in str(err.value) and "truncated" in str(err.value)


def test_checksum_mismatch_is_caught_when_verify_is_on(train_shards: Path, tmp_path: Path):
    shards = _copy(train_shards, tmp_path)
    path = shards / "train-000004.tar"
    name, (off, _) = next((n, o) for n, o in _member_offsets(path).items() if n.endswith("audio.npy"))
    raw = bytearray(path.read_bytes())
    raw[off + 200] ^= 0x01                                 # a data byte: still decodes
    path.write_bytes(bytes(raw))
    assert len(sum(_ids(make_eval_loader(shards, 4, 0, 1)), [])) == 50
    with pytest.raises(DataError, match=r"train-000004\.tar: sha256"):
        list(make_eval_loader(shards, 4, 0, 1, verify=True))
    (shards / "train-000006.tar").unlink()
    with pytest.raises(DataError, match=r"train-000006\.tar: missing"):
        list(make_eval_loader(shards, 4, 0, 1))


@pytest.mark.parametrize("damage,expect", [
    ("missing", "missing visual_3d.npy"),
    ("shape", "manifest says float16[10, 8]"),
    ("garbage", "not a readable .npy"),
    ("pickle", "not a readable .npy"),
])
def test_bad_samples_are_data_errors_naming_shard_and_sample(train_shards: Path, tmp_path: Path, damage, expect):
    shards = _copy(train_shards, tmp_path)

    def mutate(samples):
        s = samples[3]
        if damage == "missing":
            del s["visual_3d.npy"]
        elif damage == "shape":
            buf = io.BytesIO()
            np.save(buf, np.zeros((9, 8), np.float16))
            s["audio.npy"] = buf.getvalue()
        elif damage == "garbage":
            s["visual_2d.npy"] = b"\x93NUMPY garbage"
        else:
            buf = io.BytesIO()
            np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
            s["labels.npy"] = buf.getvalue()
        return samples

    name = _rewrite_shard(shards, 1, mutate)
    key = json.loads((shards / "keys.json").read_text())[name][3]
    with pytest.raises(DataError) as err:
        list(make_eval_loader(shards, 4, 0, 1, verify=True))
    msg = str(err.value)
    assert f"{shards / name}" in msg and repr(key) in msg and expect in msg and "\n" not in msg
    assert any(name in p and repr(key) in p for p in verify_shards(shards, deep=True))
    with pytest.raises(DataError) as err:   # raised in a loader worker process: same one line
        list(make_train_loader(shards, 4, 0, 1, num_workers=2, shuffle=False))
    assert str(err.value) == msg


def test_skip_bad_samples_keeps_batch_counts_and_counts_what_it_skipped(train_shards: Path, tmp_path: Path):
    shards = _copy(train_shards, tmp_path)

    def mutate(samples):
        del samples[0]["audio.npy"]
        samples[4]["visual_3d.npy"] = b"not npy"
        return samples

    name = _rewrite_shard(shards, 2, mutate)
    bad = set(json.loads((shards / "keys.json").read_text())[name][i] for i in (0, 4))
    with pytest.raises(DataError):
        list(make_eval_loader(shards, 4, 0, 1))
    # eval: bad videos are dropped (never duplicated), counted
    ev = make_eval_loader(shards, 4, 0, 1, skip_bad_samples=True)
    ids = sum(_ids(ev), [])
    assert len(ids) == 48 and not bad & set(ids) and ev.stats["skipped"] == 2
    assert all(name in r for r in ev.stats["bad_samples"])
    # train: same number of full batches on every rank; bad rows refilled and marked invalid
    total_skipped, total_invalid = 0, 0
    for r in range(2):
        loader = make_train_loader(shards, 4, r, 2, num_workers=2, epoch=0, seed=0, skip_bad_samples=True)
        batches = list(loader)
        assert len(batches) == 6 and all(len(b["video_id"]) == 4 for b in batches)
        total_skipped += loader.stats["skipped"]
        total_invalid += sum(int((~b["valid"]).sum()) for b in batches)
        assert loader.stats["samples"] == 24 - loader.stats["skipped"]
    assert total_skipped == total_invalid <= 2


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
def test_renamed_sample_keys_are_refused_by_the_training_loader_and_verify(train_shards: Path, tmp_path: Path):
    shards = _copy(train_shards, tmp_path)

    def rename(samples):
        samples[2]["__key__"] = "renamed-key"
        return samples

    name = _rewrite_shard(shards, 0, rename)          # manifest sha256 updated: only the keys differ
    path = shards / name
    for workers in (0, 2):
        with pytest.raises(DataError) as err:
            list(make_train_loader(shards, 2, 0, 1, num_workers=workers, shuffle=False))
        msg = str(err.value)
        assert "\n" not in msg and str(path) in msg and "'renamed-key'" in msg and "keys.json" in msg
    with pytest.raises(DataError, match="renamed-key"):
        list(make_eval_loader(shards, 4, 0, 1))
    problems = verify_shards(shards, deep=True)
    assert len(problems) == 1 and problems[0].startswith(str(path)) and "renamed-key" in problems[0]
    # with skip_bad_samples the rest of that shard counts as bad, and the epoch keeps its length
    loader = make_train_loader(shards, 2, 0, 1, shuffle=False, skip_bad_samples=True)
    assert len(list(loader)) == 25 and loader.stats["skipped"] == 4


def test_iterating_a_worker_loader_leaves_the_global_torch_rng_alone(train_shards: Path):
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    loader = make_train_loader(train_shards, 4, 0, 1, num_workers=2, epoch=1, seed=5)
    first = _ids(loader)
    assert torch.equal(torch.get_rng_state(), before)
    assert _ids(make_train_loader(train_shards, 4, 0, 1, num_workers=2, epoch=1, seed=5)) == first
    assert torch.equal(torch.get_rng_state(), before)


def test_rerun_removes_stale_temporaries_of_dead_writers_only(data: Path, tmp_path: Path):
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    out, dead = tmp_path / "val", child.pid
    child.wait()
    stale = [temp_sibling_name(out, "tmp", dead),                   # a `kill -9`ed writer of this host
             tmp_path / f".val.tmp-{dead}-0badc0de",                # ... as earlier versions named it
             tmp_path / f".val.synth-tmp-{dead}"]
    other_host = "0" * 8 if HOST_TAG != "0" * 8 else "1" * 8
    kept = [temp_sibling_name(out, "tmp", os.getpid()),             # a live writer's
            tmp_path / f".val.tmp-{dead}-{other_host}-12345678",    # another machine's (shared disk)
            tmp_path / ".other.tmp-1-2"]                            # not a temporary of this output
    for folder in stale + kept:
        folder.mkdir()
        (folder / "part.tar").write_bytes(b"x")
    write_shards(data / "features", data / "annotations", "val", out, num_shards=3, spec=SPEC)
    assert not any(p.exists() for p in stale)
    assert all((p / "part.tar").is_file() for p in kept)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["val"] + [p.name for p in kept])


def test_out_that_is_a_file_or_under_one_is_exit_2_one_line(data: Path, tmp_path: Path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("keep")
    for out in (a_file, a_file / "x", a_file / "x" / "y"):
        argv = ["--features", str(data / "features"), "--annotations", str(data / "annotations"),
                "--split", "val", "--out", str(out)]
        assert run_command(main, argv, prog="ppl-avvp shard") == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("ppl-avvp shard: error:") and str(out) in err[0], err
    assert a_file.read_text() == "keep" and sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


# ---------------------------------------------------------------------------------------------
# the real synthetic generator, end to end
# ---------------------------------------------------------------------------------------------

def test_synthetic_llp_dataset_shards_and_reads_back(tmp_path: Path):
    from distributed.data.synth import generate
    generate(tmp_path / "syn", n_train=24, n_val=10, n_test=4, seed=0)
    out = tmp_path / "val"
    assert run_command(main, ["--features", str(tmp_path / "syn" / "features"), "--annotations",
                              str(tmp_path / "syn" / "annotations"), "--split", "val", "--out", str(out),
                              "--shard-size", "4"]) == 0
    assert run_command(main, ["verify", str(out), "--deep"]) == 0
    ann = load_split(tmp_path / "syn" / "annotations", "val")
    batches = list(make_eval_loader(out, 3, 0, 1))
    assert sorted(sum((b["video_id"] for b in batches), [])) == sorted(ann.video_ids)
    b = batches[0]
    assert b["audio"].shape == (3, 10, 128) and b["visual_2d"].shape == (3, 10, 2048)
    assert b["visual_3d"].shape == (3, 10, 512) and b["dense_audio"].shape == (3, 10, 25)
