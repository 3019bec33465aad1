"""Decode one video with PyAV (bundled FFmpeg, no system ffmpeg): 16 kHz mono audio and RGB frames, plus the
audio at any other rate a backbone needs (CLAP: 48 kHz), from the same decoded samples.

Every way a video can be unusable ends in one DataError line naming the file, so a pipeline can
record it in a failures file and go on.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np

from distributed.common.errors import DataError

SAMPLE_RATE = 16_000  # vggish_params.SAMPLE_RATE; the AVVP extract_audio.py writes fps=16000
MIN_SECONDS = 1.0  # shorter than one segment gives T = 0: nothing to extract


@dataclass(frozen=True)
class DecodedVideo:
    """One decoded clip; times are seconds from the container start, as ffmpeg counts them."""

    path: Path
    audio: np.ndarray  # (S,) float32, 16 kHz mono
    frames: np.ndarray  # (n, H, W, 3) uint8 RGB
    times: np.ndarray  # (n,) float64 presentation time of each frame
    durations: np.ndarray  # (n,) float64 display duration of each frame
    fps: float  # the stream's average frame rate
    extra_audio: dict[int, np.ndarray] = field(default_factory=dict)  # rate -> (S_rate,) float32 mono, if asked

    @property
    def seconds(self) -> float:
        """Length both tracks cover: the shorter of audio and video (16 kHz audio: T does not depend on which
        backbones, hence which rates, were chosen)."""
        video_end = float(self.times[-1] + self.durations[-1])
        return min(len(self.audio) / SAMPLE_RATE, video_end)


def decode(path: str | Path, extra_audio_rates: Iterable[int] = ()) -> DecodedVideo:
    """Decode ``path`` whole; raise DataError (one line) when it has no usable audio or video.
    ``extra_audio_rates``: sample rates besides 16 kHz to resample to as well (none unless a backbone asks)."""
    path = Path(path)
    rates = (SAMPLE_RATE, *sorted({int(r) for r in extra_audio_rates} - {SAMPLE_RATE}))
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DataError(f"{path}: no video track")
            if not container.streams.audio:
                raise DataError(f"{path}: no audio track")
            start = container.start_time / av.time_base if container.start_time is not None else 0.0
            frames, times, durations, fps = _decode_video(container, start)
            container.seek(0)
            audio_by_rate = _decode_audio(container, rates)
    except DataError:
        raise
    except (av.FFmpegError, OSError, ValueError) as exc:
        reason = " ".join(str(exc).split())  # FFmpeg messages may hold newlines
        raise DataError(f"{path}: cannot be decoded ({type(exc).__name__}: {reason})") from None
    if len(frames) == 0:
        raise DataError(f"{path}: the video track decodes to no frames")
    audio = audio_by_rate.pop(SAMPLE_RATE)
    if len(audio) == 0:
        raise DataError(f"{path}: the audio track decodes to no samples")
    video = DecodedVideo(path, audio, frames, times, durations, fps, extra_audio=audio_by_rate)
    if video.seconds < MIN_SECONDS:
        raise DataError(f"{path}: shorter than {MIN_SECONDS:g} s ({video.seconds:.2f} s)")
    return video


def _decode_video(container, start: float):
    stream = container.streams.video[0]
    fps = float(stream.average_rate) if stream.average_rate else 0.0
    frames, times, durations = [], [], []
    for frame in container.decode(stream):
        if frame.pts is None:
            continue  # a frame with no timestamp cannot be placed on the 8 fps grid
        frames.append(frame.to_ndarray(format="rgb24"))
        times.append(float(frame.pts * frame.time_base) - start)
        duration = float(frame.duration * frame.time_base) if frame.duration else 0.0
        durations.append(duration if duration > 0 else (1.0 / fps if fps else 0.0))
    shape = frames[0].shape if frames else (0, 0, 3)
    stack = np.stack(frames) if frames else np.zeros((0, *shape), np.uint8)
    return stack, np.asarray(times), np.asarray(durations), fps


def _decode_audio(container, rates: tuple[int, ...]) -> dict[int, np.ndarray]:
    """Resample with libswresample (PyAV's AudioResampler), as the ffmpeg CLI behind moviepy does: the track is
    decoded once and each decoded frame goes to one resampler per rate, so every rate sees the same samples
    and the 16 kHz output is the same whichever other rates are asked for."""
    resamplers = {rate: av.AudioResampler(format="flt", layout="mono", rate=rate) for rate in rates}
    chunks: dict[int, list[np.ndarray]] = {rate: [] for rate in rates}
    for frame in container.decode(container.streams.audio[0]):
        for rate, resampler in resamplers.items():
            chunks[rate].extend(out.to_ndarray().reshape(-1) for out in resampler.resample(frame))
    for rate, resampler in resamplers.items():
        chunks[rate].extend(out.to_ndarray().reshape(-1) for out in resampler.resample(None))
    return {rate: np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)
            for rate, parts in chunks.items()}
