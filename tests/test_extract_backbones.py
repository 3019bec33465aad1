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
    audio_48k = (0.1 * rng.standard_normal(48_000 * segments + 1200)).astype(np.float32)
    return Prepared(frames=frames, audio=audio, segments=segments, extra_audio={48_000: audio_48k})


@pytest.mark.parametrize("name", ["vggish", "res152", "r2plus1d_18", "clip_vit_b32", "clap_htsat_unfused"])
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


# ---------------------------------------------------------------- CLAP (transformers' ClapAudioModelWithProjection)
# a small HTS-AT with CLAP's real front end (64 mel bins, spec_size 256: the 1001 frames must fit the 1024-wide input)
TINY_CLAP_AUDIO = {"patch_embeds_hidden_size": 8, "depths": [1, 1], "num_attention_heads": [2, 2], "hidden_size": 16}
TINY_CLAP_TEXT = {"vocab_size": 99, "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                  "intermediate_size": 32, "max_position_embeddings": 40}


@pytest.fixture
def tiny_clap(monkeypatch):
    monkeypatch.setattr(backbones.ClapAudio, "config", TINY_CLAP_AUDIO)
    return backbones.get("clap_htsat_unfused")


def _whole_clap_model(seed: int, **audio):
    """A whole ClapModel (text tower, both projections, logit scales), as laion/clap-htsat-unfused publishes it."""
    from transformers import ClapConfig, ClapModel

    torch.manual_seed(seed)
    config = ClapConfig(audio_config={**TINY_CLAP_AUDIO, **audio}, text_config=TINY_CLAP_TEXT, projection_dim=512)
    return ClapModel(config).eval()


def test_clap_declares_48k_and_only_it_asks_decoding_for_more_than_16k():
    assert backbones.get("clap_htsat_unfused").audio_rate == 48_000 and backbones.get("vggish").audio_rate == 16_000
    assert backbones.extra_audio_rates([backbones.get(n) for n in backbones.DEFAULT_BACKBONES]) == ()
    assert backbones.extra_audio_rates([backbones.get("vggish"), backbones.get("clap_htsat_unfused")]) == (48_000,)
    assert "clap_htsat_unfused" in backbones.REGISTRY and "clap_htsat_unfused" not in backbones.DEFAULT_BACKBONES
    with pytest.raises(ValueError, match="audio at 48000 Hz was not decoded"):
        backbones.get("clap_htsat_unfused").prepare(Prepared(np.zeros((8, 2, 2, 3), np.uint8), np.zeros(16_000,
                                                             np.float32), 1))


def test_clap_gives_one_finite_deterministic_512_d_embedding_per_second(tiny_clap):
    x = tiny_clap.prepare(_item(3))
    assert x.shape == (3, 1001, 64) and x.dtype == np.float32
    np.testing.assert_array_equal(x, tiny_clap.prepare(_item(3)))  # no random crop in the front end
    runs = []
    for seed in (0, 0, 1):
        model = weights.build_model(tiny_clap, None, random_init=True, seed=seed)
        with torch.inference_mode():
            runs.append(tiny_clap.forward(model, x, torch.device("cpu")))
    assert tuple(runs[0].shape) == (3, 512) and torch.isfinite(runs[0]).all()
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)
    assert not torch.allclose(runs[0], runs[2])
    one_by_one = torch.cat([tiny_clap.forward(model, x[k : k + 1], torch.device("cpu")) for k in range(3)])
    torch.testing.assert_close(one_by_one, tiny_clap.forward(model, x, torch.device("cpu")), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(runs[2][0], runs[2][1])  # segments of different audio differ


def test_clap_whole_model_file_loads_into_the_audio_tower(tmp_path, tiny_clap):
    whole = _whole_clap_model(seed=7)
    torch.save(whole.state_dict(), tmp_path / "clap-htsat-unfused.bin")  # text tower and logit scales included
    manifest = _manifest(tmp_path, "clap_htsat_unfused", tmp_path / "clap-htsat-unfused.bin")
    loaded = weights.build_model(tiny_clap, tmp_path, random_init=False, manifest=manifest)
    other = weights.build_model(tiny_clap, None, random_init=True, seed=8)
    x = tiny_clap.prepare(_item(2))
    mel = torch.from_numpy(x).unsqueeze(1)
    with torch.inference_mode():
        expected = whole.audio_projection(whole.audio_model(input_features=mel).pooler_output)  # ClapModel's own path
        ours, random = (tiny_clap.forward(m, x, torch.device("cpu")) for m in (loaded, other))
    torch.testing.assert_close(ours, expected, rtol=0, atol=0)
    assert not torch.allclose(ours, random)


def test_clap_file_without_a_manifest_hash_is_refused(tmp_path, tiny_clap):
    with pytest.raises(UserError) as err:
        weights.build_model(tiny_clap, tmp_path, random_init=False)
    assert (f"{tmp_path / 'clap-htsat-unfused.bin'}: weights file for clap_htsat_unfused not found" in str(err.value)
            and "huggingface.co/laion/clap-htsat-unfused" in str(err.value) and "\n" not in str(err.value))
    torch.save(_whole_clap_model(seed=0).state_dict(), tmp_path / "clap-htsat-unfused.bin")
    with pytest.raises(UserError, match="clap-htsat-unfused.bin: no published sha256 is known for clap_htsat_unfused"):
        weights.build_model(tiny_clap, tmp_path, random_init=False)
    manifest = _manifest(tmp_path, "clap_htsat_unfused", tmp_path / "clap-htsat-unfused.bin", sha="0" * 64)
    with pytest.raises(UserError, match="clap-htsat-unfused.bin: sha256 .* is not the published file's"):
        weights.build_model(tiny_clap, tmp_path, random_init=False, manifest=manifest)


@pytest.mark.parametrize("other", ["fused", "vggish"])
def test_clap_refuses_the_fused_model_and_other_architectures(tmp_path, tiny_clap, other):
    if other == "fused":  # laion/clap-htsat-fused: the same towers plus the fusion layers
        state = _whole_clap_model(seed=0, enable_fusion=True).state_dict()
        message = r"not clap_htsat_unfused weights: \d+ unexpected \(e.g. audio_model.audio_encoder.patch_embed"
    else:
        state = weights.build_model(backbones.get("vggish"), None, random_init=True).state_dict()
        message = r"not clap_htsat_unfused weights: \d+ missing"
    torch.save(state, tmp_path / "w.bin")
    with pytest.raises(UserError, match="w.bin: " + message):
        weights.build_model(tiny_clap, tmp_path, random_init=False,
                            manifest=_manifest(tmp_path, "clap_htsat_unfused", tmp_path / "w.bin"))
