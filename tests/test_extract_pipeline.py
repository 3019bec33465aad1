"""`ppl-avvp extract` end to end on a real local Ray (127.0.0.1): clips encoded here, --random-init on 2 model
actors, the LLP shapes, finite and deterministic; bad videos in failures.jsonl; resume after kill -9; the
written features train with `ppl-avvp train` unchanged. Needs torchvision (the `extract` venv)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from extract_clips import encode_clip
from local_ray_cluster import ray_machine_lock, stop_cluster

REPO = Path(__file__).resolve().parents[1]
SHAPES = {"vggish": (10, 128), "res152": (80, 2048), "r2plus1d_18": (10, 512)}
# the reruns skip ResNet-152 (minutes on 2 CPU cores); its shape and finiteness are pinned by the first run
CHEAP = ["vggish", "r2plus1d_18"]
pytestmark = pytest.mark.ray


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update({"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"})
    return env


def _extract(*args, **kw) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "distributed.cli", "extract", "--random-init", "--seed", "3", "--quiet", *args]
    with ray_machine_lock():
        return subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=REPO, timeout=900, **kw)


@pytest.fixture(scope="module")
def llp_like(tmp_path_factory):
    """A synthetic LLP annotation set (4 videos) and one 2 s clip per video named <id>_0_10.mp4, plus three bad
    clips; extracted once with --segments 10 on 2 actors."""
    from distributed.data.synth import generate

    root = tmp_path_factory.mktemp("extract")
    generate(root / "llp", n_train=2, n_val=1, n_test=1, seed=0)
    ids = sorted(p.stem for p in (root / "llp" / "features" / "vggish").glob("*.npy"))
    videos = root / "videos"
    videos.mkdir()
    for k, vid in enumerate(ids):
        encode_clip(videos / f"{vid}_0_10.mp4", 2.0, seed=k)
    (videos / "corrupt0000.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 truncated")
    encode_clip(videos / "noaudio0000.mp4", 2.0, audio=False)
    encode_clip(videos / "tooshort000.mp4", 0.5)
    out = root / "features"
    proc = _extract("--videos", str(videos), "--out", str(out), "--segments", "10", "--concurrency", "2",
                    "--batch-size", "2", "--model-cpus", "0.5", "--decode-cpus", "0.5")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root, ids, out, proc


def test_three_backbones_give_llp_shapes_finite_float32(llp_like):
    _, ids, out, proc = llp_like
    assert f"{len(ids)} written, 0 already there, 3 failed" in proc.stdout
    for name, shape in SHAPES.items():
        assert sorted(p.stem for p in (out / name).glob("*.npy")) == ids
        for vid in ids:
            x = np.load(out / name / f"{vid}.npy", allow_pickle=False)
            assert x.shape == shape and x.dtype == np.float32 and np.isfinite(x).all()
    a, b = (np.load(out / "res152" / f"{vid}.npy") for vid in ids[:2])
    assert not np.array_equal(a, b)  # different clips, different features
    assert not list(out.rglob(".*tmp-*"))  # no temp file left


def test_bad_videos_are_recorded_with_their_reason(llp_like):
    _, _, out, _ = llp_like
    rows = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    reasons = {row["id"]: row["reason"] for row in rows}
    assert set(reasons) == {"corrupt0000", "noaudio0000", "tooshort000"}
    assert "cannot be decoded" in reasons["corrupt0000"] and "no audio track" in reasons["noaudio0000"]
    assert "shorter than 1 s" in reasons["tooshort000"]
    assert all("\n" not in r and row["path"] in r for row, r in zip(rows, reasons.values()))
    for name in SHAPES:
        assert not (out / name / "corrupt0000.npy").exists()


def test_same_seed_gives_the_same_features(llp_like, tmp_path):
    root, ids, out, _ = llp_like
    listing = tmp_path / "two.txt"
    listing.write_text(f"{root / 'videos' / (ids[0] + '_0_10.mp4')}\n")
    proc = _extract("--videos", str(listing), "--out", str(tmp_path / "again"), "--segments", "10",
                    "--batch-size", "1", "--model-cpus", "0.5", "--decode-cpus", "0.5", "--backbones", ",".join(CHEAP))
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in CHEAP:
        again, first = np.load(tmp_path / "again" / name / f"{ids[0]}.npy"), np.load(out / name / f"{ids[0]}.npy")
        # same seed, same weights: equal up to float summation order (a batch of 1 here, of 2 in the first run:
        # seen 2.4e-7); a different seed differs by O(1) (tests/test_extract_backbones.py)
        np.testing.assert_allclose(again, first, rtol=1e-5, atol=1e-5)
        assert not np.array_equal(again, np.load(out / name / f"{ids[1]}.npy"))


def test_written_features_train_unchanged(llp_like, tmp_path):
    root, _, out, _ = llp_like
    cmd = [sys.executable, "-m", "distributed.cli", "train", "--config", "base",
           f"data.annotations={root / 'llp' / 'annotations'}", f"data.features={out}", f"output_dir={tmp_path / 'run'}",
           "distributed.num_workers=0", "distributed.engine=torch", "tracking.mlflow=false", "optim.epochs=1",
           "data.batch_size=2", "model.model_dim=64", "model.audio_hidden=32", "model.visual_hidden=64"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results  # the run finished and scored the test split


def test_resume_after_kill_leaves_no_partial_file_and_finishes(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    ids = [f"clip{k:07d}" for k in range(10)]
    for k, vid in enumerate(ids):
        encode_clip(videos / f"{vid}.mp4", 2.0, seed=k)
    out = tmp_path / "out"
    args = ["--videos", str(videos), "--out", str(out), "--batch-size", "1", "--model-cpus", "0.5",
            "--decode-cpus", "0.5", "--backbones", ",".join(CHEAP)]
    cmd = [sys.executable, "-m", "distributed.cli", "extract", "--random-init", "--quiet", *args]
    ray_tmp = tempfile.mkdtemp(prefix="rx", dir="/tmp")  # short: AF_UNIX socket paths; names every Ray process
    with ray_machine_lock():
        proc = subprocess.Popen(cmd, env={**_env(), "RAY_TMPDIR": ray_tmp}, cwd=REPO, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            deadline = time.monotonic() + 600
            while not list((out / "r2plus1d_18").glob("*.npy")) if (out / "r2plus1d_18").is_dir() else True:
                assert proc.poll() is None and time.monotonic() < deadline, "the job ended before writing"
                time.sleep(0.2)
            os.killpg(proc.pid, signal.SIGKILL)  # the driver, its Ray instance and the actors, mid-job
        finally:
            proc.wait()
            stop_cluster(ray_tmp, client_port=-1)  # the Ray daemons that outlive their driver, by pid
            shutil.rmtree(ray_tmp, ignore_errors=True)
    done_before = {p.stem for p in (out / "r2plus1d_18").glob("*.npy")}
    assert 0 < len(done_before) < len(ids)
    for path in out.rglob("*.npy"):  # whatever has a final name is whole
        assert np.load(path, allow_pickle=False).shape[0] > 0
    complete_before = [vid for vid in ids if all((out / n / f"{vid}.npy").exists() for n in CHEAP)]
    second = _extract(*args)
    assert second.returncode == 0, second.stderr[-3000:]
    # an orphaned actor of the killed job may still finish the item it holds (atomically) after the listing
    # above, so the rerun may find more done than listed, never fewer; it finishes everything else
    written, already = map(int, re.search(r"(\d+) written, (\d+) already there", second.stdout).groups())
    assert written + already == len(ids) and already >= len(complete_before) and written >= 1
    assert not (out / "res152").exists()
    for name in CHEAP:
        assert sorted(p.stem for p in (out / name).glob("*.npy")) == ids
    assert not [p for p in out.rglob(".*") if p.is_file() and "tmp-" in p.name]
    assert (out / "failures.jsonl").read_text() == ""


def test_format_shards_writes_a_split_that_verifies(llp_like, tmp_path):
    """--format shards: the features under <out>/features/ (here already extracted: the run skips them, as a
    resumed job would), then the split's WebDataset shards + manifest, which `ppl-avvp shard verify` accepts."""
    root, ids, out, _ = llp_like
    target = tmp_path / "job"
    for name in SHAPES:
        (target / "features" / name).mkdir(parents=True)
        for vid in ids:
            os.link(out / name / f"{vid}.npy", target / "features" / name / f"{vid}.npy")
    proc = _extract("--videos", str(root / "videos"), "--out", str(target), "--segments", "10", "--format", "shards",
                    "--annotations", str(root / "llp" / "annotations"), "--split", "train",
                    "--model-cpus", "0.5", "--decode-cpus", "0.5", "--dtype", "float32")  # random weights: |x| > 65504
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"0 written, {len(ids)} already there, 3 failed" in proc.stdout
    manifest = json.loads((target / "shards" / "train" / "manifest.json").read_text())
    train_ids = [line.split("\t")[0] for line in (root / "llp" / "annotations" / "AVVP_train.csv").read_text()
                 .splitlines()[1:] if line.strip()]
    assert manifest["num_samples"] == len(train_ids) == 2
    verify = subprocess.run([sys.executable, "-m", "distributed.cli", "shard", "verify", str(target / "shards" / "train"),
                             "--deep"], capture_output=True, text=True, env=_env(), cwd=REPO, timeout=300)
    assert verify.returncode == 0, verify.stderr[-2000:]


def test_clap_with_vggish_decodes_48k_and_keeps_the_16k_features(tmp_path):
    """--backbones vggish,clap_htsat_unfused on a real local Ray: the 48 kHz track reaches CLAP (T x 512 per video),
    and VGGish's features equal those computed in-process from the 16 kHz-only decode (the path without CLAP)."""
    import torch

    from distributed.extract import backbones, sampling
    from distributed.extract.backbones import Prepared
    from distributed.extract.decode import decode
    from distributed.extract.weights import build_model

    videos = tmp_path / "videos"
    videos.mkdir()
    clip = encode_clip(videos / "clapclip000.mp4", 2.0, seed=5)
    out = tmp_path / "out"
    proc = _extract("--videos", str(videos), "--out", str(out), "--backbones", "vggish,clap_htsat_unfused",
                    "--batch-size", "1", "--model-cpus", "0.5", "--decode-cpus", "0.5")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "1 written, 0 already there, 0 failed" in proc.stdout
    clap = np.load(out / "clap_htsat_unfused" / "clapclip000.npy", allow_pickle=False)
    assert clap.shape == (2, 512) and clap.dtype == np.float32 and np.isfinite(clap).all()
    assert not np.allclose(clap[0], clap[1])

    video = decode(clip)  # what a run without CLAP decodes: 16 kHz only
    assert video.extra_audio == {}
    count = sampling.num_segments(video.seconds)
    item = Prepared(video.frames[sampling.frame_indices(video.times, video.durations, count)], video.audio, count)
    vggish = backbones.get("vggish")
    with torch.inference_mode():
        expected = vggish.forward(build_model(vggish, None, random_init=True, seed=3), vggish.prepare(item),
                                  torch.device("cpu")).numpy()
    np.testing.assert_allclose(np.load(out / "vggish" / "clapclip000.npy"), expected, rtol=1e-5, atol=1e-5)
