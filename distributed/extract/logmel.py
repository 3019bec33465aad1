"""VGGish's log-mel front-end in NumPy, from its definition (tensorflow/models research/audioset/vggish).

16 kHz mono -> 25 ms periodic Hann frames every 10 ms -> |rFFT| (512 points) -> 64 HTK mel bands
125-7500 Hz -> log(x + 0.01) -> 96-frame (0.96 s) examples -> padded or trimmed to T.
"""

from __future__ import annotations

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
