"""The feature side of ``ppl-avvp synth``: vggish / res152 / r2plus1d arrays from dense layouts.

Each modality has a 64-d latent "semantic" space; a fixed random map (orthogonal rows) turns it
into each stream's features, so, as with real CNN embeddings, class evidence is strong in a few
directions rather than spread thin over 2,048 noisy ones. One "world" per seed fixes a random unit
latent direction per class and modality, 8 unlabelled "distractor" directions, the maps and the
stream means. Per video and segment t (latent sd ``noise``):

* audio (vggish) = mean + map_a(z_a) + per-dimension noise, z_a = scene_a + sum over classes
  *heard* at t of strength x direction + distractors (each on 10% of seconds) + segment noise.
  Strength = ``signal`` x per-video jitter (log-normal, sd 0.3) x per-segment jitter (sd 0.2);
  scene = a per-video random vector (sd 0.7 x noise) plus ``context`` x the directions of all classes
  heard anywhere in the video (the background seconds of a dog video still look a little like dog).
* res152 = relu(mean + 0.3 x (map_2(z_v + per-frame class jitter and latent noise) + per-dimension
  noise)) for each of the F frames of a segment: non-negative like post-ReLU CNN features, frames of
  one segment share the segment's latent; z_v is built like z_a from the classes *seen* at t, with
  1.5 x the strength (real visual features are strong).
* r2plus1d = relu(mean + 0.3 x map_3(z_v + its own noise, with the class signal smoothed over the
  neighbouring seconds as a clip-level 3D CNN sees it)): shares res152's latent, so it is correlated
  with res152's class signal.
* Audio features carry only audio events and visual features only visual events: a model that
  ignores the modality is wrong on audio-only and visual-only events (Speech is heard in 98% of the
  videos labelled with it but seen in 22%).

Difficulty knobs: ``signal`` (default 3.0), ``noise`` (default 1.0), ``context`` (default 0.25).
With the defaults, the PPL-preset parser trained with the MIL loss only (Adam 3e-4, batch 16) on 1,000
videos reaches about 55-60% segment-level F1 (A, V, AV, LLP protocol) on 300 val videos after 4-6
epochs (about 37% at ``signal`` 2.0); HAN with its per-modality losses gets about A 58 / V 55 / AV 50,
close to HAN's published LLP numbers. Raise ``signal`` or lower ``noise``/``context`` for an easier set.
"""
from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
import math
from dataclasses import dataclass

import numpy as np

from distributed.common.errors import ConfigError
from distributed.data.features import FeatureSpec

RNG_WORLD = 5   # the world's seed purpose word: synth.py's per-video purposes are 1-4


@dataclass(frozen=True)
class SynthParams:
    """Difficulty knobs of the feature model (see the module docstring)."""

    signal: float = 3.0      # class strength along its latent direction, in units of the noise sd
    noise: float = 1.0       # sd of the per-segment noise (scene and frame noise scale with it)
    context: float = 0.25    # share of each present class's signal added to every second of the video

    def validate(self) -> "SynthParams":
        if not (math.isfinite(self.signal) and self.signal >= 0):
            raise ConfigError(f"signal: must be a finite number >= 0, got {self.signal!r}")
        if not (math.isfinite(self.noise) and self.noise > 0):
            raise ConfigError(f"noise: must be a finite number > 0, got {self.noise!r}")
        if not (math.isfinite(self.context) and 0 <= self.context <= 1):
            raise ConfigError(f"context: must be in [0, 1], got {self.context!r}")
        return self


# fixed shape constants of the feature model (documented in the module docstring)
LATENT_DIM = 64             # dimension of each modality's latent "semantic" space
_SCENE_SD = 0.7          # per-video scene vector (latent), x noise
_VIDEO_JITTER = 0.3      # log-normal sd of a class's strength per video and modality
_SEGMENT_JITTER = 0.2    # ... per audio segment / per visual frame
_FRAME_NOISE = 0.5       # res152 per-frame latent noise sd, x noise (a segment's 8 frames share the rest)
_FEATURE_NOISE = 0.5     # per-dimension noise of every stream, relative to its latent-driven sd
_VISUAL_SCALE = 0.3      # visual streams: relu(mean + scale * (latent map + feature noise))
_OWN_3D_NOISE = 0.5      # r2plus1d's own latent noise on top of the shared visual latent, x noise
_DISTRACTORS = 8         # unlabelled event directions per modality
_DISTRACTOR_RATE = 0.1   # chance a distractor is on in a segment
_DISTRACTOR_GAIN = 0.7   # strength relative to signal
_SMOOTH_3D = (0.15, 0.7, 0.15)  # r2plus1d sees its neighbours' seconds
_VISUAL_GAIN = 1.5       # visual class strength relative to audio (real visual features are strong)


def single_threaded_blas():
    """Our thread pool parallelises over videos; BLAS threads on top of it only contend (10-50x
    slower small matmuls on a busy machine). Results do not depend on BLAS's thread count."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional: only speed depends on it
        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


def write_videos(write_one, videos, threads: int) -> int:
    """``write_one(video) -> bytes written`` for every video, on ``threads`` threads with single-threaded BLAS
    (each video draws from its own RNG, so the files do not depend on the thread count). Total bytes."""
    with single_threaded_blas():
        if threads == 1:
            return sum(map(write_one, videos))
        with ThreadPoolExecutor(max_workers=threads) as pool:
            return sum(pool.map(write_one, videos))


def unit_rows(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def latent_embedding(rng: np.random.Generator, dim: int) -> np.ndarray:
    """(LATENT, dim) map with orthogonal rows, scaled so a unit-variance latent gives unit-variance
    features (a latent direction keeps its norm up to sqrt(dim / LATENT))."""
    if dim >= LATENT_DIM:
        q, _ = np.linalg.qr(rng.standard_normal((dim, LATENT_DIM)))
        return (q.T * math.sqrt(dim / LATENT_DIM)).astype(np.float32)
    return (rng.standard_normal((LATENT_DIM, dim)) / math.sqrt(LATENT_DIM)).astype(np.float32)


class World:
    """Everything fixed per seed: latent class / distractor directions, the latent-to-feature maps
    of the three streams and their mean vectors."""

    def __init__(self, seed: int, spec: FeatureSpec, num_classes: int):
        with single_threaded_blas():
            self._build(seed, spec, num_classes)

    def _build(self, seed: int, spec: FeatureSpec, num_classes: int) -> None:
        rng = np.random.default_rng(np.random.SeedSequence([seed, 0, 0, RNG_WORLD, 0]))
        self.class_a = unit_rows(rng.standard_normal((num_classes, LATENT_DIM)))
        self.class_v = unit_rows(rng.standard_normal((num_classes, LATENT_DIM)))
        self.dis_a = unit_rows(rng.standard_normal((_DISTRACTORS, LATENT_DIM)))
        self.dis_v = unit_rows(rng.standard_normal((_DISTRACTORS, LATENT_DIM)))
        self.map_a = latent_embedding(rng, spec.audio_dim)
        self.map_2 = latent_embedding(rng, spec.visual_2d_dim)
        self.map_3 = latent_embedding(rng, spec.visual_3d_dim)
        self.mean_a = (0.5 * rng.standard_normal(spec.audio_dim)).astype(np.float32)
        self.mean_2 = rng.gamma(2.0, 0.25, spec.visual_2d_dim).astype(np.float32)
        self.mean_3 = rng.gamma(2.0, 0.25, spec.visual_3d_dim).astype(np.float32)


def video_features(world: World, rng: np.random.Generator, audio: np.ndarray, visual: np.ndarray,
                    spec: FeatureSpec, params: SynthParams, frames: int, pool: bool
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One video's (vggish, res152, r2plus1d) float32 arrays from its dense (T, C) masks."""
    f32 = np.float32
    t, c = audio.shape
    sig, noise, ctx = f32(params.signal), f32(params.noise), f32(params.context)
    normal = rng.standard_normal
    feat_sd = f32(_FEATURE_NOISE) * noise

    # --- audio latent: only the events heard
    strength_a = sig * np.exp(f32(_VIDEO_JITTER) * normal(c, dtype=f32))                   # (C,)
    amp_a = audio * strength_a * np.exp(f32(_SEGMENT_JITTER) * normal((t, c), dtype=f32))  # (T, C)
    z_a = noise * normal((t, LATENT_DIM), dtype=f32)
    z_a += f32(_SCENE_SD) * noise * normal(LATENT_DIM, dtype=f32)
    z_a += (ctx * strength_a * audio.any(0)).astype(f32) @ world.class_a
    z_a += amp_a.astype(f32) @ world.class_a
    on = rng.random((t, _DISTRACTORS)) < _DISTRACTOR_RATE
    z_a += (on * f32(_DISTRACTOR_GAIN) * sig).astype(f32) @ world.dis_a
    x_a = feat_sd * normal((t, spec.audio_dim), dtype=f32)
    x_a += z_a @ world.map_a
    x_a += world.mean_a

    # --- visual latent: only the events seen; per frame for res152
    strength_v = f32(_VISUAL_GAIN) * sig * np.exp(f32(_VIDEO_JITTER) * normal(c, dtype=f32))
    amp_f = (visual[:, None, :] * strength_v
             * np.exp(f32(_SEGMENT_JITTER) * normal((t, frames, c), dtype=f32))).astype(f32)  # (T, F, C)
    z_v = noise * normal((t, LATENT_DIM), dtype=f32)                                          # (T, L)
    z_v += f32(_SCENE_SD) * noise * normal(LATENT_DIM, dtype=f32)
    z_v += (ctx * strength_v * visual.any(0)).astype(f32) @ world.class_v
    on = rng.random((t, _DISTRACTORS)) < _DISTRACTOR_RATE
    z_v += (on * f32(_DISTRACTOR_GAIN) * sig).astype(f32) @ world.dis_v
    z_f = f32(_FRAME_NOISE) * noise * normal((t, frames, LATENT_DIM), dtype=f32)
    z_f += z_v[:, None, :]
    z_f += (amp_f.reshape(t * frames, c) @ world.class_v).reshape(t, frames, LATENT_DIM)
    x_2 = feat_sd * normal((t * frames, spec.visual_2d_dim), dtype=f32)
    x_2 += z_f.reshape(t * frames, LATENT_DIM) @ world.map_2
    x_2 *= f32(_VISUAL_SCALE)
    x_2 += world.mean_2
    np.maximum(x_2, 0, out=x_2)
    if pool:
        x_2 = x_2.reshape(t, frames, -1).mean(axis=1, dtype=f32)

    # --- r2plus1d: the same visual latent, its class signal smoothed over neighbouring seconds
    amp_3 = amp_f.mean(axis=1)
    if t > 1:
        k0, k1, k2 = (f32(w) for w in _SMOOTH_3D)
        smooth = k1 * amp_3
        smooth[1:] += k0 * amp_3[:-1]
        smooth[:-1] += k2 * amp_3[1:]
        amp_3 = smooth
    z_3 = f32(_OWN_3D_NOISE) * noise * normal((t, LATENT_DIM), dtype=f32)
    z_3 += z_v
    z_3 += amp_3 @ world.class_v
    x_3 = feat_sd * normal((t, spec.visual_3d_dim), dtype=f32)
    x_3 += z_3 @ world.map_3
    x_3 *= f32(_VISUAL_SCALE)
    x_3 += world.mean_3
    np.maximum(x_3, 0, out=x_3)
    return (np.ascontiguousarray(x_a, dtype=f32), np.ascontiguousarray(x_2, dtype=f32),
            np.ascontiguousarray(x_3, dtype=f32))
