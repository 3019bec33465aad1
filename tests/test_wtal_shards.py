"""Variable-length W-TAL shards (`ppl-avvp wtal shard`, distributed/data/shards/wtal.py) on tiny synthetic
THUMOS14-layout data: real WebDataset tars, read back into exactly the in-memory path's batches, evaluated and
trained to the same numbers."""
import hashlib
import json
import shutil

import numpy as np
import pytest
import torch

from distributed.cli import main as cli
from distributed.common.config import load_config
from distributed.common.errors import DataError, UserError
from distributed.data.shards import load_manifest, verify_shards, write_shards_from_arrays
from distributed.data.shards.wtal import WTALShardData, write_wtal_shards
from distributed.data.wtal_arrays import WTALData
from distributed.data.wtal_features import read_wtal_features
from distributed.train import train

DIM = 16
TINY = [f"model.rgb_dim={DIM}", f"model.flow_dim={DIM}", "model.model_dim=32", "model.han_ffn_dim=32",
        "data.batch_size=4", "data.eval_batch_size=3", "data.train_snippets=48", "optim.epochs=2",
        "optim.lr=1e-3", "ppl.warmup_epochs=1", "ppl.key_min_prob=0.0", "ppl.ema_decay=0.9"]


@pytest.fixture(scope="module")
def tiny_wtal(tmp_path_factory):
    from distributed.data.wtal_synth import generate

    out = tmp_path_factory.mktemp("tiny_wtal_shards") / "data"
    generate(out, n_train=16, n_test=9, seed=0, dim=DIM, signal=5.0)
    return out


@pytest.fixture(scope="module")
def shards(tiny_wtal):
    out = tiny_wtal.parent / "shards"
    assert cli(["wtal", "shard", "--annotations", str(tiny_wtal / "annotations"), "--features",
                str(tiny_wtal / "features"), "--out", str(out), "--dtype", "float32", "--dim", str(DIM),
                "--videos-per-shard", "3"]) == 0
    return out


def config(data, shards, *extra, on_shards=True):
    source = [f"data.shards={shards}"] if on_shards else [f"data.annotations={data / 'annotations'}",
                                                          f"data.features={data / 'features'}"]
    return load_config("thumos14", [*source, *TINY, "distributed.num_workers=0", "distributed.engine=torch",
                                    *extra])


def assert_same_batch(a: dict, b: dict):
    assert set(a) == set(b)
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


def test_manifest_records_task_widths_protocol_and_each_video_length(tiny_wtal, shards):
    m = load_manifest(shards / "train")
    assert m["task"] == "wtal" and m["split"] == "train" and m["widths"] == {"rgb": DIM, "flow": DIM}
    assert m["protocol"] == "A" and load_manifest(shards / "test")["test_set"] == "wtalc"
    assert m["fields"]["rgb.npy"] == {"shape": [None, DIM], "dtype": "float32"}
    assert [s["count"] for s in m["shards"]] == [3, 3, 3, 3, 3, 1] and m["num_samples"] == 16
    keys = json.loads((shards / "train" / "keys.json").read_text())
    lengths = {v: t for s in m["shards"] for v, t in zip(keys[s["name"]], s["lengths"])}
    for vid, t in lengths.items():   # the manifest's T is the feature file's
        assert len(read_wtal_features(tiny_wtal / "features", vid, dim=DIM)[0]) == t
    assert len(set(lengths.values())) > 3            # variable length indeed
    assert m["snippets"] == {"min": min(lengths.values()), "max": max(lengths.values()),
                             "total": sum(lengths.values())}
    for s in m["shards"]:   # offsets: increasing, inside the file, the end of the last sample before the tar's end
        assert len(s["offsets"]) == s["count"] + 1 and s["offsets"][0] == 0
        assert all(a < b for a, b in zip(s["offsets"], s["offsets"][1:])) and s["offsets"][-1] <= s["bytes"]
    assert verify_shards(shards / "train", deep=True) == [] and verify_shards(shards / "test", deep=True) == []


def test_same_input_gives_byte_identical_shards(tiny_wtal, shards, tmp_path):
    again = write_wtal_shards(tiny_wtal / "annotations", tiny_wtal / "features", tmp_path / "again", "train",
                              videos_per_shard=3, dim=DIM, dtype="float32")
    first = load_manifest(shards / "train")
    assert [s["sha256"] for s in again["shards"]] == [s["sha256"] for s in first["shards"]]
    for name in ("keys.json", "annotations.json"):
        assert (tmp_path / "again" / name).read_bytes() == (shards / "train" / name).read_bytes()


@pytest.mark.parametrize("world, extra", [(1, []), (2, []), (1, ["data.train_snippets=0"]),
                                          (2, ["data.loader_workers=2"])])
def test_shard_batches_equal_the_in_memory_batches(tiny_wtal, shards, world, extra):
    for rank in range(world):
        from_shards = WTALShardData(config(tiny_wtal, shards, *extra), rank, world)
        in_memory = WTALData(config(tiny_wtal, shards, *extra, on_shards=False), rank, world)
        assert from_shards.num_train_batches == in_memory.num_train_batches
        for epoch in (0, 1):
            a, b = list(from_shards.train(epoch)), list(in_memory.train(epoch))
            assert len(a) == len(b) == in_memory.num_train_batches
            for x, y in zip(a, b):
                assert_same_batch(x, y)
        resumed = list(from_shards.train(1, skip_batches=1))
        assert len(resumed) == len(b) - 1 and all(torch.equal(x["rgb"], y["rgb"]) for x, y in zip(resumed, b[1:]))
        a, b = list(from_shards.eval("test")), list(in_memory.eval("test"))
        assert len(a) == len(b) > 0
        for x, y in zip(a, b):
            assert_same_batch(x, y)
        assert from_shards.splits["test"].annotations.ground_truth("snippets").start.tolist() == \
            in_memory.splits["test"].annotations.ground_truth("snippets").start.tolist()


def test_padding_is_zero_and_masked_in_variable_length_batches(tiny_wtal, shards):
    data = WTALShardData(config(tiny_wtal, shards), 0, 1)
    lengths = data.splits["test"].lengths
    for batch in data.eval("test"):
        t = batch["length"]
        assert torch.equal(t, torch.as_tensor(lengths[batch["split_row"].numpy()]))
        assert batch["rgb"].shape[1] == int(t.max())
        for i, k in enumerate(t.tolist()):
            assert batch["mask"][i, :k].all() and not batch["mask"][i, k:].any()
            for key in ("rgb", "flow", "dense_audio"):
                assert not batch[key][i, k:].any()
    assert len(set(lengths.tolist())) > 1
    train = next(iter(data.train(0)))            # sampled snippets: 48 per video, shorter ones padded and masked
    assert train["rgb"].shape[1] == 48 and torch.equal(train["mask"].sum(1), train["length"])


def test_two_ranks_read_disjoint_videos_and_evaluate_each_exactly_once(tiny_wtal, shards):
    ranks = [WTALShardData(config(tiny_wtal, shards), r, 2) for r in range(2)]
    rows = [[r for b in d.train(0) for r in b["split_row"].tolist()] for d in ranks]
    assert len(rows[0]) == len(rows[1]) == 8 and not set(rows[0]) & set(rows[1])
    for world in (1, 2, 4):
        seen = [r for rank in range(world) for b in WTALShardData(config(tiny_wtal, shards), rank, world).eval("test")
                for r in b["video_id"]]
        assert sorted(seen) == sorted(ranks[0].splits["test"].annotations.videos) and len(seen) == 9


def _one_line_data_error(fn, match):
    with pytest.raises(DataError, match=match) as err:
        fn()
    assert "\n" not in str(err.value)
    return str(err.value)


def test_truncated_tar_is_a_one_line_error_naming_the_shard(tiny_wtal, shards, tmp_path):
    copy = tmp_path / "shards"
    shutil.copytree(shards, copy)
    tar = copy / "test" / "test-000001.tar"
    tar.write_bytes(tar.read_bytes()[:-3000])
    msg = _one_line_data_error(lambda: list(WTALShardData(config(tiny_wtal, copy, "data.verify_shards=false"), 0, 1)
                                            .eval("test")), "truncated")
    assert str(tar) in msg
    msg = _one_line_data_error(lambda: list(WTALShardData(config(tiny_wtal, copy), 0, 1).eval("test")), "sha256")
    assert str(tar) in msg
    skipping = WTALShardData(config(tiny_wtal, copy, "data.verify_shards=false", "data.skip_bad_samples=true"), 0, 1)
    seen = [v for b in skipping.eval("test") for v in b["video_id"]]
    assert skipping.skipped >= 1 and len(seen) == 9 - skipping.skipped


def test_task_and_protocol_mismatches_are_one_line_errors(tiny_wtal, shards, tmp_path):
    llp = tmp_path / "llp"
    for split in ("train", "test"):
        write_shards_from_arrays(llp / split, split, ["a", "b"], {
            "audio": np.zeros((2, 10, 4)), "visual_2d": np.zeros((2, 10, 4)), "visual_3d": np.zeros((2, 10, 4))},
            np.zeros((2, 25)), [f"c{i}" for i in range(25)])
    _one_line_data_error(lambda: WTALShardData(config(tiny_wtal, llp), 0, 1), "task is 'llp'.*ppl-avvp wtal shard")
    mixed = tmp_path / "mixed"
    for split in ("train", "val", "test"):
        shutil.copytree(shards / ("train" if split == "train" else "test"), mixed / split)
    from distributed.data.shards import ShardData

    _one_line_data_error(lambda: ShardData(load_config("ppl", [f"data.shards={mixed}"]), 0, 1), "task is 'wtal'")
    _one_line_data_error(lambda: WTALShardData(config(tiny_wtal, shards, "data.protocol=B"), 0, 1),
                         "protocol 'A'.*--protocol B")
    with pytest.raises(UserError, match="data.limit_train"):
        config(tiny_wtal, shards, "data.limit_train=4")


def test_float16_shards_are_within_float16_precision(tiny_wtal, tmp_path):
    write_wtal_shards(tiny_wtal / "annotations", tiny_wtal / "features", tmp_path / "f16" / "test", "test", dim=DIM)
    write_wtal_shards(tiny_wtal / "annotations", tiny_wtal / "features", tmp_path / "f16" / "train", "train", dim=DIM)
    a = next(iter(WTALShardData(config(tiny_wtal, tmp_path / "f16"), 0, 1).eval("test")))
    b = next(iter(WTALData(config(tiny_wtal, None, on_shards=False), 0, 1).eval("test")))
    assert not torch.equal(a["rgb"], b["rgb"])
    torch.testing.assert_close(a["rgb"], b["rgb"], rtol=2.0 ** -11, atol=2.0 ** -24)


def test_train_on_shards_gives_the_in_memory_runs_test_map(tiny_wtal, shards, tmp_path, capsys):
    base = [f"output_dir={tmp_path / 'memory'}", *TINY, "distributed.num_workers=0", "distributed.engine=torch"]
    in_memory = train(load_config("thumos14", [f"data.annotations={tiny_wtal / 'annotations'}",
                                               f"data.features={tiny_wtal / 'features'}", *base]), mlflow=False)
    assert cli(["train", "--config", "thumos14", f"data.shards={shards}", f"output_dir={tmp_path / 'shards'}",
                *TINY, "distributed.num_workers=0", "distributed.engine=torch", "--no-mlflow"]) == 0
    assert "best on test" in capsys.readouterr().out
    from_shards = json.loads((tmp_path / "shards" / "results.json").read_text())
    assert from_shards["rows"] == in_memory["rows"]          # mAP@0.1..0.7 and averages, last and best-on-test
    timing = {"videos_per_s", "step_ms", "bank_allreduce_share"}     # wall-clock measurements
    learned = [{k: v for k, v in h.items() if k not in timing | {"skipped_bad_samples"}} for h in in_memory["history"]]
    assert [{k: v for k, v in h.items() if k in learned[0]} for h in from_shards["history"]] == learned
    assert all(h["skipped_bad_samples"] == 0 for h in from_shards["history"])
    assert len(learned) == 2 and learned[1]["loss_pseudo_label"] > 0     # losses, PL-F1, bank counts, mAP: equal
    assert in_memory["rows"][1]["test"]["map_0.1"] > 0
    for name in ("test_proposals_last.json", "test_proposals_best.json"):
        assert hashlib.sha256((tmp_path / "shards" / name).read_bytes()).digest() == \
            hashlib.sha256((tmp_path / "memory" / name).read_bytes()).digest()


def test_cli_bad_input_is_exit_2_and_one_stderr_line_and_writes_nothing(tiny_wtal, shards, tmp_path, capsys):
    args = ["wtal", "shard", "--annotations", str(tiny_wtal / "annotations"), "--dim", str(DIM)]
    assert cli([*args, "--features", str(tiny_wtal / "features"), "--out", str(shards)]) == 2   # exists already
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--overwrite" in err
    assert cli([*args, "--features", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nowhere" in err and not (tmp_path / "out" / "train").exists()
    assert cli([*args, "--features", str(tiny_wtal / "features"), "--out", str(tmp_path / "wide"), "--dim", "32"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "expected (T, 32)" in err and not (tmp_path / "wide" / "train").exists()


@pytest.mark.ray
def test_two_ray_workers_train_from_shards_to_the_in_memory_runs_numbers(ray_local, tiny_wtal, shards, tmp_path):
    ray_run = [*TINY, "distributed.num_workers=2", "distributed.engine=deepspeed", "data.batch_size=2",
               "tracking.mlflow=false"]
    from_shards = train(load_config("thumos14", [f"data.shards={shards}", f"output_dir={tmp_path / 's'}", *ray_run]),
                        mlflow=False)
    in_memory = train(load_config("thumos14", [f"data.annotations={tiny_wtal / 'annotations'}",
                                               f"data.features={tiny_wtal / 'features'}", f"output_dir={tmp_path / 'm'}",
                                               *ray_run]), mlflow=False)
    assert from_shards["rows"] == in_memory["rows"]
    assert [h["loss_total"] for h in from_shards["history"]] == [h["loss_total"] for h in in_memory["history"]]
    assert cli(["evaluate", "--proposals", str(tmp_path / "s" / "test_proposals_last.json"),
                "--annotations", str(tiny_wtal / "annotations"), "--json", str(tmp_path / "scores.json")]) == 0
    assert json.loads((tmp_path / "scores.json").read_text()) == from_shards["rows"][0]["test"]
