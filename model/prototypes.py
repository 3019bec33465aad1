"""Prototype bank (DESIGN §3.3, our reconstruction of the main paper's Sec. 4).

Per modality m and class c, K unit-norm prototypes; class index C is the background. With
``background: negatives`` each class also has a negative prototype (M, C, d): the mean feature of
segments from videos whose weak label lacks the class — certain negatives, so the "not c" side of
a pseudo-label never feeds on the model's own guesses.
An update is split in two so the distributed layer can all-reduce in between:
``collect`` packs per-(m, c, k) feature sums and counts into ONE flat buffer, a reducer
(identity, or an all-reduce SUM across ranks) combines buffers, ``apply`` blends the means
into the bank. Every rank applying the same reduced buffer keeps the bank identical everywhere.

K > 1 (ours, docs/method.md): which of its class's K slots a key segment updates is ``nearest`` (online
spherical k-means) or ``sinkhorn`` (SwAV's balanced codes over the step's key segments of all ranks: the
column sums of the Sinkhorn iterations go through the same reducer). A slot no segment has reached yet
waits next to its class's latest mean (LBG splitting), so all K slots take part.
With ``keep_snapshot`` the bank also holds a frozen copy for the re-estimation schedule (``frozen_at``).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.config import PPLConfig

Reducer = Callable[[Tensor], Tensor]

SPLIT_SPREAD = 0.1   # a seeded slot starts at cos ~0.995 to its class mean; only sets the first steps' partition
TIE_TOLERANCE = 1e-4  # balanced codes this close to the best count as tied (exact when n_class < K)


def identity_reducer(buffer: Tensor) -> Tensor:
    return buffer


def select_key_segments(frame_prob: Tensor, weak_labels: Tensor, cfg: PPLConfig, valid: Tensor | None = None
                        ) -> Tensor:
    """Which segments feed which prototype: (B, T, M, C+1) bool, last index = background.

    Class c, modality m: the top-``key_top_k`` segments over time by the momentum model's
    probability, if c is in the video's weak label and the probability >= ``key_min_prob``.
    Background: among segments where every labelled class is < ``background_max_prob``, the
    ``background_top_k`` least confident ones per (video, modality).
    ``valid`` (B, T) bool (variable-length batches): padded segments are never keys nor background.
    """
    if valid is not None:   # -1 ranks below every real probability and fails every key_min_prob >= 0
        frame_prob = frame_prob.masked_fill(~valid[:, :, None, None], -1.0)
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
        if valid is not None:
            candidate = candidate & valid[:, :, None]
        kb = min(cfg.background_top_k, steps)
        order = labelled_prob.masked_fill(~candidate, float("inf")).topk(kb, dim=1, largest=False).indices
        chosen = torch.zeros_like(candidate).scatter_(1, order, True) & candidate
        background = chosen.unsqueeze(-1)
    return torch.cat([keys, background], dim=-1)


def select_in_video_negatives(frame_prob: Tensor, weak_labels: Tensor, cfg: PPLConfig, valid: Tensor | None = None
                              ) -> Tensor:
    """``background: in_video_negatives``: which segments feed class c's negative prototype, (B, T, M, C) bool.

    In each video labelled c and each modality, the ``background_top_k`` segments with the lowest momentum
    probability of c, if below ``background_max_prob``. They share the video's context (the scene of a dog video
    looks a little like dog everywhere) and include the modality that does not carry the event (speech heard, not
    seen), so "not c" is learnt where the pseudo-label must decide: among the segments of c's own videos.
    Negatives from videos without c never look like that, and every segment of a labelled video beats them.
    """
    if valid is not None:   # +2 ranks above every real probability and fails every background_max_prob <= 1
        frame_prob = frame_prob.masked_fill(~valid[:, :, None, None], 2.0)
    k = min(cfg.background_top_k, frame_prob.shape[1])
    lowest = frame_prob.topk(k, dim=1, largest=False).indices                  # (B, k, M, C)
    chosen = torch.zeros_like(frame_prob, dtype=torch.bool).scatter_(1, lowest, True)
    return chosen & weak_labels.bool()[:, None, None, :] & (frame_prob < cfg.background_max_prob)


class PrototypeBank(nn.Module):
    """Buffers: ``prototypes`` (M, C+1, K, d) unit norm; ``initialized`` (M, C+1, K) bool."""

    def __init__(self, num_classes: int, dim: int, prototypes_per_class: int = 1, momentum: float = 0.99,
                 num_modalities: int = 2, seed: int = 0, center: bool = False, assignment: str = "nearest",
                 sinkhorn_epsilon: float = 0.05, sinkhorn_iterations: int = 3, keep_snapshot: bool = False,
                 track_similarities: bool = False):
        super().__init__()
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"bank_momentum: must be in [0, 1), got {momentum!r}")
        if assignment not in ("nearest", "sinkhorn"):
            raise ValueError(f"prototype_assignment: must be nearest or sinkhorn, got {assignment!r}")
        generator = torch.Generator().manual_seed(seed)
        shape = (num_modalities, num_classes + 1, prototypes_per_class)
        self.register_buffer("prototypes", F.normalize(torch.randn(*shape, dim, generator=generator), dim=-1))
        # each slot's own random direction, for seeding slots no segment has reached (rebuilt from the seed)
        self.register_buffer("split_directions", self.prototypes.clone(), persistent=False)
        self.register_buffer("initialized", torch.zeros(shape, dtype=torch.bool))
        self.register_buffer("negatives", torch.zeros(num_modalities, num_classes, dim))
        self.register_buffer("negatives_initialized", torch.zeros(num_modalities, num_classes, dtype=torch.bool))
        # running mean of all segment features per modality; similarities are taken after subtracting it
        self.register_buffer("center", torch.zeros(num_modalities, dim))
        self.register_buffer("center_initialized", torch.zeros(num_modalities, dtype=torch.bool))
        # ppl.decision=midpoint: running means of <f, mu_{m,c}> over c's key segments and over c's negatives
        self.track_similarities = track_similarities
        if track_similarities:
            for name in ("key_similarity", "negative_class_similarity"):
                self.register_buffer(name, torch.zeros(num_modalities, num_classes))
                self.register_buffer(f"{name}_initialized", torch.zeros(num_modalities, num_classes, dtype=torch.bool))
        self.centered = center
        self.momentum = momentum
        self.num_classes = num_classes
        self.assignment = assignment
        self.sinkhorn_epsilon, self.sinkhorn_iterations = sinkhorn_epsilon, sinkhorn_iterations
        self.snapshot: PrototypeBank | None = None
        if keep_snapshot:   # the bank as of the last re-estimation; its epoch is saved with it
            self.snapshot = PrototypeBank(num_classes, dim, prototypes_per_class, momentum, num_modalities, seed,
                                          center, track_similarities=track_similarities)
            self.register_buffer("snapshot_epoch", torch.tensor(-1, dtype=torch.long))
            self._snapshot_epoch = -1          # host copy: no device read per step
            self.register_load_state_dict_post_hook(lambda bank, _: bank._read_snapshot_epoch())

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
        return self._nearest_of(self.similarities(features))

    def similarities(self, features: Tensor) -> Tensor:
        """<f, mu_{m,c,k}> (B, T, M, C+1, K) for every slot, initialised or not."""
        return torch.einsum("btmd,mckd->btmck", features, self.prototypes)

    def _nearest_of(self, sim: Tensor) -> tuple[Tensor, Tensor]:
        return sim.masked_fill(~self.initialized[None, None], float("-inf")).max(dim=-1)

    def midpoint(self) -> Tensor:
        """(M, C) per-class decision threshold of ``ppl.decision=midpoint``: halfway between how similar c's key
        segments and c's negatives are, on average, to c's prototypes; -inf until both are known.

        A segment without class evidence (background, after centring: noise) has cosine ~0 to every direction, so
        comparing it with a negative *prototype* is a coin flip; comparing its similarity to c with what negatives
        score along c is not."""
        both = self.key_similarity_initialized & self.negative_class_similarity_initialized
        middle = (self.key_similarity + self.negative_class_similarity) / 2
        return middle.masked_fill(~both, float("-inf"))

    def _similarity_sums(self, slot_sim: Tensor, members: Tensor, negative_members: Tensor | None,
                         valid: Tensor | None) -> list[Tensor]:
        """Sums and counts (M, C) of s_c = max_k <f, mu_{m,c,k}> over c's key segments and over c's negatives
        (classes with a prototype only), for ``midpoint``. slot_sim: ``similarities`` of the step's features."""
        sim, _ = self._nearest_of(slot_sim)
        sim = sim[..., : self.num_classes]                                     # (B, T, M, C)
        known = torch.isfinite(sim)
        sim = sim.masked_fill(~known, 0.0)
        keys = (members[..., : self.num_classes] & known).to(sim.dtype)
        if negative_members is None:
            negatives = torch.zeros_like(keys)
        elif negative_members.dim() == 2:   # (B, C): every (real) segment of a video without c
            negatives = negative_members.bool()[:, None, None, :].expand_as(known)
            if valid is not None:
                negatives = negatives & valid[:, :, None, None]
            negatives = (negatives & known).to(sim.dtype)
        else:
            negatives = (negative_members.bool() & known).to(sim.dtype)
        return [(keys * sim).sum(dim=(0, 1)), keys.sum(dim=(0, 1)), (negatives * sim).sum(dim=(0, 1)),
                negatives.sum(dim=(0, 1))]

    def negative_similarity(self, features: Tensor) -> Tensor:
        """<f, nu_{m,c}> (B, T, M, C) for unit-norm features; -inf where the class has no negative yet."""
        sim = torch.einsum("btmd,mcd->btmc", features, self.negatives)
        return sim.masked_fill(~self.negatives_initialized[None, None], float("-inf"))

    @torch.no_grad()
    def assign(self, features: Tensor, members: Tensor, reducer: Reducer = identity_reducer,
               sim: Tensor | None = None) -> Tensor:
        """Which of its class's K slots (initialised or not) each member updates: one-hot (B, T, M, C+1, K),
        zero for non-members. features (B, T, M, d) from ``embed``; members (B, T, M, C+1) bool; sim: their
        ``similarities`` when the caller has them already."""
        sim = self.similarities(features) if sim is None else sim
        if self.assignment == "sinkhorn":
            codes = balanced_codes(sim, members, self.sinkhorn_epsilon, self.sinkhorn_iterations, reducer)
            tied = codes >= codes.amax(dim=-1, keepdim=True) * (1.0 - TIE_TOLERANCE)
            choice = sim.masked_fill(~tied, float("-inf")).argmax(dim=-1)     # ties go to the nearest slot
        else:
            choice = sim.argmax(dim=-1)
        return F.one_hot(choice, self.prototypes.shape[2]).to(features.dtype) * members.unsqueeze(-1).to(features.dtype)

    @torch.no_grad()
    def collect(self, features: Tensor, members: Tensor, negative_members: Tensor | None = None,
                reducer: Reducer = identity_reducer, valid: Tensor | None = None) -> Tensor:
        """Pack sums and counts per (m, c, k) — and per (m, c) for negatives — into one flat buffer.

        features (B, T, M, d) raw momentum features (embedded here); members (B, T, M, C+1) bool;
        negative_members (B, T, M, C) bool, or (B, C) for whole videos (T times cheaper), or None. Members
        go to slots by ``assign`` (``reducer`` carries sinkhorn's column sums; nearest never calls it).
        """
        raw = features.float()
        features = self.embed(raw)
        slot_sim = self.similarities(features)                                 # (B, T, M, C+1, K)
        weights = self.assign(features, members, reducer, sim=slot_sim)
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
        if valid is None:
            center_sums = raw.sum(dim=(0, 1))                                  # (M, d)
            center_counts = raw.new_full((raw.shape[2],), float(raw.shape[0] * raw.shape[1]))
        else:   # variable length: only real segments (B, T) feed the centre; members must be masked already
            center_sums = torch.einsum("bt,btmd->md", valid.to(raw.dtype), raw)
            center_counts = valid.to(raw.dtype).sum().expand(raw.shape[2])
        parts = [sums, counts, neg_sums, neg_counts, center_sums, center_counts]
        if self.track_similarities:
            parts += self._similarity_sums(slot_sim, members, negative_members, valid)
        return torch.cat([part.reshape(-1) for part in parts])

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
        shapes = [self.prototypes.shape, self.initialized.shape, self.negatives.shape,
                  self.negatives_initialized.shape, self.center.shape, self.center_initialized.shape]
        if self.track_similarities:
            shapes += [self.negatives_initialized.shape] * 4
        for shape in shapes:
            n = int(torch.Size(shape).numel())
            parts.append(buffer[start:start + n].view(shape).to(dtype))
            start += n
        sums, counts, neg_sums, neg_counts, center_sums, center_counts = parts[:6]
        if self.track_similarities:   # before the prototypes move: the sums were taken against these
            for name, (total, count) in zip(("key_similarity", "negative_class_similarity"), (parts[6:8], parts[8:10])):
                self._blend_scalar(name, total, count)
        prototypes = self._blend(self.prototypes, self.initialized, sums, counts)
        self.prototypes.copy_(self._seed_empty_slots(prototypes, sums, counts))
        self.initialized |= counts > 0
        self.negatives.copy_(self._blend(self.negatives, self.negatives_initialized, neg_sums, neg_counts))
        self.negatives_initialized |= neg_counts > 0
        center_mean = center_sums / center_counts.clamp_min(1.0).unsqueeze(-1)
        blended = self.momentum * self.center + (1.0 - self.momentum) * center_mean
        self.center.copy_(torch.where(self.center_initialized.unsqueeze(-1), blended, center_mean))
        self.center_initialized |= center_counts > 0
        return counts

    def _blend_scalar(self, name: str, total: Tensor, count: Tensor) -> None:
        """Running mean of a per-(m, c) similarity, with the bank's momentum; the first update sets it."""
        current, initialized = self.get_buffer(name), self.get_buffer(f"{name}_initialized")
        mean = total / count.clamp_min(1.0)
        blended = torch.where(initialized, self.momentum * current + (1.0 - self.momentum) * mean, mean)
        current.copy_(torch.where(count > 0, blended, current))
        initialized |= count > 0

    def _seed_empty_slots(self, prototypes: Tensor, sums: Tensor, counts: Tensor) -> Tensor:
        """Slots still never assigned, in a class that has key segments this step, move next to that step's class
        mean, each pushed along its own random initial direction (LBG splitting). Left at their random start
        they would lose every segment to the slots already set, and K > 1 would collapse to the few slots the
        first steps happened to hit. They stay uninitialised (no pseudo-label) until a segment is assigned."""
        class_mean = F.normalize(sums.sum(dim=2), dim=-1).unsqueeze(2)              # (M, C+1, 1, d)
        direction = self.split_directions - (self.split_directions * class_mean).sum(-1, keepdim=True) * class_mean
        seeded = F.normalize(class_mean + SPLIT_SPREAD * F.normalize(direction, dim=-1), dim=-1)
        has_keys = counts.sum(dim=-1, keepdim=True) > 0                              # (M, C+1, 1)
        empty = (has_keys & (counts == 0) & ~self.initialized).unsqueeze(-1)        # (M, C+1, K, 1)
        return torch.where(empty, seeded, prototypes)

    @torch.no_grad()
    def update(self, features: Tensor, members: Tensor, reducer: Reducer = identity_reducer,
               negative_members: Tensor | None = None, valid: Tensor | None = None) -> Tensor:
        """One bank step: collect -> reducer (e.g. all-reduce SUM of the packed buffer) -> apply."""
        return self.apply(reducer(self.collect(features, members, negative_members, reducer, valid)))

    @torch.no_grad()
    def frozen_at(self, epoch: int) -> "PrototypeBank":
        """The bank as it was when ``epoch``'s first call came (re-estimation's E-step), copied then."""
        if self.snapshot is None:
            raise ValueError("ppl.reestimate_every: this bank keeps no snapshot (built with keep_snapshot=False)")
        if self._snapshot_epoch != epoch:
            for name, buffer in self.snapshot.named_buffers():
                buffer.copy_(self.get_buffer(name))
            self.snapshot_epoch.fill_(epoch)
            self._snapshot_epoch = epoch
        return self.snapshot

    def _read_snapshot_epoch(self) -> None:
        self._snapshot_epoch = int(self.snapshot_epoch)   # once per load_state_dict (a resumed run)


def balanced_codes(sim: Tensor, members: Tensor, epsilon: float, iterations: int, reducer: Reducer) -> Tensor:
    """Sinkhorn-Knopp as in SwAV (Caron et al. 2020): per (modality, class), the step's key segments of ALL
    ranks are spread evenly over the class's K slots. sim (B, T, M, C+1, K) cosines; members (B, T, M, C+1).

    Codes start as softmax(sim / epsilon) per segment; each iteration scales every slot's column to n/K
    (n = the class's key segments over all ranks: the column sums go through ``reducer``, one all-reduce
    per iteration) and renormalises each segment's row to 1. Rows of non-members are 0.
    """
    mask = members.unsqueeze(-1).to(sim.dtype)                                    # (B, T, M, C+1, 1)
    codes = torch.softmax(sim / epsilon, dim=-1) * mask
    for _ in range(iterations):
        column = reducer(codes.sum(dim=(0, 1)))                                   # (M, C+1, K), all ranks
        per_slot = column.sum(dim=-1, keepdim=True) / sim.shape[-1]               # n / K
        codes = codes * (per_slot / column.clamp_min(1e-12))
        codes = codes / codes.sum(dim=-1, keepdim=True).clamp_min(1e-12) * mask
    return codes
