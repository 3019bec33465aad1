"""Prototype bank (DESIGN §3.3, our reconstruction of the main paper's Sec. 4).

Per modality m and class c, K unit-norm prototypes; class index C is the background. With
``background: negatives`` each class also has a negative prototype (M, C, d): the mean feature of
segments from videos whose weak label lacks the class — certain negatives, so the "not c" side of
a pseudo-label never feeds on the model's own guesses.
An update is split in two so the distributed layer can all-reduce in between:
``collect`` packs per-(m, c, k) feature sums and counts into ONE flat buffer, a reducer
(identity, or an all-reduce SUM across ranks) combines buffers, ``apply`` blends the means
into the bank. Every rank applying the same reduced buffer keeps the bank identical everywhere.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.config import PPLConfig

Reducer = Callable[[Tensor], Tensor]


def identity_reducer(buffer: Tensor) -> Tensor:
    return buffer


def select_key_segments(frame_prob: Tensor, weak_labels: Tensor, cfg: PPLConfig) -> Tensor:
    """Which segments feed which prototype: (B, T, M, C+1) bool, last index = background.

    Class c, modality m: the top-``key_top_k`` segments over time by the momentum model's
    probability, if c is in the video's weak label and the probability >= ``key_min_prob``.
    Background: among segments where every labelled class is < ``background_max_prob``, the
    ``background_top_k`` least confident ones per (video, modality).
    """
    batch, steps, mods, classes = frame_prob.shape
    labelled = weak_labels.bool()[:, None, None, :]                           # (B, 1, 1, C)
    k = min(cfg.key_top_k, steps)
    top_idx = frame_prob.topk(k, dim=1).indices                               # (B, k, M, C)
    is_top = torch.zeros_like(frame_prob, dtype=torch.bool).scatter_(1, top_idx, True)
    keys = is_top & labelled & (frame_prob >= cfg.key_min_prob)
    background = torch.zeros(batch, steps, mods, 1, dtype=torch.bool, device=frame_prob.device)
    if cfg.background == "low_confidence":
        labelled_prob = frame_prob.masked_fill(~labelled, 0.0).amax(dim=-1)   # (B, T, M)
        candidate = labelled_prob < cfg.background_max_prob
        kb = min(cfg.background_top_k, steps)
        order = labelled_prob.masked_fill(~candidate, float("inf")).topk(kb, dim=1, largest=False).indices
        chosen = torch.zeros_like(candidate).scatter_(1, order, True) & candidate
        background = chosen.unsqueeze(-1)
    return torch.cat([keys, background], dim=-1)


class PrototypeBank(nn.Module):
    """Buffers: ``prototypes`` (M, C+1, K, d) unit norm; ``initialized`` (M, C+1, K) bool."""

    def __init__(self, num_classes: int, dim: int, prototypes_per_class: int = 1, momentum: float = 0.99,
                 num_modalities: int = 2, seed: int = 0, center: bool = False):
        super().__init__()
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"bank_momentum: must be in [0, 1), got {momentum!r}")
        generator = torch.Generator().manual_seed(seed)
        shape = (num_modalities, num_classes + 1, prototypes_per_class)
        self.register_buffer("prototypes", F.normalize(torch.randn(*shape, dim, generator=generator), dim=-1))
        self.register_buffer("initialized", torch.zeros(shape, dtype=torch.bool))
        self.register_buffer("negatives", torch.zeros(num_modalities, num_classes, dim))
        self.register_buffer("negatives_initialized", torch.zeros(num_modalities, num_classes, dtype=torch.bool))
        # running mean of all segment features per modality; similarities are taken after subtracting it
        self.register_buffer("center", torch.zeros(num_modalities, dim))
        self.register_buffer("center_initialized", torch.zeros(num_modalities, dtype=torch.bool))
        self.centered = center
        self.momentum = momentum
        self.num_classes = num_classes

    @property
    def background(self) -> int:
        return self.num_classes

    def embed(self, features: Tensor) -> Tensor:
        """The space prototypes live in: (optionally centred) L2-normalised features. (B, T, M, d)."""
        features = features.float()
        if self.centered:
            features = features - self.center
        return F.normalize(features, dim=-1)

    def nearest(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """Similarity to each class's nearest initialised prototype. features (B, T, M, d) from ``embed``.

        Returns sim (B, T, M, C+1) (max over K) and idx (B, T, M, C+1); classes with no initialised
        prototype get -inf.
        """
        sim = torch.einsum("btmd,mckd->btmck", features, self.prototypes)
        sim = sim.masked_fill(~self.initialized[None, None], float("-inf"))
        return sim.max(dim=-1)

    def negative_similarity(self, features: Tensor) -> Tensor:
        """<f, nu_{m,c}> (B, T, M, C) for unit-norm features; -inf where the class has no negative yet."""
        sim = torch.einsum("btmd,mcd->btmc", features, self.negatives)
        return sim.masked_fill(~self.negatives_initialized[None, None], float("-inf"))

    @torch.no_grad()
    def collect(self, features: Tensor, members: Tensor, negative_members: Tensor | None = None) -> Tensor:
        """Pack sums and counts per (m, c, k) — and per (m, c) for negatives — into one flat buffer.

        features (B, T, M, d) raw momentum features (embedded here); members (B, T, M, C+1) bool;
        negative_members (B, T, M, C) bool, or (B, C) for whole videos (T times cheaper), or None. Each member is assigned to the nearest of its
        class's K prototypes (initialised or not).
        """
        raw = features.float()
        features = self.embed(raw)
        sim = torch.einsum("btmd,mckd->btmck", features, self.prototypes)
        assign = F.one_hot(sim.argmax(dim=-1), self.prototypes.shape[2]).to(features.dtype)  # (B,T,M,C+1,K)
        weights = assign * members.unsqueeze(-1).to(features.dtype)
        sums = torch.einsum("btmck,btmd->mckd", weights, features)
        counts = weights.sum(dim=(0, 1))
        if negative_members is None:
            neg_sums = features.new_zeros(self.negatives.shape)
            neg_counts = features.new_zeros(self.negatives_initialized.shape)
        elif negative_members.dim() == 2:   # (B, C): every segment and modality of video b is a negative of c
            neg = negative_members.to(features.dtype)
            neg_sums = torch.einsum("bc,bmd->mcd", neg, features.sum(dim=1))
            neg_counts = (neg.sum(dim=0) * features.shape[1]).expand(features.shape[2], -1)
        else:
            neg = negative_members.to(features.dtype)
            neg_sums = torch.einsum("btmc,btmd->mcd", neg, features)
            neg_counts = neg.sum(dim=(0, 1))
        center_sums = raw.sum(dim=(0, 1))                                      # (M, d)
        center_counts = raw.new_full((raw.shape[2],), float(raw.shape[0] * raw.shape[1]))
        return torch.cat([sums.reshape(-1), counts.reshape(-1), neg_sums.reshape(-1), neg_counts.reshape(-1),
                          center_sums.reshape(-1), center_counts])

    def _blend(self, current: Tensor, initialized: Tensor, sums: Tensor, counts: Tensor) -> Tensor:
        """normalise(beta*mu + (1-beta)*sum/count) where count > 0; a slot's first update sets it."""
        updated = counts > 0
        mean = sums / counts.clamp_min(1.0).unsqueeze(-1)
        blended = torch.where(initialized.unsqueeze(-1), self.momentum * current + (1.0 - self.momentum) * mean, mean)
        return torch.where(updated.unsqueeze(-1), F.normalize(blended, dim=-1), current)

    @torch.no_grad()
    def apply(self, buffer: Tensor) -> Tensor:
        """mu <- normalise(beta*mu + (1-beta)*sum/count) where count > 0; a slot's first update sets it.

        Returns the counts (M, C+1, K) that were applied.
        """
        dtype = self.prototypes.dtype
        parts, start = [], 0
        for shape in (self.prototypes.shape, self.initialized.shape, self.negatives.shape,
                      self.negatives_initialized.shape, self.center.shape, self.center_initialized.shape):
            n = int(torch.Size(shape).numel())
            parts.append(buffer[start:start + n].view(shape).to(dtype))
            start += n
        sums, counts, neg_sums, neg_counts, center_sums, center_counts = parts
        self.prototypes.copy_(self._blend(self.prototypes, self.initialized, sums, counts))
        self.initialized |= counts > 0
        self.negatives.copy_(self._blend(self.negatives, self.negatives_initialized, neg_sums, neg_counts))
        self.negatives_initialized |= neg_counts > 0
        center_mean = center_sums / center_counts.clamp_min(1.0).unsqueeze(-1)
        blended = self.momentum * self.center + (1.0 - self.momentum) * center_mean
        self.center.copy_(torch.where(self.center_initialized.unsqueeze(-1), blended, center_mean))
        self.center_initialized |= center_counts > 0
        return counts

    @torch.no_grad()
    def update(self, features: Tensor, members: Tensor, reducer: Reducer = identity_reducer,
               negative_members: Tensor | None = None) -> Tensor:
        """One bank step: collect -> reducer (e.g. all-reduce SUM of the packed buffer) -> apply."""
        return self.apply(reducer(self.collect(features, members, negative_members)))
