"""The method in one place: online parser + momentum encoder + prototype bank, and one training step's
targets and losses. The optimizer step is the caller's (plain torch or DeepSpeed)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from model.config import NetworkConfig, PPLConfig, check_compatible
from model.losses import LossTerms, total_loss
from model.momentum import MomentumEncoder
from model.masking import mask_pseudo_labels, padded_negatives
from model.network import AudioVisualParser, ParserOutput
from model.prototypes import (PrototypeBank, Reducer, identity_reducer, select_in_video_negatives,
                              select_key_segments)
from model.pseudo_labels import PseudoLabels, make_pseudo_labels


@dataclass
class StepOutput:
    losses: LossTerms
    online: ParserOutput
    momentum: ParserOutput
    labels: PseudoLabels | None


class PPL(nn.Module):
    def __init__(self, network_cfg: NetworkConfig, ppl_cfg: PPLConfig, seed: int = 0):
        super().__init__()
        ppl_cfg.validate()
        check_compatible(network_cfg, ppl_cfg)
        self.cfg = ppl_cfg
        self.network = AudioVisualParser(network_cfg)
        # only prototype labelers read momentum features; Base, pl, em_mil and poibin read the online model
        self.momentum = MomentumEncoder(self.network, ppl_cfg.ema_decay if self.uses_bank else None,
                                        warmup=ppl_cfg.ema_warmup, precision=ppl_cfg.teacher_precision)
        self.bank = PrototypeBank(network_cfg.num_classes, network_cfg.model_dim, ppl_cfg.prototypes_per_class,
                                  ppl_cfg.bank_momentum, seed=seed, center=ppl_cfg.center_features,
                                  assignment=ppl_cfg.prototype_assignment, sinkhorn_epsilon=ppl_cfg.sinkhorn_epsilon,
                                  sinkhorn_iterations=ppl_cfg.sinkhorn_iterations,
                                  keep_snapshot=self.uses_bank and ppl_cfg.reestimate_every > 0,
                                  track_similarities=ppl_cfg.decision == "midpoint")

    @property
    def uses_bank(self) -> bool:
        """Prototype labelers read momentum features and keep a bank; the others do not."""
        return self.cfg.labeler in ("ppl_hard", "ppl_soft")

    def labelling_bank(self, epoch: int) -> PrototypeBank:
        """The bank pseudo-labels are read from. ``reestimate_every`` = N > 0 (EM): after warm-up, the bank frozen
        when the current N-epoch cycle began (E-step) while the model trains on its labels (M-step) and the
        live bank keeps collecting for the next cycle; N = 0 (and during warm-up): the live bank."""
        every, warmup = self.cfg.reestimate_every, self.cfg.warmup_epochs
        if every == 0 or not self.uses_bank or epoch < warmup:
            return self.bank
        return self.bank.frozen_at(warmup + (epoch - warmup) // every * every)

    def losses(self, online: ParserOutput, inputs: tuple[Tensor, ...], weak_labels: Tensor, epoch: int,
               mask: Tensor | None = None, dense_truth: Tensor | None = None) -> StepOutput:
        """Momentum forward, pseudo-labels from the labelling bank, and the loss terms.
        ``mask`` (B, T) bool (variable-length batches; also the last of ``inputs``): padded segments get no
        pseudo-label loss and no contrastive term. ``dense_truth`` (B, T, M, C): read by the oracle labeler only."""
        momentum = self.momentum(online, *inputs)     # without an EMA copy: online, detached
        bank = self.labelling_bank(epoch)
        labels = make_pseudo_labels(self.cfg, online, momentum, bank, weak_labels, epoch, dense_truth)
        if labels is not None and mask is not None:
            labels = mask_pseudo_labels(labels, mask)
        return StepOutput(total_loss(online, weak_labels, labels, bank, self.cfg, epoch), online, momentum, labels)

    @torch.no_grad()
    def after_optimizer_step(self, online_network: nn.Module, momentum: ParserOutput, weak_labels: Tensor,
                             reducer: Reducer = identity_reducer, mask: Tensor | None = None) -> Tensor | None:
        """EMA update, then the bank update from this step's key segments (one reducer call)."""
        self.momentum.update(online_network)
        if not self.uses_bank:
            return None
        members = select_key_segments(momentum.frame_prob, weak_labels, self.cfg, valid=mask)
        negatives = None
        if self.cfg.background == "negatives":   # every segment of a video without class c
            negatives = ~weak_labels.bool()                                          # (B, C)
            if mask is not None:                 # ... that is a real segment: (B, T, M, C)
                negatives = padded_negatives(negatives, mask, momentum.features.shape[2])
        elif self.cfg.background == "in_video_negatives":   # c's least likely segments in c's own videos
            negatives = select_in_video_negatives(momentum.frame_prob, weak_labels, self.cfg, valid=mask)
        # sinkhorn: + 1 reduce per iteration
        return self.bank.update(momentum.features, members, reducer, negatives, valid=mask)
