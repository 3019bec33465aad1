"""Backbones and their weights (no Ray): the interface's shapes, a weights round trip through the real
loader, and every way a weights file can be wrong as one line naming it. Needs torchvision."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from distributed.common.errors import UserError
from distributed.common.fsutil import sha256_file
from distributed.extract import backbones, weights
from distributed.extract.backbones import Prepared

REPO = Path(__file__).resolve().parents[1]


def _item(segments: int = 2, seed: int = 0) -> Prepared:
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (8 * segments, 24, 32, 3), dtype=np.uint8)
    audio = (0.1 * rng.standard_normal(16_000 * segments + 400)).astype(np.float32)
    return Prepared(frames=frames, audio=audio, segments=segments)


@pytest.mark.parametrize("name", ["vggish", "res152", "r2plus1d_18", "clip_vit_b32"])
def test_backbone_prepares_and_runs_to_its_declared_shape(name):
    backbone = backbones.get(name)
    model = weights.build_model(backbone, None, random_init=True, seed=0)
    x = backbone.prepare(_item())
    assert len(x) == backbone.items(2)
    with torch.inference_mode():
        y = backbone.forward(model, x, torch.device("cpu"))
    assert tuple(y.reshape(-1, backbone.dim).shape) == backbone.output_shape(2)
    assert torch.isfinite(y).all()


def test_unknown_backbone_names_the_choices():
    with pytest.raises(UserError, match="unknown backbone 'resnet9'.*vggish"):
        backbones.get("resnet9")


def _manifest(tmp_path: Path, name: str, path: Path, sha: str | None = None) -> dict:
    file = tmp_path / "weights.json"
    file.write_text(json.dumps({name: {"file": path.name, "sha256": sha or sha256_file(path)}}))
    return weights.read_manifest(file)


@pytest.mark.parametrize("name", ["vggish", "r2plus1d_18"])
def test_weights_round_trip_through_the_real_loader(tmp_path, name):
    backbone = backbones.get(name)
    trained = weights.build_model(backbone, None, random_init=True, seed=7)
    torch.save(trained.state_dict(), tmp_path / "mine.pth")
    loaded = weights.build_model(backbone, tmp_path, random_init=False, manifest=_manifest(tmp_path, name, tmp_path / "mine.pth"))
    other = weights.build_model(backbone, None, random_init=True, seed=8)
    x = backbone.prepare(_item(1))
    with torch.inference_mode():
        a, b, c = (backbone.forward(m, x, torch.device("cpu")) for m in (trained, loaded, other))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, c)  # the loaded weights, not a re-seeded copy, made the outputs


def test_missing_weights_file_is_one_line_naming_it(tmp_path):
    with pytest.raises(UserError) as err:
        weights.build_model(backbones.get("r2plus1d_18"), tmp_path, random_init=False)
    assert str(tmp_path / "r2plus1d_18-91a641e6.pth") in str(err.value) and "\n" not in str(err.value)


def test_published_file_name_with_other_bytes_fails_its_hash(tmp_path):
    path = tmp_path / "r2plus1d_18-91a641e6.pth"
    torch.save({"w": torch.zeros(1)}, path)
    with pytest.raises(UserError, match=f"{path}: sha256 .* is not the published file's \\(91a641e6"):
        weights.build_model(backbones.get("r2plus1d_18"), tmp_path, random_init=False)


def test_pickled_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "ran"

    class Planted:
        def __reduce__(self):
            return (Path.touch, (marker,))

    path = tmp_path / "evil.pth"
    torch.save({"w": Planted()}, path)
    with pytest.raises(UserError, match=f"{path}: not a tensor-only torch file"):
        weights.build_model(backbones.get("vggish"), tmp_path, random_init=False,
                            manifest=_manifest(tmp_path, "vggish", path))
    assert not marker.exists()


def test_weights_of_another_architecture_are_refused(tmp_path):
    torch.save(weights.build_model(backbones.get("vggish"), None, random_init=True).state_dict(), tmp_path / "v.pth")
    with pytest.raises(UserError, match=r"v.pth: not r2plus1d_18 weights: \d+ missing"):
        weights.build_model(backbones.get("r2plus1d_18"), tmp_path, random_init=False,
                            manifest=_manifest(tmp_path, "r2plus1d_18", tmp_path / "v.pth"))


def test_vggish_parameter_names_match_the_published_port():
    state = backbones.VGGishNet().state_dict()
    assert tuple(state["features.0.weight"].shape) == (64, 1, 3, 3)
    assert tuple(state["embeddings.0.weight"].shape) == (4096, 512 * 6 * 4)
    assert tuple(state["embeddings.4.weight"].shape) == (128, 4096)
    assert len(state) == 2 * (6 + 3)  # six convolutions, three linear layers


def test_cli_missing_weights_is_one_line_exit_2_and_writes_nothing(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    proc = subprocess.run([sys.executable, "-m", "distributed.cli", "extract", "--videos", str(videos),
                           "--out", str(tmp_path / "out"), "--weights-dir", str(tmp_path / "w")],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "vggish-10086976.pth" in lines[0] and "not found" in lines[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, message", [
    (["--format", "shards"], "--format shards: needs --annotations"),
    (["--backbones", "vggish,nope"], "unknown backbone 'nope'"),
    (["--segments", "0"], "expected a segment count >= 1"),
])
def test_cli_bad_flags_are_one_line(tmp_path, args, message):
    videos = tmp_path / "v"
    videos.mkdir()
    rc = subprocess.run([sys.executable, "-m", "distributed.cli", "extract", "--videos", str(videos), "--out",
                         str(tmp_path / "o"), "--random-init", *args], capture_output=True, text=True, cwd=REPO)
    assert rc.returncode == 2 and message in rc.stderr and len(rc.stderr.strip().splitlines()) == 1
