"""The extraction front-end: VGGish log-mel against a per-frame oracle, CLAP's log-mel against transformers'
ClapFeatureExtractor and a per-frame oracle, and decoding real and self-encoded clips (odd frame rates, 3 s,
48 kHz beside 16 kHz, no audio, truncated) with the reference sampling rules."""

from __future__ import annotations

import json
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
    assert video.extra_audio == {}  # nothing but 16 kHz unless a backbone asks


def test_real_llp_clip_decodes_48k_beside_an_unchanged_16k():
    root = os.environ.get("PPL_AVVP_LLP_DIR")
    if not root:
        pytest.skip("PPL_AVVP_LLP_DIR is not set")
    path = Path(root) / "sample" / "BjCEufrlXm4.mp4"
    alone, both = decode(path), decode(path, extra_audio_rates=(48_000,))
    np.testing.assert_array_equal(both.audio, alone.audio)  # the 16 kHz numbers do not depend on other rates
    assert len(both.audio) == 160_125 and set(both.extra_audio) == {48_000}
    audio_48k = both.extra_audio[48_000]
    assert audio_48k.dtype == np.float32 and len(audio_48k) == 480_375  # 3 x 160,125: the same 10.008 s
    assert abs(len(audio_48k) - 48_000 * both.seconds) < 0.05 * 48_000
    assert both.seconds == alone.seconds and sampling.num_segments(both.seconds) == 10


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


def _peak_hz(audio: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return float(np.argmax(spectrum) * rate / len(audio))


def test_48k_decode_has_48000_samples_a_second_and_the_tone_where_it_was(tmp_path):
    """sin(0.05 n) at 22.05 kHz is a 175.5 Hz tone: at the right rate its peak stays there."""
    path = _encode(tmp_path / "tone.mp4", 3.0, Fraction(25))
    alone, both = decode(path), decode(path, extra_audio_rates=[48_000, 16_000, 48_000])
    np.testing.assert_array_equal(both.audio, alone.audio)
    assert set(both.extra_audio) == {48_000} and alone.extra_audio == {}
    audio_48k = both.extra_audio[48_000]
    assert abs(len(audio_48k) - 3 * 48_000) < 0.05 * 48_000
    assert abs(len(audio_48k) - 3 * len(both.audio)) <= 3  # the same stretch of time as the 16 kHz track
    tone = 0.05 * 22_050 / (2 * np.pi)
    assert abs(_peak_hz(audio_48k[4800:-4800], 48_000) - tone) < 1.0
    assert abs(_peak_hz(both.audio[1600:-1600], SAMPLE_RATE) - tone) < 1.0


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


# ---------------------------------------------------------------- CLAP log-mel (laion/clap-htsat-unfused)
# preprocessor_config.json of laion/clap-htsat-unfused as published (revision 8fa0f1c6), typed here from the file
PUBLISHED_CLAP_PREPROCESSOR = json.loads("""{
  "chunk_length_s": 10, "feature_extractor_type": "ClapFeatureExtractor", "feature_size": 64,
  "fft_window_size": 1024, "frequency_max": 14000, "frequency_min": 50, "hop_length": 480, "max_length_s": 10,
  "n_fft": 1024, "nb_frequency_bins": 513, "nb_max_frames": 1000, "nb_max_samples": 480000,
  "padding": "repeatpad", "padding_side": "right", "padding_value": 0.0, "processor_class": "ClapProcessor",
  "return_attention_mask": false, "sampling_rate": 48000, "top_db": null, "truncation": "rand_trunc"}""")


def _clap_test_audio(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 48_000)) / 48_000
    chirp = np.sin(2 * np.pi * (300 + 2000 * t) * t)  # energy moves across the mel bands
    return (0.3 * chirp + 0.05 * rng.standard_normal(len(t))).astype(np.float32)


def test_clap_mel_is_transformers_feature_extractor_with_the_published_settings():
    """Each 1-s segment alone through a ClapFeatureExtractor configured from the published file and called with
    its own defaults: the same numbers as ours, so the settings, the segmenting and the padding are right."""
    transformers = pytest.importorskip("transformers")
    settings = {k: v for k, v in PUBLISHED_CLAP_PREPROCESSOR.items()
                if k not in ("feature_extractor_type", "processor_class")}
    reference = transformers.ClapFeatureExtractor(**settings)
    audio = _clap_test_audio(2.6)  # segment 2 holds 0.6 s (used, repeat-padded); segment 3 none (repeats 2)
    ours = logmel.clap_examples(audio, segments=4)
    assert ours.shape == (4, 1001, 64) and ours.dtype == np.float32
    pieces = [audio[:48_000], audio[48_000:96_000], audio[96_000:], audio[96_000:]]
    for k, piece in enumerate(pieces):
        expected = reference(piece, sampling_rate=48_000, return_tensors="np")["input_features"][0, 0]
        np.testing.assert_allclose(ours[k], expected, rtol=0, atol=1e-5)
    assert not np.allclose(ours[0], ours[1], atol=1e-3)
    short = logmel.clap_examples(_clap_test_audio(2.3), segments=3)  # 0.3 s left: segment 2 repeats segment 1
    np.testing.assert_array_equal(short[2], short[1])
    assert logmel.clap_examples(audio, segments=0).shape == (0, 1001, 64)


def _oracle_clap_log_mel(segment: np.ndarray) -> np.ndarray:
    """From the definition, one frame at a time, nothing shared with transformers or logmel.py: repeat the segment
    to fill 10 s (then zeros), centre-pad by reflection, 1024-point periodic Hann every 480 samples, power, Slaney
    mel (librosa's default: linear below 1 kHz, log above; triangles in Hz, area-normalised), dB with a 1e-10 floor."""
    rate, nfft, hop, bands, fmin, fmax, length = 48_000, 1024, 480, 64, 50.0, 14_000.0, 480_000
    x = np.tile(np.asarray(segment, np.float64), length // len(segment))
    x = np.concatenate([x, np.zeros(length - len(x))])
    x = np.pad(x, nfft // 2, mode="reflect")
    hann = np.array([0.5 - 0.5 * np.cos(2 * np.pi * n / nfft) for n in range(nfft)])

    def mel(f):
        return 3.0 * f / 200.0 if f < 1000.0 else 15.0 + 27.0 * np.log(f / 1000.0) / np.log(6.4)

    def hz(m):
        return 200.0 * m / 3.0 if m < 15.0 else 1000.0 * np.exp(np.log(6.4) * (m - 15.0) / 27.0)

    edges = [hz(mel(fmin) + (mel(fmax) - mel(fmin)) * j / (bands + 1)) for j in range(bands + 2)]
    weights = np.zeros((nfft // 2 + 1, bands))
    for b in range(nfft // 2 + 1):
        f = b * (rate / 2) / (nfft // 2)
        for j in range(bands):
            up = (f - edges[j]) / (edges[j + 1] - edges[j])
            down = (edges[j + 2] - f) / (edges[j + 2] - edges[j + 1])
            weights[b, j] = max(0.0, min(up, down)) * 2.0 / (edges[j + 2] - edges[j])
    rows = []
    for start in range(0, len(x) - nfft + 1, hop):
        power = np.abs(np.fft.fft(x[start : start + nfft] * hann)[: nfft // 2 + 1]) ** 2
        rows.append(10.0 * np.log10(np.maximum(power @ weights, 1e-10)))
    return np.array(rows)


def test_clap_mel_matches_per_frame_oracle_from_the_definition():
    pytest.importorskip("transformers")
    audio = _clap_test_audio(2.0, seed=1)
    audio[48_000 + 20_000 : 48_000 + 30_000] = 0.0  # a silent stretch: the 1e-10 floor (-100 dB)
    ours = logmel.clap_examples(audio, segments=2)
    for k in range(2):
        oracle = _oracle_clap_log_mel(audio[48_000 * k : 48_000 * (k + 1)])
        assert oracle.shape == (1001, 64)
        np.testing.assert_allclose(ours[k], oracle, rtol=0, atol=1e-5)
    assert ours[1].min() == pytest.approx(-100.0)
