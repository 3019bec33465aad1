"""Pseudo-labelers behind one interface (DESIGN §3.4): none (Base), pl, ppl_hard, ppl_soft.

Every labeler returns targets and loss weights for frame_prob (B, T, M, C). Targets are masked by
the weak labels: a class absent from the video is 0 in every segment (true information, weight 1).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from model.config import PPLConfig
from model.network import ParserOutput
from model.prototypes import PrototypeBank


@dataclass
class PseudoLabels:
    targets: Tensor      # (B, T, M, C) in [0, 1]
    weights: Tensor      # (B, T, M, C) loss weight per entry (0 = no loss)
    assignment: Tensor   # (B, T, M) hard class in 0..C (C = background), -1 where undecided/gated out


def prototype_scores(features: Tensor, bank: PrototypeBank, weak_labels: Tensor) -> tuple[Tensor, Tensor]:
    """s_c = max_k <f_bar, mu_{m,c,k}> over labelled classes + background. (B, T, M, C+1), usable mask."""
    return _scores(bank.embed(features), bank, weak_labels)


def _scores(embedded: Tensor, bank: PrototypeBank, weak_labels: Tensor) -> tuple[Tensor, Tensor]:
    sim, _ = bank.nearest(embedded)
    labelled = torch.cat([weak_labels.bool(), torch.ones_like(weak_labels[:, :1], dtype=torch.bool)], dim=-1)
    usable = labelled[:, None, None, :] & torch.isfinite(sim)
    return sim, usable


def prototype_pseudo_labels(features: Tensor, bank: PrototypeBank, weak_labels: Tensor, cfg: PPLConfig,
                            hard: bool) -> PseudoLabels:
    """Eq. 10 (as we read it): q = softmax(s / tau) over the usable set, per segment and modality.

    ``competition='across_classes'``: one softmax over labelled classes + background.
    ``competition='per_class'``: per labelled class c, softmax over {c, background} = sigmoid((s_c - s_bg)/tau),
    so co-occurring events do not compete for the same segment.
    """
    num_classes = weak_labels.shape[-1]
    embedded = bank.embed(features)   # once per step: centring + normalising (B, T, M, d)
    sim, usable = _scores(embedded, bank, weak_labels)
    logits = (sim / cfg.tau).masked_fill(~usable, float("-inf"))
    class_usable = usable[..., :num_classes]
    if cfg.competition == "across_classes":
        any_usable = usable.any(dim=-1, keepdim=True)
        q = torch.softmax(logits.masked_fill(~any_usable, 0.0), dim=-1).masked_fill(~usable, 0.0)
        winner = q.argmax(dim=-1)
        confidence = q.amax(dim=-1)
        q_classes = F.one_hot(winner, num_classes + 1)[..., :num_classes].float() if hard else q[..., :num_classes]
        gate = (confidence >= cfg.confidence_gate) & any_usable.squeeze(-1)
        weights = class_usable & gate.unsqueeze(-1)
        assignment = torch.where(gate, winner, torch.full_like(winner, -1))
    else:
        class_logits = logits[..., :num_classes]
        if cfg.background == "negatives":   # each class against its own negative prototype
            negative = bank.negative_similarity(embedded) / cfg.tau
        else:                               # each class against the modality's background prototype
            negative = logits[..., num_classes:].expand_as(class_logits)
        class_usable = class_usable & torch.isfinite(negative)
        q = torch.sigmoid((class_logits - negative).masked_fill(~class_usable, 0.0))   # (s_c - s_bg) / tau
        q_classes = (q >= 0.5).float() if hard else q
        confidence = torch.maximum(q, 1.0 - q)
        weights = class_usable & (confidence >= cfg.confidence_gate)
        # hard assignment for the contrastive loss: best positive class, else background
        positive = (q >= 0.5) & weights
        best = q.masked_fill(~positive, -1.0).argmax(dim=-1)
        decided = weights.any(dim=-1)
        assignment = torch.where(positive.any(dim=-1), best, torch.full_like(best, num_classes))
        assignment = torch.where(decided, assignment, torch.full_like(best, -1))
    negatives = ~weak_labels.bool()[:, None, None, :].expand_as(weights)
    targets = torch.where(weights, q_classes, torch.zeros_like(q_classes))
    return PseudoLabels(targets=targets.detach(), weights=(weights | negatives).float(), assignment=assignment)


def naive_pseudo_labels(frame_prob: Tensor, weak_labels: Tensor, cfg: PPLConfig) -> PseudoLabels:
    """Base+PL: the model's own thresholded predictions as targets (the seed: does not help)."""
    targets = ((frame_prob.detach() >= cfg.pl_threshold) & weak_labels.bool()[:, None, None, :]).float()
    assignment = torch.full(frame_prob.shape[:3], -1, dtype=torch.long, device=frame_prob.device)
    return PseudoLabels(targets=targets, weights=torch.ones_like(targets), assignment=assignment)


def make_pseudo_labels(cfg: PPLConfig, online: ParserOutput, momentum: ParserOutput, bank: PrototypeBank,
                       weak_labels: Tensor) -> PseudoLabels | None:
    """Dispatch on ``cfg.labeler``; None for Base."""
    if cfg.labeler == "none":
        return None
    if cfg.labeler == "pl":
        return naive_pseudo_labels(online.frame_prob, weak_labels, cfg)
    return prototype_pseudo_labels(momentum.features, bank, weak_labels, cfg, hard=cfg.labeler == "ppl_hard")


@torch.no_grad()
def pseudo_label_counts(labels: PseudoLabels, frame_prob: Tensor, global_prob: Tensor, weak_labels: Tensor,
                        dense_truth: Tensor) -> Tensor:
    """TP/FP/FN of the pseudo-labels and of the model's own predictions against dense truth.

    Both restricted to the labelled classes (where pseudo-labels carry information); the model's
    predictions use the evaluation rule (segment >= 0.5 and video >= 0.5). Also counts the
    (segment, modality) pairs assigned to background. Returns a flat float64 tensor of 8 counts so
    the caller can all-reduce it: [pl_tp, pl_fp, pl_fn, model_tp, model_fp, model_fn, n_background, n_pairs].
    """
    labelled = weak_labels.bool()[:, None, None, :]
    truth = dense_truth.bool() & labelled
    pl_pos = (labels.targets >= 0.5) & labelled
    model_pos = (frame_prob >= 0.5) & (global_prob >= 0.5)[:, None, None, :] & labelled
    def tfn(pred):
        return [(pred & truth).sum(), (pred & ~truth).sum(), (~pred & truth).sum()]
    n_background = (labels.assignment == weak_labels.shape[-1]).sum()
    n_pairs = torch.tensor(labels.assignment.numel())
    return torch.stack([torch.as_tensor(x).double() for x in tfn(pl_pos) + tfn(model_pos) + [n_background, n_pairs]])
