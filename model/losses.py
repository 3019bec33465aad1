"""Losses: L = L_MIL + lambda_pl * BCE(p_hat, q) + lambda_con * prototype contrastive (DESIGN §3.4)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from model.config import PPLConfig
from model.network import ParserOutput
from model.prototypes import PrototypeBank
from model.pseudo_labels import PseudoLabels

EPS = 1e-7


def bce(prob: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
    """Binary cross-entropy on probabilities, clamped so saturated sigmoids stay finite."""
    loss = F.binary_cross_entropy(prob.clamp(EPS, 1.0 - EPS), target, reduction="none")
    if weight is None:
        return loss.mean()
    return (loss * weight).sum() / weight.sum().clamp_min(1.0)


def mil_loss(out: ParserOutput, weak_labels: Tensor, cfg: PPLConfig) -> Tensor:
    """Eq. 7: BCE(P, W); optionally HAN's per-modality terms with visual label smoothing."""
    loss = bce(out.global_prob, weak_labels)
    if cfg.modality_losses:
        eps = cfg.visual_label_smoothing
        loss = loss + bce(out.modality_prob[:, 0], weak_labels)
        loss = loss + bce(out.modality_prob[:, 1], (1.0 - eps) * weak_labels + eps * 0.5)
    return loss


def pseudo_label_loss(out: ParserOutput, labels: PseudoLabels) -> Tensor:
    """BCE(p_hat_t^m, q_t^m) over segments and modalities, weighted by the labeler's mask; plus, in EM-MIL's
    E-step, BCE of the key-instance head against its targets in both modalities (means where the authors
    sum over classes and streams: the scale is lambda_pl's)."""
    loss = bce(out.frame_prob, labels.targets, labels.weights)
    if labels.key_targets is not None:
        loss = loss + bce(out.key_prob, labels.key_targets.unsqueeze(-1).expand_as(out.key_prob))
    return loss


def prototype_contrastive_loss(features: Tensor, bank: PrototypeBank, labels: PseudoLabels, tau: float) -> Tensor:
    """InfoNCE: pull each segment's online feature to its pseudo-label's prototype (the nearest of that class's
    K) against the nearest prototype of every other initialised class. Mean over the segments whose pseudo-label
    has a prototype; written without data-dependent shapes or host reads (one graph on any device)."""
    sim, _ = bank.nearest(bank.embed(features))                     # (B, T, M, C+1), -inf if uninitialised
    target = labels.assignment.clamp_min(0)                          # (B, T, M); -1 (undecided) masked below
    usable = (labels.assignment >= 0) & torch.isfinite(sim.gather(-1, target.unsqueeze(-1)).squeeze(-1))
    logits = (sim / tau).masked_fill(~torch.isfinite(sim), -1e4)
    per_segment = F.cross_entropy(logits.flatten(0, 2), target.flatten(), reduction="none")
    weight = usable.flatten().to(per_segment.dtype)
    return (per_segment * weight).sum() / weight.sum().clamp_min(1.0)


def pl_weight_at(epoch: int, cfg: PPLConfig) -> float:
    """lambda_pl for an epoch: 0 during warm-up, then a linear ramp over ``rampup_epochs``."""
    if cfg.labeler == "none" or epoch < cfg.warmup_epochs:
        return 0.0
    if cfg.rampup_epochs == 0:
        return cfg.pl_weight
    return cfg.pl_weight * min(1.0, (epoch - cfg.warmup_epochs + 1) / cfg.rampup_epochs)


@dataclass
class LossTerms:
    total: Tensor
    mil: Tensor
    pseudo_label: Tensor
    contrastive: Tensor

    def as_floats(self) -> dict[str, float]:
        return {f"loss_{k}": float(v.detach()) for k, v in vars(self).items()}


def total_loss(out: ParserOutput, weak_labels: Tensor, labels: PseudoLabels | None, bank: PrototypeBank,
               cfg: PPLConfig, epoch: int) -> LossTerms:
    mil = mil_loss(out, weak_labels, cfg)
    zero = mil.new_zeros(())
    weight = pl_weight_at(epoch, cfg)
    pseudo = pseudo_label_loss(out, labels) if labels is not None and weight > 0 else zero
    use_con = (labels is not None and weight > 0 and cfg.contrastive_weight > 0
               and cfg.labeler in ("ppl_hard", "ppl_soft"))                 # needs prototype assignments
    con = prototype_contrastive_loss(out.features, bank, labels, cfg.contrastive_tau) if use_con else zero
    ramp = weight / cfg.pl_weight if cfg.pl_weight > 0 else 0.0
    total = mil + weight * pseudo + cfg.contrastive_weight * ramp * con
    return LossTerms(total=total, mil=mil, pseudo_label=pseudo, contrastive=con)
