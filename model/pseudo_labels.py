"""Pseudo-labelers behind one interface (DESIGN §3.4): none (Base), pl, ppl_hard, ppl_soft, and the seed's
Table 2 competitors em_mil (Luo et al. 2020) and poibin (PoiBin-style, reconstructed; docs/method.md).

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
    key_targets: Tensor | None = None   # (B, T) EM-MIL E-step target of the key-instance head, else None


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


TEACHER_LOGIT_CLAMP = 13.8   # logit(1 - 1e-6): a saturated teacher stays finite and can still be outvoted


def per_class_labels(sim: Tensor, usable: Tensor, negative_sim: Tensor | None, cfg: PPLConfig, hard: bool,
                     teacher_prob: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Per labelled class c, softmax over {c, background} = sigmoid((s_c - s_bg) / tau): co-occurring
    events do not compete. s_bg is c's own negative prototype (``negative_sim``, background=negatives)
    or the modality's background prototype.

    ``teacher_prob`` (B, T, M, C), for ``pl_evidence=prototypes_and_teacher``: the prototype margin is read as a
    likelihood ratio on the momentum teacher's own odds, q = sigmoid(logit p_teacher + (s_c - s_bg) / tau)
    (ProDA's prototype rectification of the teacher's labels, in the two-way form). Prototype labels alone are a
    nearest-mean classifier, which the learned classifier outgrows; rectified labels cannot fall far below it."""
    num_classes = sim.shape[-1] - 1
    class_sim = sim[..., :num_classes]
    background = negative_sim if negative_sim is not None else sim[..., num_classes:].expand_as(class_sim)
    usable = usable[..., :num_classes] & torch.isfinite(background)
    logits = (class_sim - background) / cfg.tau
    if teacher_prob is not None:
        logits = logits + torch.logit(teacher_prob.float()).clamp(-TEACHER_LOGIT_CLAMP, TEACHER_LOGIT_CLAMP)
    q = torch.sigmoid(logits.masked_fill(~usable, 0.0))
    q_classes = (q >= 0.5).float() if hard else q
    weights = usable & (torch.maximum(q, 1.0 - q) >= cfg.confidence_gate)
    # hard assignment for the contrastive loss: best positive class, else background; -1 where undecided
    positive = (q >= 0.5) & weights
    best = q.masked_fill(~positive, -1.0).argmax(dim=-1)
    assignment = torch.where(positive.any(dim=-1), best, torch.full_like(best, num_classes))
    return q_classes, weights, torch.where(weights.any(dim=-1), assignment, torch.full_like(best, -1))


def prototype_pseudo_labels(features: Tensor, bank: PrototypeBank, weak_labels: Tensor, cfg: PPLConfig,
                            hard: bool, teacher_prob: Tensor | None = None) -> PseudoLabels:
    """Prototype pseudo-labels for momentum ``features`` (B, T, M, d), by ``cfg.competition``; with
    ``cfg.pl_evidence=prototypes_and_teacher``, rectifying the momentum model's ``teacher_prob`` (B, T, M, C)."""
    embedded = bank.embed(features)   # once per step: centring + normalising (B, T, M, d)
    sim, usable = _labelled_similarities(embedded, bank, weak_labels)
    if cfg.competition == "across_classes":
        q_classes, weights, assignment = across_classes_labels(sim, usable, cfg, hard)
    else:
        if cfg.decision == "midpoint":   # s_c against c's scalar threshold, not against a negative direction
            negative_sim = bank.midpoint()[None, None].expand(*embedded.shape[:3], -1)
        elif cfg.background in ("negatives", "in_video_negatives"):
            negative_sim = bank.negative_similarity(embedded)
        else:
            negative_sim = None
        teacher = None
        if cfg.pl_evidence == "prototypes_and_teacher":
            if teacher_prob is None:
                raise ValueError("ppl.pl_evidence: prototypes_and_teacher needs the teacher's frame probabilities")
            teacher = teacher_prob.detach()
        q_classes, weights, assignment = per_class_labels(sim, usable, negative_sim, cfg, hard, teacher)
    negatives = ~weak_labels.bool()[:, None, None, :].expand_as(weights)
    targets = torch.where(weights, q_classes, torch.zeros_like(q_classes))
    return PseudoLabels(targets=targets.detach(), weights=(weights | negatives).float(), assignment=assignment)


def naive_pseudo_labels(frame_prob: Tensor, weak_labels: Tensor, cfg: PPLConfig) -> PseudoLabels:
    """Base+PL: the model's own thresholded predictions as targets (the seed: does not help)."""
    targets = ((frame_prob.detach() >= cfg.pl_threshold) & weak_labels.bool()[:, None, None, :]).float()
    return PseudoLabels(targets=targets, weights=torch.ones_like(targets), assignment=_undecided(frame_prob))


def _undecided(frame_prob: Tensor) -> Tensor:
    """The assignment of labelers without prototypes: -1 everywhere (B, T, M)."""
    return torch.full(frame_prob.shape[:3], -1, dtype=torch.long, device=frame_prob.device)


def em_mil_phase(epoch: int, cfg: PPLConfig) -> str:
    """EM-MIL's alternation (the authors' schedule after their warm-up): blocks of ``em_mil_alternate_epochs``
    epochs, E first (the key-instance head learns from the classifier before the classifier learns from it).
    Our MIL warm-up plays the authors' first M-step on all segments of positive bags."""
    block = max(epoch - cfg.warmup_epochs, 0) // cfg.em_mil_alternate_epochs
    return "E" if block % 2 == 0 else "M"


def key_instances(key_prob: Tensor, gamma: float) -> Tensor:
    """EM-MIL Eq. 5 as in the authors' code: ONE class-agnostic set of key instances per video. The key score
    is the mean of the two streams' heads (RGB and flow there, audio and visual here), and a segment is a key
    instance where it exceeds mean_t + gamma * (max_t - min_t). key_prob (B, T, M) -> (B, T) bool."""
    key = key_prob.mean(dim=2)                                                     # (B, T)
    spread = key.amax(dim=1, keepdim=True) - key.amin(dim=1, keepdim=True)
    return key > key.mean(dim=1, keepdim=True) + gamma * spread


def key_instance_targets(frame_prob: Tensor, weak_labels: Tensor) -> Tensor:
    """EM-MIL's E-step target of the key-instance head (authors' code): a segment is a key instance if, for
    some labelled class, the classifier averaged over the streams is above its own mean over time. (B, T)."""
    class_prob = frame_prob.mean(dim=2)                                           # (B, T, C)
    above = (class_prob > class_prob.mean(dim=1, keepdim=True)) & weak_labels.bool()[:, None, :]
    return above.any(dim=-1).float()


def em_mil_pseudo_labels(online: ParserOutput, weak_labels: Tensor, cfg: PPLConfig, epoch: int) -> PseudoLabels:
    """EM-MIL on AVVP. Targets are always the M-step's: every labelled class, in both modalities, is 1 exactly
    on the video's key instances — all events co-occur, the assumption the seed says fails on AVVP, kept on
    purpose. M-epochs train the classifier on them (and on the negative classes); E-epochs train the
    key-instance head instead (``key_targets``) and leave the labelled classes without pseudo-label loss."""
    frame_prob = online.frame_prob.detach()
    keys = key_instances(online.key_prob.detach(), cfg.em_mil_gamma)              # (B, T)
    labelled = weak_labels.bool()[:, None, None, :]                               # (B, 1, 1, C)
    targets = (keys[:, :, None, None] & labelled).expand_as(frame_prob).float()   # (B, T, M, C)
    m_step = em_mil_phase(epoch, cfg) == "M"
    weights = (~labelled | m_step).expand_as(frame_prob).float()
    key_targets = None if m_step else key_instance_targets(frame_prob, weak_labels)
    return PseudoLabels(targets=targets, weights=weights, assignment=_undecided(frame_prob), key_targets=key_targets)


POIBIN_SHIFT_RANGE = 30.0   # |logit shift| searched; logits are clamped to +-13.8, so the count is bracketed
POIBIN_BISECTIONS = 40      # bracket width 60 / 2**40: float32-exact


def count_matched_probabilities(frame_prob: Tensor, expected_count: float) -> Tensor:
    """q_t = sigmoid(logit p_t + b), with per (video, modality, class) the one shift b for which the expected
    number of positive segments — the mean of the Poisson-binomial count N of independent Bernoulli(q_t),
    E[N] = sum_t q_t — equals ``expected_count``. Among product-Bernoulli laws with that mean this is the one
    closest to the model's (KL); sum_t q_t grows with b, so bisection finds it. (B, T, M, C) -> (B, T, M, C)."""
    logits = torch.logit(frame_prob.float().clamp(1e-6, 1.0 - 1e-6))
    low = torch.full_like(logits[:, :1], -POIBIN_SHIFT_RANGE)                     # (B, 1, M, C)
    high = torch.full_like(low, POIBIN_SHIFT_RANGE)
    for _ in range(POIBIN_BISECTIONS):
        middle = (low + high) / 2
        too_many = torch.sigmoid(logits + middle).sum(dim=1, keepdim=True) > expected_count
        high, low = torch.where(too_many, middle, high), torch.where(too_many, low, middle)
    return torch.sigmoid(logits + (low + high) / 2)


def poibin_pseudo_labels(frame_prob: Tensor, weak_labels: Tensor, cfg: PPLConfig) -> PseudoLabels:
    """PoiBin-style on our network (reconstructed, not a reproduction): the model's own segment probabilities of
    each labelled class, tilted so the expected count of positives is ``poibin_positive_fraction * T`` in each
    modality — a fixed proportion of positives, also for an event the modality does not carry."""
    frame_prob = frame_prob.detach()
    matched = count_matched_probabilities(frame_prob, cfg.poibin_positive_fraction * frame_prob.shape[1])
    labelled = weak_labels.bool()[:, None, None, :].expand_as(matched)
    targets = torch.where(labelled, matched, torch.zeros_like(matched))
    return PseudoLabels(targets=targets, weights=torch.ones_like(targets), assignment=_undecided(frame_prob))


def oracle_pseudo_labels(dense_truth: Tensor | None, weak_labels: Tensor) -> PseudoLabels:
    """The true per-segment labels (B, T, M, C), masked by the weak labels like every labeler: the ceiling of what
    pseudo-labels can add on this data. Synthetic data only: real training videos have no segment truth."""
    if dense_truth is None:
        raise ValueError("ppl.labeler: oracle needs per-segment truth in the training batches (synthetic data only)")
    targets = (dense_truth.bool() & weak_labels.bool()[:, None, None, :]).float()
    return PseudoLabels(targets=targets, weights=torch.ones_like(targets), assignment=_undecided(targets))


def make_pseudo_labels(cfg: PPLConfig, online: ParserOutput, momentum: ParserOutput, bank: PrototypeBank,
                       weak_labels: Tensor, epoch: int, dense_truth: Tensor | None = None) -> PseudoLabels | None:
    """Dispatch on ``cfg.labeler``; None for Base. ``bank``: the one pseudo-labels are read from;
    ``dense_truth`` (B, T, M, C): only the oracle reads it."""
    if cfg.labeler == "none":
        return None
    if cfg.labeler == "oracle":
        return oracle_pseudo_labels(dense_truth, weak_labels)
    if cfg.labeler == "pl":
        return naive_pseudo_labels(online.frame_prob, weak_labels, cfg)
    if cfg.labeler == "em_mil":
        return em_mil_pseudo_labels(online, weak_labels, cfg, epoch)
    if cfg.labeler == "poibin":
        return poibin_pseudo_labels(online.frame_prob, weak_labels, cfg)
    return prototype_pseudo_labels(momentum.features, bank, weak_labels, cfg, hard=cfg.labeler == "ppl_hard",
                                   teacher_prob=momentum.frame_prob)


MODALITY_NAMES = ("a", "v")          # dim 2 of (B, T, M, C): audio, visual
PL_COUNT_NAMES = ("pl_tp", "pl_fp", "pl_fn", "model_tp", "model_fp", "model_fn", "n_background", "n_pairs",
                  *(f"{name}_{m}" for m in MODALITY_NAMES
                    for name in ("pl_tp", "pl_fp", "pl_fn", "model_tp", "model_fp", "model_fn")))


@torch.no_grad()
def pseudo_label_counts(labels: PseudoLabels, frame_prob: Tensor, global_prob: Tensor, weak_labels: Tensor,
                        dense_truth: Tensor) -> Tensor:
    """TP/FP/FN of the pseudo-labels and of the model's own predictions against dense truth.

    Both restricted to the labelled classes (where pseudo-labels carry information); the model's
    predictions use the evaluation rule (segment >= 0.5 and video >= 0.5). Also counts the
    (segment, modality) pairs assigned to background. Returns a flat float64 tensor in the order of
    ``PL_COUNT_NAMES`` (both modalities together, then the six TP/FP/FN counts of each modality) so the
    caller can all-reduce it: pseudo-label vs model F1 per modality is what shows confirmation bias.
    """
    labelled = weak_labels.bool()[:, None, None, :]
    truth = dense_truth.bool() & labelled
    pl_pos = (labels.targets >= 0.5) & labelled
    model_pos = (frame_prob >= 0.5) & (global_prob >= 0.5)[:, None, None, :] & labelled

    def tfn(pred, keep=slice(None)):
        p, t = pred[:, :, keep], truth[:, :, keep]
        return [(p & t).sum(), (p & ~t).sum(), (~p & t).sum()]
    n_background = (labels.assignment == weak_labels.shape[-1]).sum()
    n_pairs = torch.ones_like(labels.assignment).sum()         # on the step's device, like every count here
    counts = tfn(pl_pos) + tfn(model_pos) + [n_background, n_pairs]
    for m in range(len(MODALITY_NAMES)):
        counts += tfn(pl_pos, slice(m, m + 1)) + tfn(model_pos, slice(m, m + 1))
    return torch.stack([x.double() for x in counts])
