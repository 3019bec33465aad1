"""Tiny videos encoded with PyAV for the extraction tests and bench (mpeg4 + AAC, moving gradients, a tone)."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def encode_clip(path: Path, seconds: float, rate: Fraction = Fraction(12), size: tuple[int, int] = (32, 24),
                audio: bool = True, seed: int = 0) -> Path:
    """Write a clip of ``seconds`` at ``rate`` fps, ``size`` (w, h), with a 22.05 kHz mono tone unless ``audio``
    is False; the picture and the tone depend on ``seed`` so that clips differ."""
    width, height = size
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    with av.open(str(path), "w") as out:
        video = out.add_stream("mpeg4", rate=rate)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        sound = out.add_stream("aac", rate=22_050) if audio else None
        for i in range(int(round(seconds * rate))):
            pixels = np.roll(base, 3 * i, axis=1)
            out.mux(video.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        out.mux(video.encode(None))
        if sound is not None:
            t = np.arange(int(seconds * 22_050)) / 22_050
            samples = (0.3 * np.sin(2 * np.pi * (220 + 40 * seed) * t)).astype(np.float32)
            for start in range(0, len(samples), 1024):
                frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[None, start:start + 1024]),
                                                   format="flt", layout="mono")
                frame.sample_rate, frame.pts = 22_050, start
                out.mux(sound.encode(frame))
            out.mux(sound.encode(None))
    return path
