"""Variable-length batches (W-TAL): what a (B, T) mask does to the pseudo-labels and the bank's negatives.

True = a real segment. The network masks attention and pooling itself (``model.network``); the bank is
given the mask (key segments, centre); these helpers cover the rest, so padding reaches no loss and no
prototype.
"""
from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from model.pseudo_labels import PseudoLabels


def mask_pseudo_labels(labels: PseudoLabels, mask: Tensor) -> PseudoLabels:
    """Padded segments: target 0, weight 0, assignment -1 (undecided: no contrastive term)."""
    keep = mask.bool()[:, :, None, None]                                            # (B, T, 1, 1)
    key_targets = labels.key_targets
    if key_targets is not None:
        key_targets = key_targets * mask.to(key_targets.dtype)
    return replace(labels,
                   targets=labels.targets * keep.to(labels.targets.dtype),
                   weights=labels.weights * keep.to(labels.weights.dtype),
                   assignment=torch.where(mask.bool()[:, :, None], labels.assignment,
                                          torch.full_like(labels.assignment, -1)),
                   key_targets=key_targets)


def padded_negatives(video_negatives: Tensor, mask: Tensor, num_modalities: int) -> Tensor:
    """(B, C) "video lacks class c" -> (B, T, M, C): every real segment of such a video, in every modality."""
    per_segment = video_negatives.bool()[:, None, None, :] & mask.bool()[:, :, None, None]
    return per_segment.expand(-1, -1, num_modalities, -1)
