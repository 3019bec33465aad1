"""The audio front-ends: VGGish's log-mel in NumPy, from its definition (tensorflow/models
research/audioset/vggish), and CLAP's, through transformers' ClapFeatureExtractor (the library that
defines the model) with the settings of ``laion/clap-htsat-unfused``.

VGGish: 16 kHz mono -> 25 ms periodic Hann frames every 10 ms -> |rFFT| (512 points) -> 64 HTK mel bands
125-7500 Hz -> log(x + 0.01) -> 96-frame (0.96 s) examples -> padded or trimmed to T.

CLAP: 48 kHz mono -> one 1-s segment at a time, repeated to CLAP's 10 s window ("repeatpad") -> 1024-point
periodic Hann frames every 480 samples (centred, reflect-padded) -> power -> 64 Slaney mel bands 50-14000 Hz
-> 10 log10(max(x, 1e-10)) dB -> (1001, 64) per segment.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from distributed.extract.decode import SAMPLE_RATE

WINDOW_S = 0.025  # vggish_params.STFT_WINDOW_LENGTH_SECONDS
HOP_S = 0.010  # vggish_params.STFT_HOP_LENGTH_SECONDS
NUM_MEL_BINS = 64  # vggish_params.NUM_MEL_BINS
MEL_MIN_HZ = 125.0  # vggish_params.MEL_MIN_HZ
MEL_MAX_HZ = 7500.0  # vggish_params.MEL_MAX_HZ
LOG_OFFSET = 0.01  # vggish_params.LOG_OFFSET
EXAMPLE_FRAMES = 96  # vggish_params.NUM_FRAMES = EXAMPLE_WINDOW_SECONDS / HOP_S
EXAMPLE_HOP_S = 0.96  # vggish_params.EXAMPLE_HOP_SECONDS: examples touch, they do not start each second


def hz_to_mel(hz):
    """HTK mel scale (mel_features.hertz_to_mel)."""
    return 1127.0 * np.log1p(np.asarray(hz, dtype=np.float64) / 700.0)


def mel_matrix(num_spectrogram_bins: int) -> np.ndarray:
    """(bins, 64) triangles linear in mel; the DC bin gets no weight, as HTK."""
    bin_mel = hz_to_mel(np.linspace(0.0, SAMPLE_RATE / 2, num_spectrogram_bins))
    edges = np.linspace(hz_to_mel(MEL_MIN_HZ), hz_to_mel(MEL_MAX_HZ), NUM_MEL_BINS + 2)
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bin_mel[:, None] - lower) / (center - lower)
    falling = (upper - bin_mel[:, None]) / (upper - center)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights[0] = 0.0
    return weights


def log_mel(audio: np.ndarray) -> np.ndarray:
    """(S,) 16 kHz waveform -> (frames, 64) float64 log-mel, one frame per 10 ms."""
    window = int(round(SAMPLE_RATE * WINDOW_S))  # 400
    hop = int(round(SAMPLE_RATE * HOP_S))  # 160
    fft_length = 1 << (window - 1).bit_length()  # 512: next power of two
    audio = np.asarray(audio, dtype=np.float64)
    if len(audio) < window:
        return np.zeros((0, NUM_MEL_BINS))
    frames = np.lib.stride_tricks.sliding_window_view(audio, window)[::hop]  # (F, 400)
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(window) / window)  # periodic
    magnitude = np.abs(np.fft.rfft(frames * hann, fft_length))  # (F, 257)
    return np.log(magnitude @ mel_matrix(magnitude.shape[1]) + LOG_OFFSET)


def vggish_examples(audio: np.ndarray, segments: int) -> np.ndarray:
    """(S,) waveform -> (T, 96, 64) float32: VGGish's examples, padded or trimmed to T.

    Padding repeats the last whole example (our choice; the reference leaves length to the caller);
    a clip with no whole example is padded with log(0.01), the value of silence.
    """
    if segments < 1:
        return np.zeros((0, EXAMPLE_FRAMES, NUM_MEL_BINS), np.float32)
    spectrogram = log_mel(audio)
    hop = int(round(EXAMPLE_HOP_S / HOP_S))  # 96
    count = max(0, 1 + (len(spectrogram) - EXAMPLE_FRAMES) // hop)
    examples = [spectrogram[k * hop : k * hop + EXAMPLE_FRAMES] for k in range(min(count, segments))]
    if not examples:
        examples = [np.full((EXAMPLE_FRAMES, NUM_MEL_BINS), np.log(LOG_OFFSET))]
    examples += [examples[-1]] * (segments - len(examples))
    return np.stack(examples).astype(np.float32)


# ---------------------------------------------------------------- CLAP (laion/clap-htsat-unfused)
CLAP_SAMPLE_RATE = 48_000  # preprocessor_config.json "sampling_rate" (HTS-AT in LAION-CLAP runs at 48 kHz)
# preprocessor_config.json of laion/clap-htsat-unfused (revision 8fa0f1c6), as ClapFeatureExtractor arguments;
# "rand_trunc" picks the Slaney filter bank, and crops at random only inputs longer than 10 s, which ours never are
CLAP_FEATURES = {"feature_size": 64, "sampling_rate": CLAP_SAMPLE_RATE, "hop_length": 480, "fft_window_size": 1024,
                 "max_length_s": 10, "frequency_min": 50, "frequency_max": 14_000, "top_db": None,
                 "padding_value": 0.0, "padding": "repeatpad", "truncation": "rand_trunc"}
CLAP_FRAMES = 1 + CLAP_FEATURES["max_length_s"] * CLAP_SAMPLE_RATE // CLAP_FEATURES["hop_length"]  # 1001
MIN_SEGMENT_FILL = 0.5  # a segment the clip covers less than half of repeats the previous one


@lru_cache(maxsize=1)
def clap_feature_extractor():
    """transformers' ClapFeatureExtractor built from the settings above: nothing is read from the hub."""
    from transformers import ClapFeatureExtractor

    return ClapFeatureExtractor(**CLAP_FEATURES)


def clap_segments(audio: np.ndarray, segments: int) -> list[np.ndarray]:
    """(S,) 48 kHz waveform -> T one-second pieces: segment k is samples [48000 k, 48000 (k + 1)).

    A segment the clip covers less than half of (``--segments`` beyond the audio) repeats the last one that
    is covered, as VGGish repeats its last example; a clip with no such segment gives what it has, or silence.
    """
    per_segment = CLAP_SAMPLE_RATE
    audio = np.asarray(audio, dtype=np.float32)
    pieces: list[np.ndarray] = []
    for k in range(segments):
        piece = audio[k * per_segment : (k + 1) * per_segment]
        if len(piece) >= MIN_SEGMENT_FILL * per_segment:
            pieces.append(piece)
        elif pieces:
            pieces.append(pieces[-1])
        else:
            pieces.append(piece if len(piece) else np.zeros(per_segment, np.float32))
    return pieces


def clap_examples(audio: np.ndarray, segments: int) -> np.ndarray:
    """(S,) 48 kHz waveform -> (T, 1001, 64) float32 CLAP log-mel, one 10-s window per 1-s segment.

    Each segment goes through transformers' own front end (``ClapFeatureExtractor.__call__``, "repeatpad",
    "rand_trunc"): the segment tiled 10 times to fill 10 s, the Slaney log-mel of that. No input is longer
    than 10 s, so nothing is cropped at random: the same audio always gives the same mel.
    """
    if segments < 1:
        return np.zeros((0, CLAP_FRAMES, CLAP_FEATURES["feature_size"]), np.float32)
    pieces = clap_segments(audio, segments)
    features = clap_feature_extractor()(pieces, sampling_rate=CLAP_SAMPLE_RATE, return_tensors="np")
    mel = np.asarray(features["input_features"], dtype=np.float32)  # (T, 1, 1001, 64)
    return np.ascontiguousarray(mel[:, 0])
