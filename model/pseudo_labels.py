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


def _labelled_similarities(embedded: Tensor, bank: PrototypeBank, weak_labels: Tensor) -> tuple[Tensor, Tensor]:
    """s_c = max_k <f_bar, mu_{m,c,k}> (B, T, M, C+1), and which entries may compete: the video's weak
    classes plus background, where the class has an initialised prototype."""
    sim, _ = bank.nearest(embedded)
    labelled = torch.cat([weak_labels.bool(), torch.ones_like(weak_labels[:, :1], dtype=torch.bool)], dim=-1)
    return sim, labelled[:, None, None, :] & torch.isfinite(sim)


def across_classes_labels(sim: Tensor, usable: Tensor, cfg: PPLConfig, hard: bool
                          ) -> tuple[Tensor, Tensor, Tensor]:
    """Eq. 10 as we read it: one softmax over the labelled classes + background, per segment and modality.

    Returns class targets (B, T, M, C), the loss mask (B, T, M, C) and the hard assignment (B, T, M).
    """
    num_classes = sim.shape[-1] - 1
    logits = (sim / cfg.tau).masked_fill(~usable, float("-inf"))
    any_usable = usable.any(dim=-1, keepdim=True)
    q = torch.softmax(logits.masked_fill(~any_usable, 0.0), dim=-1).masked_fill(~usable, 0.0)
    winner = q.argmax(dim=-1)
    q_classes = F.one_hot(winner, num_classes + 1)[..., :num_classes].float() if hard else q[..., :num_classes]
    gate = (q.amax(dim=-1) >= cfg.confidence_gate) & any_usable.squeeze(-1)
    weights = usable[..., :num_classes] & gate.unsqueeze(-1)
    return q_classes, weights, torch.where(gate, winner, torch.full_like(winner, -1))


def per_class_labels(sim: Tensor, usable: Tensor, negative_sim: Tensor | None, cfg: PPLConfig, hard: bool
                     ) -> tuple[Tensor, Tensor, Tensor]:
    """Per labelled class c, softmax over {c, background} = sigmoid((s_c - s_bg) / tau): co-occurring
    events do not compete. s_bg is c's own negative prototype (``negative_sim``, background=negatives)
    or the modality's background prototype."""
    num_classes = sim.shape[-1] - 1
    class_sim = sim[..., :num_classes]
    background = negative_sim if negative_sim is not None else sim[..., num_classes:].expand_as(class_sim)
    usable = usable[..., :num_classes] & torch.isfinite(background)
    q = torch.sigmoid(((class_sim - background) / cfg.tau).masked_fill(~usable, 0.0))
    q_classes = (q >= 0.5).float() if hard else q
    weights = usable & (torch.maximum(q, 1.0 - q) >= cfg.confidence_gate)
    # hard assignment for the contrastive loss: best positive class, else background; -1 where undecided
    positive = (q >= 0.5) & weights
    best = q.masked_fill(~positive, -1.0).argmax(dim=-1)
    assignment = torch.where(positive.any(dim=-1), best, torch.full_like(best, num_classes))
    return q_classes, weights, torch.where(weights.any(dim=-1), assignment, torch.full_like(best, -1))


def prototype_pseudo_labels(features: Tensor, bank: PrototypeBank, weak_labels: Tensor, cfg: PPLConfig,
                            hard: bool) -> PseudoLabels:
    """Prototype pseudo-labels for momentum ``features`` (B, T, M, d), by ``cfg.competition``."""
    embedded = bank.embed(features)   # once per step: centring + normalising (B, T, M, d)
    sim, usable = _labelled_similarities(embedded, bank, weak_labels)
    if cfg.competition == "across_classes":
        q_classes, weights, assignment = across_classes_labels(sim, usable, cfg, hard)
    else:
        negative_sim = bank.negative_similarity(embedded) if cfg.background == "negatives" else None
        q_classes, weights, assignment = per_class_labels(sim, usable, negative_sim, cfg, hard)
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
    n_pairs = torch.ones_like(labels.assignment).sum()         # on the step's device, like every count here
    return torch.stack([x.double() for x in tfn(pl_pos) + tfn(model_pos) + [n_background, n_pairs]])
