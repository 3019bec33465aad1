"""Backbones behind one small interface: a new one is a class in the registry, not a fork.

A ``Backbone`` says what it writes (``name``: the output folder; ``rows_per_segment`` x ``dim`` per
segment), prepares one decoded video into a compact array on a CPU task (``prepare``: uint8 frames
already resized, or log-mel examples), builds its architecture from the library that maintains it
(``build``), and runs a batch of prepared items (``forward``). An audio backbone names the sample rate it
was trained at (``audio_rate``) and decoding produces that rate too (``extra_audio_rates``). Weights come
only from local files (``weights.load_state``), checked against the sha256 of the published file.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from distributed.common.errors import UserError
from distributed.extract import logmel, sampling
from distributed.extract.decode import SAMPLE_RATE


@dataclass(frozen=True)
class Prepared:
    """What a CPU task hands the models for one video: the picked 8T frames, the 16 kHz waveform, and the
    waveform at each other rate a chosen backbone needs (CLAP: 48 kHz)."""

    frames: np.ndarray  # (8T, H, W, 3) uint8, in time order
    audio: np.ndarray  # (S,) float32, 16 kHz mono
    segments: int  # T
    extra_audio: dict[int, np.ndarray] = field(default_factory=dict)  # rate -> (S_rate,) float32 mono

    def audio_at(self, rate: int) -> np.ndarray:
        """The mono waveform at ``rate`` Hz; a rate nobody asked decoding for is a bug, named here."""
        if rate == SAMPLE_RATE:
            return self.audio
        if rate not in self.extra_audio:
            raise ValueError(f"audio at {rate} Hz was not decoded (have {SAMPLE_RATE}"
                             f"{''.join(f', {r}' for r in sorted(self.extra_audio))}): pass it in extra_audio_rates")
        return self.extra_audio[rate]


@dataclass(frozen=True)
class WeightsFile:
    """A published weights file: its name as published and the sha256 it must have (a prefix when only
    the prefix the file name carries is published, as torch.hub's ``check_hash`` checks)."""

    filename: str
    sha256: str
    url: str


class Backbone:
    """One feature extractor. Subclasses set the class attributes and the four methods."""

    name: str = ""  # output folder and registry key
    dim: int = 0  # feature width
    rows_per_segment: int = 1  # res152 writes 8 rows per second
    weights: tuple[WeightsFile, ...] = ()  # accepted published files, first = the reference's
    audio_rate: int | None = None  # the sample rate ``prepare`` reads (Prepared.audio_at); None: no audio

    def prepare(self, item: Prepared) -> np.ndarray:
        """CPU side: the compact per-video input (kept small: it travels through the object store)."""
        raise NotImplementedError

    def build(self) -> nn.Module:
        """The architecture, randomly initialised (the caller seeds torch, then loads weights)."""
        raise NotImplementedError

    def forward(self, model: nn.Module, x: np.ndarray, device: torch.device) -> torch.Tensor:
        """(items, ...) prepared input of several videos, concatenated -> (items, dim)."""
        raise NotImplementedError

    def items(self, segments: int) -> int:
        """How many prepared items (rows of ``prepare``'s output) one video of T segments gives."""
        return segments * self.rows_per_segment

    def output_shape(self, segments: int) -> tuple[int, int]:
        return (segments * self.rows_per_segment, self.dim)


def _resize_uint8(frames: np.ndarray, size, crop: int | None = None,
                  interpolation: str = "bilinear") -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, 3, h, w) uint8: torchvision's antialiased resize (PIL's filter), then a
    centre crop. ``size`` an int resizes the short side; a pair resizes to exactly (h, w)."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as F

    mode = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC}[interpolation]
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)
    x = F.resize(x, size, interpolation=mode, antialias=True)
    if crop is not None:
        x = F.center_crop(x, [crop, crop])
    return x.contiguous().numpy()


def _normalise(x: np.ndarray, mean, std, device: torch.device) -> torch.Tensor:
    """uint8 (N, 3, ...) -> float in [0, 1] -> (x - mean) / std over the channel axis."""
    t = torch.from_numpy(np.ascontiguousarray(x)).to(device).float().div_(255.0)
    shape = (1, 3) + (1,) * (t.dim() - 2)
    mean_t = torch.tensor(mean, device=device).view(shape)
    std_t = torch.tensor(std, device=device).view(shape)
    return (t - mean_t) / std_t


class VGGishNet(nn.Module):
    """VGGish (Hershey et al. 2017; tensorflow/models research/audioset/vggish ``vggish_slim.py``):
    conv64-pool-conv128-pool-conv256x2-pool-conv512x2-pool, fc 4096-4096-128, ReLU after each layer.

    Written here because no maintained library defines it (docs/extraction.md): PyPI's torchvggish 0.2
    does not import as packaged (undeclared ``soundfile``) and downloads weights in its constructors.
    Parameter names follow that port (``features.<i>``, ``embeddings.<i>``) so its published
    ``vggish-10086976.pth`` loads as is; the flatten is channels-last, as TensorFlow's.
    """

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 1
        for width in (64, "pool", 128, "pool", 256, 256, "pool", 512, 512, "pool"):
            if width == "pool":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(channels, int(width), 3, padding=1), nn.ReLU(inplace=True)]
                channels = int(width)
        self.features = nn.Sequential(*layers)
        self.embeddings = nn.Sequential(nn.Linear(512 * 6 * 4, 4096), nn.ReLU(True), nn.Linear(4096, 4096),
                                        nn.ReLU(True), nn.Linear(4096, 128), nn.ReLU(True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, 1, 96, 64) log-mel
        x = self.features(x).permute(0, 2, 3, 1).reshape(x.shape[0], -1)  # NHWC flatten, as TF
        return self.embeddings(x)


class VGGish(Backbone):
    name, dim, audio_rate = "vggish", 128, SAMPLE_RATE
    weights = (WeightsFile("vggish-10086976.pth", "10086976",
                           "https://github.com/harritaylor/torchvggish/releases/download/v0.1/vggish-10086976.pth"),)

    def prepare(self, item: Prepared) -> np.ndarray:
        return logmel.vggish_examples(item.audio, item.segments)  # (T, 96, 64) float32

    def build(self) -> nn.Module:
        return VGGishNet()

    def forward(self, model, x, device):
        return model(torch.from_numpy(np.ascontiguousarray(x)).to(device).unsqueeze(1))


class ResNet152(Backbone):
    """torchvision's ResNet-152, global-average-pooled 2048-d, one row per picked frame (8 per second)."""

    name, dim, rows_per_segment = "res152", 2048, sampling.FRAMES_PER_SEGMENT
    weights = (
        # pretrainedmodels.resnet152('imagenet') (the reference) loads this file: torchvision's first release
        WeightsFile("resnet152-b121ed2d.pth", "b121ed2d", "https://download.pytorch.org/models/resnet152-b121ed2d.pth"),
        WeightsFile("resnet152-394f9c45.pth", "394f9c45", "https://download.pytorch.org/models/resnet152-394f9c45.pth"),
    )

    def prepare(self, item: Prepared) -> np.ndarray:
        return _resize_uint8(item.frames, sampling.RESNET_RESIZE, sampling.RESNET_CROP)  # (8T, 3, 224, 224)

    def build(self) -> nn.Module:
        from torchvision.models import resnet152

        model = resnet152(weights=None)
        model.fc = nn.Identity()  # the 2048-d pooled features (pretrainedmodels' features + avgpool)
        return model

    def forward(self, model, x, device):
        return model(_normalise(x, sampling.IMAGENET_MEAN, sampling.IMAGENET_STD, device))


class R2Plus1D18(Backbone):
    """torchvision's R(2+1)D-18 (Kinetics-400), one 8-frame clip per second, 512-d after its avgpool."""

    name, dim = "r2plus1d_18", 512
    weights = (WeightsFile("r2plus1d_18-91a641e6.pth", "91a641e6",
                           "https://download.pytorch.org/models/r2plus1d_18-91a641e6.pth"),)

    def prepare(self, item: Prepared) -> np.ndarray:
        small = _resize_uint8(item.frames, [sampling.R2PLUS1D_SIZE, sampling.R2PLUS1D_SIZE])  # (8T, 3, 112, 112)
        clips = sampling.group_segments(small)  # (T, 8, 3, 112, 112)
        return np.ascontiguousarray(clips.transpose(0, 2, 1, 3, 4))  # (T, 3, 8, 112, 112)

    def build(self) -> nn.Module:
        from torchvision.models.video import r2plus1d_18

        model = r2plus1d_18(weights=None)
        model.fc = nn.Identity()
        return model

    def forward(self, model, x, device):
        return model(_normalise(x, sampling.KINETICS_MEAN, sampling.KINETICS_STD, device))


CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP's preprocessing (transformers CLIPImageProcessor)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ClipImage(Backbone):
    """CLIP ViT-B/32 image embedding (transformers' CLIPVisionModelWithProjection), one per second: the
    frame in the middle of the segment's eight (index 8k + 4), resized (bicubic, short side 224), cropped 224.

    Weights: the ``pytorch_model.bin`` of ``openai/clip-vit-base-patch32`` renamed to the file below; the
    text tower's tensors in it are ignored. Its sha256 is not pinned here (docs/extraction.md): pass a
    ``--weights-manifest`` with the hash of the file you downloaded.
    """

    name, dim = "clip_vit_b32", 512
    weights = (WeightsFile("clip-vit-base-patch32.bin", "", "https://huggingface.co/openai/clip-vit-base-patch32"),)
    config: dict = {}  # CLIPVisionConfig overrides (tests use a tiny one)

    def prepare(self, item: Prepared) -> np.ndarray:
        middle = item.frames[sampling.FRAMES_PER_SEGMENT // 2 :: sampling.FRAMES_PER_SEGMENT]
        return _resize_uint8(middle, 224, 224, interpolation="bicubic")  # (T, 3, 224, 224)

    def build(self) -> nn.Module:
        from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

        config = CLIPVisionConfig(projection_dim=self.dim, **self.config)
        return CLIPVisionModelWithProjection(config)

    def forward(self, model, x, device):
        return model(pixel_values=_normalise(x, CLIP_MEAN, CLIP_STD, device)).image_embeds


class ClapAudio(Backbone):
    """CLAP audio embedding (LAION's HTS-AT, unfused; transformers' ClapAudioModelWithProjection), one per
    second: each 1-s segment at 48 kHz repeat-padded to CLAP's 10 s window (``logmel.clap_examples``).

    Weights: the ``pytorch_model.bin`` of ``laion/clap-htsat-unfused`` (the whole ClapModel) renamed to the
    file below; its text tower and logit scales are ignored. No sha256 is pinned (docs/extraction.md): pass
    a ``--weights-manifest`` with the hash of the file you downloaded.
    """

    name, dim, audio_rate = "clap_htsat_unfused", 512, logmel.CLAP_SAMPLE_RATE
    weights = (WeightsFile("clap-htsat-unfused.bin", "", "https://huggingface.co/laion/clap-htsat-unfused"),)
    config: dict = {}  # ClapAudioConfig overrides (tests use a tiny one); the defaults are the unfused HTS-AT

    def prepare(self, item: Prepared) -> np.ndarray:
        return logmel.clap_examples(item.audio_at(self.audio_rate), item.segments)  # (T, 1001, 64) float32

    def build(self) -> nn.Module:
        from transformers import ClapAudioConfig, ClapAudioModelWithProjection

        config = ClapAudioConfig(projection_dim=self.dim, enable_fusion=False, **self.config)
        return ClapAudioModelWithProjection(config)

    def forward(self, model, x, device):
        mel = torch.from_numpy(np.ascontiguousarray(x)).to(device).unsqueeze(1)  # (N, 1, 1001, 64)
        return model(input_features=mel).audio_embeds  # unfused: no is_longer, no random crop


REGISTRY: dict[str, type[Backbone]] = {cls.name: cls for cls in (VGGish, ResNet152, R2Plus1D18, ClipImage, ClapAudio)}
DEFAULT_BACKBONES = ("vggish", "res152", "r2plus1d_18")  # the LLP layout


def extra_audio_rates(chosen: list[Backbone]) -> tuple[int, ...]:
    """The sample rates besides 16 kHz that the chosen backbones read: decoding makes only those."""
    return tuple(sorted({b.audio_rate for b in chosen if b.audio_rate and b.audio_rate != SAMPLE_RATE}))


def get(name: str) -> Backbone:
    """The registered backbone ``name``; one line naming the choices otherwise."""
    if name not in REGISTRY:
        raise UserError(f"--backbones: unknown backbone {name!r} (choose from {', '.join(REGISTRY)})")
    return REGISTRY[name]()
