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


def pseudo_label_loss(frame_prob: Tensor, labels: PseudoLabels) -> Tensor:
    """BCE(p_hat_t^m, q_t^m) over segments and modalities, weighted by the labeler's mask."""
    return bce(frame_prob, labels.targets, labels.weights)


def prototype_contrastive_loss(features: Tensor, bank: PrototypeBank, labels: PseudoLabels, tau: float) -> Tensor:
    """Pull each segment's online feature to its pseudo-label's prototype, against all other classes."""
    decided = labels.assignment >= 0
    if not decided.any():
        return features.sum() * 0.0
    sim, _ = bank.nearest(bank.embed(features))                  # (B, T, M, C+1), -inf if uninitialised
    logits = sim[decided] / tau
    target = labels.assignment[decided]
    usable = torch.isfinite(logits.gather(1, target[:, None])).squeeze(1)
    if not usable.any():
        return features.sum() * 0.0
    logits = logits[usable].masked_fill(~torch.isfinite(logits[usable]), -1e4)
    return F.cross_entropy(logits, target[usable])


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
    pseudo = pseudo_label_loss(out.frame_prob, labels) if labels is not None and weight > 0 else zero
    use_con = labels is not None and weight > 0 and cfg.contrastive_weight > 0 and cfg.labeler != "pl"
    con = prototype_contrastive_loss(out.features, bank, labels, cfg.contrastive_tau) if use_con else zero
    ramp = weight / cfg.pl_weight if cfg.pl_weight > 0 else 0.0
    total = mil + weight * pseudo + cfg.contrastive_weight * ramp * con
    return LossTerms(total=total, mil=mil, pseudo_label=pseudo, contrastive=con)
