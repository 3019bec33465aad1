"""Which frames and how many segments: the reference AVVP extractors' rules, in NumPy.

Sources (docs/extraction.md gives each in full): frames come from ``ffmpeg -i V -r 8 %06d.jpg``
(AVVP-ECCV20 ``scripts/extract_frames.py``), then 8T of those are picked with
``np.round(np.linspace(0, n - 1, 8T))`` (``extract_rgb_feat.py``, ``extract_3D_feat.py``,
``n_frame_steps=80``) and R(2+1)D takes them 8 per segment.
"""

from __future__ import annotations

import math

import numpy as np

FRAMES_PER_SECOND = 8  # extract_frames.py: ffmpeg -r 8
FRAMES_PER_SEGMENT = 8  # extract_3D_feat.py: images[i // 8, :, i % 8]

# ResNet-152 (pretrainedmodels.resnet152 + pretrainedmodels.utils.TransformImage, scale 0.875):
# Resize(floor(224 / 0.875) = 256, short side) -> CenterCrop(224) -> [0, 1] -> ImageNet mean/std.
RESNET_RESIZE = 256
RESNET_CROP = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# R(2+1)D-18 (extract_3D_feat.py + its utils.TransformImage): Resize((112, 112)), no crop, aspect
# not kept -> [0, 1] -> Kinetics-400 mean/std (the values torchvision's video models were trained with).
R2PLUS1D_SIZE = 112
KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)

_DROP, _DUP = -1.1, 1.1  # FFmpeg's constant-frame-rate tolerances, in output frames


def num_segments(seconds: float) -> int:
    """T = whole 1-second segments; 10.03 s of video is T = 10, 0.99 s is T = 0."""
    return int(math.floor(seconds + 1e-6))


def resample_cfr(times: np.ndarray, durations: np.ndarray, fps: int = FRAMES_PER_SECOND) -> np.ndarray:
    """Source frame index of every frame ``ffmpeg -r fps`` writes (its CFR video sync).

    Mirrors FFmpeg fftools' VSYNC_CFR: drop a frame more than 1.1 output frames behind, repeat one
    more than 1.1 ahead. On the LLP clip BjCEufrlXm4 this gives the 82 JPEGs the reference repo ships.
    """
    picked: list[int] = []
    next_pts = 0
    for i, (time, duration) in enumerate(zip(times, durations)):
        delta0 = time * fps - next_pts  # how far this frame is ahead of the next output slot
        delta = delta0 + duration * fps
        if delta0 < 0 < delta:  # a frame that starts late but still covers the slot
            delta0 = 0.0
        count, repeats_of_previous = 1, 0
        if delta < _DROP:
            count = 0
        elif delta > _DUP:
            count = int(np.rint(delta))
            if delta0 > _DUP and i > 0:
                repeats_of_previous = int(np.rint(delta0 - 0.6))
        picked += [i - 1] * repeats_of_previous + [i] * (count - repeats_of_previous)
        next_pts += count
    return np.asarray(picked, dtype=np.int64)


def pick_frames(n: int, count: int) -> np.ndarray:
    """``np.round(np.linspace(0, n - 1, count))``: numpy's round-half-to-even, as the reference."""
    if n < 1 or count < 1:
        raise ValueError(f"pick_frames needs n >= 1 and count >= 1, got n={n}, count={count}")
    return np.round(np.linspace(0, n - 1, count)).astype(np.int64)


def frame_indices(times: np.ndarray, durations: np.ndarray, segments: int) -> np.ndarray:
    """Decoded-frame index of each of the 8T frames the backbones see, in time order."""
    at_8fps = resample_cfr(times, durations)
    return at_8fps[pick_frames(len(at_8fps), FRAMES_PER_SECOND * segments)]


def group_segments(frames: np.ndarray) -> np.ndarray:
    """(8T, ...) -> (T, 8, ...): the clip R(2+1)D sees for each 1-second segment."""
    if len(frames) % FRAMES_PER_SEGMENT:
        raise ValueError(f"group_segments needs a multiple of {FRAMES_PER_SEGMENT} frames, got {len(frames)}")
    return frames.reshape(len(frames) // FRAMES_PER_SEGMENT, FRAMES_PER_SEGMENT, *frames.shape[1:])
