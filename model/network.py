"""The audio-visual parser (seed §1, Eq. 1-7): projection, aggregation, segment classifier, MMIL.

Layouts: audio (B, T, Da); visual_2d (B, T, D2) pooled or (B, F*T, D2) frames; visual_3d (B, T, D3).
Output features (B, T, M, d) and frame_prob (B, T, M, C), M = 2 with audio first; with
``model.key_instance_head`` also EM-MIL's class-agnostic key_prob (B, T, M).

``model.streams: rgb_flow`` (W-TAL): inputs rgb (B, T, Dr), flow (B, T, Df) in the audio and visual
places. Any preset takes an optional last input ``mask`` (B, T) bool, True = a real segment: padded
segments are never attended to, get zero temporal attention in the MIL pooling and frame_prob 0,
so a video's outputs do not depend on the padding around it. Without a mask nothing changes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.config import NetworkConfig


@dataclass
class ParserOutput:
    features: Tensor        # (B, T, M, d) aggregated segment features f_t^m (Eq. 2-3)
    frame_prob: Tensor      # (B, T, M, C) segment probabilities p_t^m (Eq. 5)
    modality_prob: Tensor   # (B, M, C) video-level P^a, P^v (Eq. 6)
    global_prob: Tensor     # (B, C) video-level P (Eq. 6, attention over modalities)
    key_prob: Tensor | None = None   # (B, T, M) EM-MIL key-instance probability (model.key_instance_head)

    def detach(self) -> "ParserOutput":
        return ParserOutput(*(None if t is None else t.detach() for t in (
            self.features, self.frame_prob, self.modality_prob, self.global_prob, self.key_prob)))

    def float(self) -> "ParserOutput":
        """Every tensor in float32: losses, pseudo-labels and the bank never see a reduced-precision forward."""
        return ParserOutput(*(None if t is None else t.float() for t in (
            self.features, self.frame_prob, self.modality_prob, self.global_prob, self.key_prob)))


def pool_frames(visual_2d: Tensor, num_segments: int) -> Tensor:
    """(B, F*T, D) -> (B, T, D): mean of each segment's frames. Exact before a linear layer."""
    batch, rows, dim = visual_2d.shape
    if rows == num_segments:
        return visual_2d
    if rows % num_segments:
        raise ValueError(f"visual_2d: {rows} frames is not a multiple of num_segments={num_segments}")
    return visual_2d.view(batch, num_segments, rows // num_segments, dim).mean(dim=2)


def _mlp(sizes: list[int], slope: float) -> nn.Sequential:
    """Linear -> LayerNorm -> LeakyReLU per step (Table 1: all layers use Leaky-ReLU)."""
    layers: list[nn.Module] = []
    for d_in, d_out in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(d_in, d_out), nn.LayerNorm(d_out), nn.LeakyReLU(slope)]
    return nn.Sequential(*layers)


class PPLProjection(nn.Module):
    """Phi_a^proj, Phi_v^proj (Eq. 1) as we read Table 1 (docs/method.md#table-1)."""

    def __init__(self, cfg: NetworkConfig):
        super().__init__()
        s = cfg.leaky_relu_slope
        self.audio = _mlp([cfg.audio_dim, cfg.audio_hidden, cfg.model_dim], s)
        self.visual_2d = _mlp([cfg.visual_2d_dim, cfg.visual_hidden], s)
        self.visual_3d = _mlp([cfg.visual_3d_dim, cfg.visual_hidden], s)
        self.visual_fusion = _mlp([2 * cfg.visual_hidden, cfg.visual_hidden, cfg.model_dim], s)

    def forward(self, audio: Tensor, visual_2d: Tensor, visual_3d: Tensor) -> tuple[Tensor, Tensor]:
        visual = torch.cat([self.visual_2d(visual_2d), self.visual_3d(visual_3d)], dim=-1)
        return self.audio(audio), self.visual_fusion(visual)          # (B, T, d) each


class TwoStreamProjection(nn.Module):
    """W-TAL (model.streams=rgb_flow): one projection per I3D stream, RGB in the audio place, flow in the
    visual one. ``han``: a linear layer each (HAN's audio projection); ``ppl``: Linear-LN-LeakyReLU to the
    hidden width, then to d (our reading of Table 1's two-layer heads)."""

    def __init__(self, cfg: NetworkConfig):
        super().__init__()
        if cfg.preset == "han":
            self.rgb, self.flow = nn.Linear(cfg.rgb_dim, cfg.model_dim), nn.Linear(cfg.flow_dim, cfg.model_dim)
        else:
            s = cfg.leaky_relu_slope
            self.rgb = _mlp([cfg.rgb_dim, cfg.visual_hidden, cfg.model_dim], s)
            self.flow = _mlp([cfg.flow_dim, cfg.visual_hidden, cfg.model_dim], s)

    def forward(self, rgb: Tensor, flow: Tensor) -> tuple[Tensor, Tensor]:
        return self.rgb(rgb), self.flow(flow)


class HANProjection(nn.Module):
    """HAN's projections: plain linear layers, 2D and 3D visual features fused by a linear layer."""

    def __init__(self, cfg: NetworkConfig):
        super().__init__()
        self.audio = nn.Linear(cfg.audio_dim, cfg.model_dim)
        self.visual_2d = nn.Linear(cfg.visual_2d_dim, cfg.model_dim)
        self.visual_3d = nn.Linear(cfg.visual_3d_dim, cfg.model_dim)
        self.visual_fusion = nn.Linear(2 * cfg.model_dim, cfg.model_dim)

    def forward(self, audio: Tensor, visual_2d: Tensor, visual_3d: Tensor) -> tuple[Tensor, Tensor]:
        visual = torch.cat([self.visual_2d(visual_2d), self.visual_3d(visual_3d)], dim=-1)
        return self.audio(audio), self.visual_fusion(visual)


def scaled_dot_attention(query: Tensor, keys: Tensor, values: Tensor, scale: float,
                         mask: Tensor | None = None) -> Tensor:
    """Eq. 4: Softmax(f_q F_k^T / scale) F_v over the T segments. (B, T, d) -> (B, T, d).
    ``mask`` (B, T): keys outside it get weight exactly 0."""
    logits = query @ keys.transpose(1, 2) / scale
    if mask is not None:
        logits = logits.masked_fill(~mask[:, None, :], float("-inf"))
    return torch.softmax(logits, dim=-1) @ values


class PPLAggregation(nn.Module):
    """Eq. 2-3: f_t^m = f^_t^m + Att(f^_t^m, F^m, F^m) + Att(f^_t^m, F^m', F^m'). No parameters."""

    def __init__(self, cfg: NetworkConfig):
        super().__init__()
        self.scale = float(cfg.model_dim) if cfg.attention_scale == "d" else math.sqrt(cfg.model_dim)

    def forward(self, audio: Tensor, visual: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        def att(q, kv):
            return scaled_dot_attention(q, kv, kv, self.scale, mask)
        audio_out = audio + att(audio, audio) + att(audio, visual)
        visual_out = visual + att(visual, visual) + att(visual, audio)
        return audio_out, visual_out


class HANLayer(nn.Module):
    """HAN's hybrid attention: self- and cross-modal attention, residual + LayerNorm, then an FFN."""

    def __init__(self, cfg: NetworkConfig):
        super().__init__()
        d = cfg.model_dim
        self.self_attn = nn.MultiheadAttention(d, cfg.han_heads, dropout=cfg.dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(d, cfg.han_heads, dropout=cfg.dropout, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(d, cfg.han_ffn_dim), nn.ReLU(), nn.Dropout(cfg.dropout),
                                 nn.Linear(cfg.han_ffn_dim, d))
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.dropout_self, self.dropout_cross, self.dropout_ffn = (nn.Dropout(cfg.dropout) for _ in range(3))

    def forward(self, query: Tensor, other: Tensor, mask: Tensor | None = None) -> Tensor:
        padding = None if mask is None else ~mask               # (B, T) True = ignore this key
        cross = self.cross_attn(query, other, other, key_padding_mask=padding, need_weights=False)[0]
        own = self.self_attn(query, query, query, key_padding_mask=padding, need_weights=False)[0]
        x = self.norm1(query + self.dropout_cross(cross) + self.dropout_self(own))
        return self.norm2(x + self.dropout_ffn(self.ffn(x)))


class HANAggregation(nn.Module):
    def __init__(self, cfg: NetworkConfig):
        super().__init__()
        self.layer = HANLayer(cfg)   # shared by both modalities, as in HAN

    def forward(self, audio: Tensor, visual: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if mask is None:
            return self.layer(audio, visual), self.layer(visual, audio)
        return self.layer(audio, visual, mask), self.layer(visual, audio, mask)


class AttentiveMMIL(nn.Module):
    """Segment classifier (Eq. 5) and attentive multimodal MIL pooling (Eq. 6)."""

    def __init__(self, cfg: NetworkConfig):
        super().__init__()
        self.classifier = nn.Linear(cfg.model_dim, cfg.num_classes)          # Phi_c
        self.temporal_attention = nn.Linear(cfg.model_dim, cfg.num_classes)  # w_t^m
        self.modality_attention = nn.Linear(cfg.model_dim, cfg.num_classes)  # w^m

    def forward(self, features: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        frame_prob = torch.sigmoid(self.classifier(features))                       # (B, T, M, C)  Eq. 5
        temporal_logits = self.temporal_attention(features)
        if mask is not None:   # padded segments: no attention, probability 0
            padded = ~mask[:, :, None, None]
            temporal_logits = temporal_logits.masked_fill(padded, float("-inf"))
            frame_prob = frame_prob.masked_fill(padded, 0.0)
        temporal_w = torch.softmax(temporal_logits, dim=1)                          # over T
        modality_w = torch.softmax(self.modality_attention(features), dim=2)        # over M
        modality_prob = (temporal_w * frame_prob).sum(dim=1)                        # (B, M, C)  Eq. 6
        # HAN's pooling weighs each modality's temporal softmax by a per-segment modality softmax; the weights
        # do not sum to 1 over (t, m) (up to M where the modalities attend to different segments), and trained
        # models exceed 1 for about half their positive classes. Capped at 1: it is read as a probability
        # (evaluation, `ppl-avvp evaluate`), and the BCE, clamped at 1 - eps, gives the same loss and gradient.
        global_prob = (temporal_w * modality_w * frame_prob).sum(dim=(1, 2)).clamp(max=1.0)   # (B, C)
        return frame_prob, modality_prob, global_prob


class KeyInstanceHead(nn.Module):
    """EM-MIL's class-agnostic key-instance model (Luo et al. 2020), one per modality as the authors keep one
    per stream (RGB, flow): hidden 256 -> ReLU -> 1 -> sigmoid. The authors' version is a separate network
    trained only by the E-step, so here it reads the shared features detached: its loss never shapes the parser.
    Position-wise (the authors' first layer is a kernel-3 temporal conv; our features already carry Eq. 2-3's
    temporal context)."""

    hidden = 256   # the authors' width

    def __init__(self, cfg: NetworkConfig, num_modalities: int = 2):
        super().__init__()
        self.heads = nn.ModuleList(nn.Sequential(nn.Linear(cfg.model_dim, self.hidden), nn.ReLU(),
                                                 nn.Linear(self.hidden, 1)) for _ in range(num_modalities))

    def forward(self, features: Tensor) -> Tensor:
        features = features.detach()                                              # (B, T, M, d)
        logits = [head(features[:, :, m]) for m, head in enumerate(self.heads)]   # M x (B, T, 1)
        return torch.sigmoid(torch.cat(logits, dim=-1))                           # (B, T, M)


class AudioVisualParser(nn.Module):
    """Projection -> aggregation -> classifier + MMIL. The ``preset`` picks HAN's or our PPL blocks."""

    def __init__(self, cfg: NetworkConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        if cfg.streams == "rgb_flow":
            self.projection = TwoStreamProjection(cfg)
        else:
            self.projection = PPLProjection(cfg) if cfg.preset == "ppl" else HANProjection(cfg)
        self.aggregation = PPLAggregation(cfg) if cfg.preset == "ppl" else HANAggregation(cfg)
        self.mmil = AttentiveMMIL(cfg)
        self.key_instance = KeyInstanceHead(cfg) if cfg.key_instance_head else None

    def forward(self, *inputs: Tensor) -> ParserOutput:
        """(audio, visual_2d, visual_3d) or, with model.streams=rgb_flow, (rgb, flow); optionally + mask (B, T)."""
        n = 2 if self.cfg.streams == "rgb_flow" else 3
        if len(inputs) not in (n, n + 1):
            raise ValueError(f"model.streams={self.cfg.streams}: expected {n} inputs (+ an optional mask), "
                             f"got {len(inputs)}")
        mask = inputs[n].bool() if len(inputs) > n else None   # (no `mask.all()` shortcut: a host sync per forward)
        if n == 2:
            audio_hat, visual_hat = self.projection(*inputs[:2])                # RGB, flow
        else:
            audio, visual_2d, visual_3d = inputs[:3]
            visual_2d = pool_frames(visual_2d, audio.shape[1])
            audio_hat, visual_hat = self.projection(audio, visual_2d, visual_3d)   # Eq. 1
        if mask is None:
            audio_agg, visual_agg = self.aggregation(audio_hat, visual_hat)         # Eq. 2-3
        else:
            audio_agg, visual_agg = self.aggregation(audio_hat, visual_hat, mask)
        features = torch.stack([audio_agg, visual_agg], dim=2)                  # (B, T, M, d)
        frame_prob, modality_prob, global_prob = self.mmil(features, mask)
        key_prob = self.key_instance(features) if self.key_instance is not None else None
        return ParserOutput(features, frame_prob, modality_prob, global_prob, key_prob)
