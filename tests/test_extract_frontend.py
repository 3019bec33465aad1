"""The extraction front-end: VGGish log-mel against a per-frame oracle, and decoding real and
self-encoded clips (odd frame rates, 3 s, no audio, truncated) with the reference sampling rules."""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

av = pytest.importorskip("av")

from distributed.common.errors import DataError  # noqa: E402
from distributed.extract import logmel, sampling  # noqa: E402
from distributed.extract.decode import SAMPLE_RATE, decode  # noqa: E402


# ---------------------------------------------------------------- oracle, from the VGGish definition
def _oracle_log_mel(audio: np.ndarray) -> np.ndarray:
    """One 25 ms frame at a time; mel weights bin by bin; nothing shared with logmel.py."""
    window, hop, nfft = 400, 160, 512
    hann = np.array([0.5 - 0.5 * np.cos(2 * np.pi * k / window) for k in range(window)])
    mel = lambda f: 1127.0 * np.log(1.0 + f / 700.0)  # noqa: E731  (HTK)
    lo, hi = mel(125.0), mel(7500.0)
    edges = [lo + (hi - lo) * j / 65 for j in range(66)]
    weights = np.zeros((nfft // 2 + 1, 64))
    for b in range(1, nfft // 2 + 1):  # DC bin stays 0
        m = mel(b * 8000.0 / (nfft // 2))
        for j in range(64):
            up = (m - edges[j]) / (edges[j + 1] - edges[j])
            down = (edges[j + 2] - m) / (edges[j + 2] - edges[j + 1])
            weights[b, j] = max(0.0, min(up, down))
    rows = []
    for start in range(0, len(audio) - window + 1, hop):
        spectrum = np.abs(np.fft.fft(audio[start : start + window] * hann, nfft))[: nfft // 2 + 1]
        rows.append(np.log(spectrum @ weights + 0.01))
    return np.array(rows)


def test_log_mel_matches_per_frame_oracle():
    rng = np.random.default_rng(0)
    t = np.arange(int(2.5 * SAMPLE_RATE)) / SAMPLE_RATE
    audio = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(len(t))
    ours, oracle = logmel.log_mel(audio), _oracle_log_mel(audio)
    assert ours.shape == oracle.shape == (248, 64)  # 1 + (40000 - 400) // 160
    np.testing.assert_allclose(ours, oracle, atol=1e-5, rtol=0)
    examples = logmel.vggish_examples(audio, segments=2)
    assert examples.shape == (2, 96, 64) and examples.dtype == np.float32
    np.testing.assert_allclose(examples[1], oracle[96:192], atol=1e-5, rtol=0)  # hop 0.96 s


def test_vggish_examples_pad_by_repeating_and_trim():
    audio = np.random.default_rng(1).standard_normal(int(1.5 * SAMPLE_RATE)) * 0.1
    padded = logmel.vggish_examples(audio, segments=3)
    assert padded.shape == (3, 96, 64)
    np.testing.assert_array_equal(padded[1], padded[0])  # 1.5 s holds one whole example
    assert logmel.vggish_examples(audio, segments=0).shape == (0, 96, 64)
    silence = logmel.vggish_examples(np.zeros(800, np.float32), segments=1)
    np.testing.assert_allclose(silence, np.log(0.01), rtol=1e-6)


# ---------------------------------------------------------------- sampling rules
def test_pick_frames_is_numpy_round_of_linspace():
    np.testing.assert_array_equal(sampling.pick_frames(82, 80)[18:23], [18, 19, 21, 22, 23])
    np.testing.assert_array_equal(sampling.pick_frames(5, 8), [0, 1, 1, 2, 2, 3, 3, 4])  # half to even
    np.testing.assert_array_equal(sampling.pick_frames(1, 3), [0, 0, 0])


def test_group_segments_gives_eight_consecutive_frames_per_segment():
    grouped = sampling.group_segments(np.arange(24 * 2).reshape(24, 2))
    assert grouped.shape == (3, 8, 2) and grouped[1, 0, 0] == 16
    with pytest.raises(ValueError, match="multiple of 8"):
        sampling.group_segments(np.zeros((9, 2)))


def test_cfr_resample_keeps_a_clip_already_at_8fps():
    times = np.arange(16) / 8
    np.testing.assert_array_equal(sampling.resample_cfr(times, np.full(16, 1 / 8)), np.arange(16))
    slow = sampling.resample_cfr(np.arange(4) / 4, np.full(4, 1 / 4))  # 4 fps -> every frame twice
    assert len(slow) == 8 and sorted(set(slow.tolist())) == [0, 1, 2, 3]


# ---------------------------------------------------------------- decoding, the real LLP clip
def test_real_llp_clip_decodes_with_reference_counts():
    root = os.environ.get("PPL_AVVP_LLP_DIR")
    if not root:
        pytest.skip("PPL_AVVP_LLP_DIR is not set")
    video = decode(Path(root) / "sample" / "BjCEufrlXm4.mp4")
    assert video.frames.shape == (300, 240, 320, 3) and video.frames.dtype == np.uint8
    assert video.fps == pytest.approx(359 / 12)
    assert len(video.audio) == 160_125 and video.audio.dtype == np.float32
    segments = sampling.num_segments(video.seconds)
    assert segments == 10
    at_8fps = sampling.resample_cfr(video.times, video.durations)
    assert len(at_8fps) == 82  # AVVP-ECCV20 ships data/LLP_dataset/frame/BjCEufrlXm4/000001..000082.jpg
    picked = sampling.frame_indices(video.times, video.durations, segments)
    assert len(picked) == 80 and np.all(np.diff(picked) > 0)
    assert picked[:6].tolist() == [0, 1, 3, 7, 10, 14] and picked[-1] == 298
    assert logmel.vggish_examples(video.audio, segments).shape == (10, 96, 64)


# ---------------------------------------------------------------- decoding, clips encoded here
def _encode(path: Path, seconds: float, rate: Fraction, audio: bool = True, video: bool = True) -> Path:
    with av.open(str(path), "w") as out:
        vs = out.add_stream("mpeg4", rate=rate) if video else None
        if vs is not None:
            vs.width, vs.height, vs.pix_fmt = 32, 24, "yuv420p"
        stream_a = out.add_stream("aac", rate=22_050) if audio else None
        if vs is not None:
            for i in range(int(round(seconds * rate))):
                pixels = np.full((24, 32, 3), (i * 7) % 256, np.uint8)
                out.mux(vs.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
            out.mux(vs.encode(None))
        if stream_a is not None:
            samples = np.sin(np.arange(int(seconds * 22_050)) * 0.05).astype(np.float32)
            for start in range(0, len(samples), 1024):
                chunk = samples[None, start : start + 1024]
                frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format="flt", layout="mono")
                frame.sample_rate, frame.pts = 22_050, start
                out.mux(stream_a.encode(frame))
            out.mux(stream_a.encode(None))
    return path


@pytest.mark.parametrize("rate", [Fraction(30000, 1001), Fraction(12)], ids=["29.97fps", "12fps"])
def test_odd_frame_rates_give_8_frames_per_second(tmp_path, rate):
    video = decode(_encode(tmp_path / "odd.mp4", 2.0, rate))
    assert len(video.frames) == round(2.0 * rate) and video.fps == pytest.approx(float(rate))
    segments = sampling.num_segments(video.seconds)
    assert segments == 2
    at_8fps = sampling.resample_cfr(video.times, video.durations)
    assert abs(len(at_8fps) - 16) <= 2  # FFmpeg's CFR sync may lead by up to ~1.1 frames
    picked = sampling.frame_indices(video.times, video.durations, segments)
    assert len(picked) == 16 and np.all(np.diff(picked) >= 0) and picked[-1] >= len(video.frames) - 3


def test_three_second_clip_gives_three_segments(tmp_path):
    video = decode(_encode(tmp_path / "three.mp4", 3.0, Fraction(25)))
    assert len(video.frames) == 75
    assert abs(len(video.audio) - 3 * SAMPLE_RATE) < 0.05 * SAMPLE_RATE
    segments = sampling.num_segments(video.seconds)
    assert segments == 3
    assert sampling.group_segments(sampling.frame_indices(video.times, video.durations, segments)).shape == (3, 8)
    assert logmel.vggish_examples(video.audio, segments).shape == (3, 96, 64)


def _one_line_naming(exc: pytest.ExceptionInfo, path: Path) -> str:
    message = str(exc.value)
    assert "\n" not in message and str(path) in message
    return message


def test_clip_without_audio_is_a_data_error(tmp_path):
    path = _encode(tmp_path / "silent.mp4", 2.0, Fraction(25), audio=False)
    with pytest.raises(DataError) as exc:
        decode(path)
    assert "no audio track" in _one_line_naming(exc, path)


def test_clip_without_video_is_a_data_error(tmp_path):
    path = _encode(tmp_path / "radio.mp4", 2.0, Fraction(25), video=False)
    with pytest.raises(DataError) as exc:
        decode(path)
    assert "no video track" in _one_line_naming(exc, path)


def test_clip_shorter_than_one_second_is_a_data_error(tmp_path):
    path = _encode(tmp_path / "short.mp4", 0.5, Fraction(25))
    with pytest.raises(DataError) as exc:
        decode(path)
    assert "shorter than 1 s" in _one_line_naming(exc, path)


def test_truncated_file_is_a_data_error(tmp_path):
    whole = _encode(tmp_path / "whole.mp4", 2.0, Fraction(25)).read_bytes()
    path = tmp_path / "cut.mp4"
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError) as exc:
        decode(path)
    assert "cannot be decoded" in _one_line_naming(exc, path)
