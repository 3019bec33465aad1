"""Every pseudo-labeler behind make_pseudo_labels, its invariants and its own rule: pl, ppl_hard, ppl_soft,
em_mil (Luo et al. 2020) and poibin (PoiBin-style, reconstructed); the pseudo-label contrastive loss; the
re-estimation schedule (the bank pseudo-labels are read from); and a few training steps with each."""
import itertools

import pytest
import torch
import torch.nn.functional as F

from model.config import NetworkConfig, PPLConfig
from model.losses import prototype_contrastive_loss, pseudo_label_loss
from model.network import AudioVisualParser, ParserOutput
from model.ppl import PPL
from model.prototypes import PrototypeBank, select_in_video_negatives, select_key_segments
from model.pseudo_labels import (PseudoLabels, count_matched_probabilities, em_mil_phase, em_mil_pseudo_labels,
                                 key_instance_targets, key_instances, poibin_pseudo_labels, prototype_pseudo_labels)

B, T, C = 4, 10, 25
AUDIO, VISUAL = 0, 1
TINY = dict(model_dim=16, audio_hidden=8, visual_hidden=16)
# (labeler, epoch, extra config): em_mil twice, once in an E-epoch and once in an M-epoch
LABELERS = [("pl", 1, {}), ("ppl_hard", 1, {}), ("ppl_soft", 1, {}), ("em_mil", 0, {}), ("em_mil", 1, {}),
            ("poibin", 1, {}), ("ppl_soft", 1, {"prototypes_per_class": 3, "prototype_assignment": "sinkhorn"}),
            ("ppl_soft", 1, {"pl_evidence": "prototypes_and_teacher"}), ("oracle", 1, {}),
            ("ppl_soft", 1, {"background": "in_video_negatives", "background_max_prob": 1.0}),
            ("ppl_soft", 1, {"decision": "midpoint"})]
IDS = ["pl", "ppl_hard", "ppl_soft", "em_mil_E", "em_mil_M", "poibin", "ppl_soft_sinkhorn_k3", "ppl_soft_rectified",
       "oracle", "ppl_soft_in_video_negatives", "ppl_soft_midpoint"]


def batch(seed=0, batch_size=B):
    g = torch.Generator().manual_seed(seed)
    inputs = (torch.randn(batch_size, T, 128, generator=g), torch.randn(batch_size, T, 2048, generator=g),
              torch.randn(batch_size, T, 512, generator=g))
    weak = (torch.rand(batch_size, C, generator=g) < 0.15).float()
    weak[:, 0] = 1.0
    return inputs, weak


def method(labeler, seed=0, **options):
    cfg = PPLConfig(labeler=labeler, **{"warmup_epochs": 0, "key_min_prob": 0.0, **options})
    torch.manual_seed(seed)
    return PPL(NetworkConfig(key_instance_head=labeler == "em_mil", **TINY), cfg, seed=seed)


def dense_truth(weak, seed=0):
    """Per-segment truth consistent with the weak labels (B, T, M, C): each labelled class on in a random half."""
    g = torch.Generator().manual_seed(seed + 7)
    return ((torch.rand(weak.shape[0], T, 2, C, generator=g) < 0.5) & weak.bool()[:, None, None, :]).float()


def labels_of(labeler, epoch, options, seed=0):
    """One step's pseudo-labels, after two bank updates so prototype labelers have prototypes (and midpoint its
    similarity means, taken against the prototypes of the step before)."""
    ppl = method(labeler, seed, **options)
    inputs, weak = batch(seed)
    truth = dense_truth(weak, seed)
    for _ in range(2):
        step = ppl.losses(ppl.network(*inputs), inputs, weak, epoch, dense_truth=truth)
        ppl.after_optimizer_step(ppl.network, step.momentum, weak)
    return ppl.losses(ppl.network(*inputs), inputs, weak, epoch, dense_truth=truth).labels, weak


# ---------------------------------------------------------------------------------------------
# invariants of every labeler
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("labeler, epoch, options", LABELERS, ids=IDS)
def test_labels_have_the_frame_layout_and_targets_in_the_unit_interval(labeler, epoch, options):
    labels, _ = labels_of(labeler, epoch, options)
    assert labels.targets.shape == labels.weights.shape == (B, T, 2, C)
    assert labels.assignment.shape == (B, T, 2) and labels.assignment.dtype == torch.long
    assert ((labels.targets >= 0) & (labels.targets <= 1)).all()
    assert ((labels.weights >= 0) & (labels.weights <= 1)).all()
    assert not labels.targets.requires_grad


@pytest.mark.parametrize("labeler, epoch, options", LABELERS, ids=IDS)
def test_a_class_absent_from_the_video_is_zero_with_weight_one_in_every_segment(labeler, epoch, options):
    labels, weak = labels_of(labeler, epoch, options)
    absent = ~weak.bool()[:, None, None, :].expand_as(labels.targets)
    assert absent.any()
    assert (labels.targets[absent] == 0).all() and (labels.weights[absent] == 1).all()


@pytest.mark.parametrize("labeler, epoch, options", LABELERS, ids=IDS)
def test_same_inputs_give_the_same_labels(labeler, epoch, options):
    first, _ = labels_of(labeler, epoch, options)
    second, _ = labels_of(labeler, epoch, options)
    for name in ("targets", "weights", "assignment", "key_targets"):
        a, b = getattr(first, name), getattr(second, name)
        assert (a is None and b is None) or torch.equal(a, b), name


@pytest.mark.parametrize("labeler, epoch, options", LABELERS, ids=IDS)
def test_labelled_classes_get_pseudo_label_loss_except_in_em_mils_e_step(labeler, epoch, options):
    """Not a degenerate labeler: some labelled (segment, modality, class) carries loss (none in EM-MIL's
    E-epochs, where the key-instance head learns instead)."""
    labels, weak = labels_of(labeler, epoch, options)
    labelled = weak.bool()[:, None, None, :].expand_as(labels.weights)
    e_step = labeler == "em_mil" and em_mil_phase(epoch, method(labeler).cfg) == "E"
    assert (labels.weights[labelled].sum() == 0) == e_step
    assert (labels.key_targets is not None) == e_step


# ---------------------------------------------------------------------------------------------
# ppl_soft with pl_evidence=prototypes_and_teacher; the oracle
# ---------------------------------------------------------------------------------------------

def rectified_case(seed=0):
    """A bank after one update, momentum features and teacher probabilities of a second step."""
    ppl = method("ppl_soft", seed, pl_evidence="prototypes_and_teacher")
    inputs, weak = batch(seed)
    step = ppl.losses(ppl.network(*inputs), inputs, weak, 1)
    ppl.after_optimizer_step(ppl.network, step.momentum, weak)
    momentum = ppl.momentum(ppl.network(*inputs), *inputs)
    return ppl, momentum, weak


def test_rectified_labels_add_the_prototype_margin_to_the_teachers_logit():
    ppl, momentum, weak = rectified_case()
    bank, cfg = ppl.bank, ppl.cfg
    labels = prototype_pseudo_labels(momentum.features, bank, weak, cfg, hard=False, teacher_prob=momentum.frame_prob)
    embedded = bank.embed(momentum.features)
    margin = (bank.nearest(embedded)[0][..., :C] - bank.negative_similarity(embedded)) / cfg.tau
    expected = torch.sigmoid(margin + torch.logit(momentum.frame_prob).clamp(-13.8, 13.8))
    usable = (labels.weights > 0) & weak.bool()[:, None, None, :] & torch.isfinite(margin)
    assert usable.sum() > 20
    assert torch.allclose(labels.targets[usable], expected[usable], atol=1e-6)
    prototypes_only = torch.sigmoid(margin)
    assert (labels.targets[usable] - prototypes_only[usable]).abs().max() > 1e-3   # the teacher's odds count


def test_an_undecided_teacher_leaves_the_prototype_labels_unchanged():
    ppl, momentum, weak = rectified_case()
    undecided = torch.full_like(momentum.frame_prob, 0.5)                            # logit 0
    rectified = prototype_pseudo_labels(momentum.features, ppl.bank, weak, ppl.cfg, hard=False, teacher_prob=undecided)
    plain_cfg = PPLConfig(**{**vars(ppl.cfg), "pl_evidence": "prototypes"})
    plain = prototype_pseudo_labels(momentum.features, ppl.bank, weak, plain_cfg, hard=False)
    assert torch.allclose(rectified.targets, plain.targets, atol=1e-6)
    assert torch.equal(rectified.weights, plain.weights)


def test_a_saturated_teacher_can_still_be_outvoted_by_the_prototypes():
    ppl, momentum, weak = rectified_case()
    certain = torch.ones_like(momentum.frame_prob)                                   # logit +inf before the clamp
    labels = prototype_pseudo_labels(momentum.features, ppl.bank, weak, ppl.cfg, hard=False, teacher_prob=certain)
    assert torch.isfinite(labels.targets).all()
    assert (labels.targets[weak.bool()[:, None, None, :].expand_as(labels.targets)] < 1.0).any()


def test_rectified_labels_need_per_class_competition():
    with pytest.raises(ValueError, match="ppl.pl_evidence: prototypes_and_teacher needs ppl.competition=per_class"):
        PPLConfig(pl_evidence="prototypes_and_teacher", competition="across_classes",
                  background="low_confidence").validate()
    with pytest.raises(ValueError, match="ppl.pl_evidence: must be prototypes or prototypes_and_teacher"):
        PPLConfig(pl_evidence="teacher").validate()


def test_in_video_negatives_are_the_least_likely_segments_of_the_classs_own_videos():
    prob = torch.rand(3, T, 2, C, generator=torch.Generator().manual_seed(3))
    weak = torch.zeros(3, C)
    weak[0, [1, 4]] = 1.0
    weak[1, 4] = 1.0
    valid = torch.ones(3, T, dtype=torch.bool)
    valid[1, 6:] = False                                                        # video 1 is padded after 6
    prob[1, 6:] = 0.0                                                           # padding's probability is 0
    cfg = PPLConfig(background="in_video_negatives", background_top_k=2, background_max_prob=0.6)
    chosen = select_in_video_negatives(prob, weak, cfg, valid)
    for b in range(3):
        for m in range(2):
            for c in range(C):
                real = valid[b].nonzero().squeeze(1)
                lowest = real[prob[b, real, m, c].argsort()[:2]]
                expected = {int(t) for t in lowest if prob[b, t, m, c] < 0.6} if weak[b, c] else set()
                assert set(chosen[b, :, m, c].nonzero().squeeze(1).tolist()) == expected, (b, m, c)
    assert chosen[0].any() and not chosen[2].any()                              # video 2 has no labelled class


def test_in_video_negatives_build_the_negative_prototype_from_those_segments():
    ppl = method("ppl_soft", background="in_video_negatives", background_max_prob=1.0, bank_momentum=0.0,
                 center_features=False)
    inputs, weak = batch()
    momentum = ppl.momentum(ppl.network(*inputs), *inputs)
    chosen = select_in_video_negatives(momentum.frame_prob, weak, ppl.cfg).float()  # (B, T, M, C)
    ppl.after_optimizer_step(ppl.network, momentum, weak)
    unit = F.normalize(momentum.features, dim=-1)
    expected = F.normalize(torch.einsum("btmc,btmd->mcd", chosen, unit), dim=-1)
    has = chosen.sum(dim=(0, 1)) > 0                                            # (M, C)
    assert has.sum() >= 2 and torch.equal(ppl.bank.negatives_initialized, has)
    assert torch.allclose(ppl.bank.negatives[has], expected[has], atol=1e-5)


def test_midpoint_is_halfway_between_the_mean_key_and_negative_similarity_to_the_class():
    ppl = method("ppl_soft", decision="midpoint")
    bank = ppl.bank
    inputs, weak = batch()
    momentum = ppl.momentum(ppl.network(*inputs), *inputs)
    ppl.after_optimizer_step(ppl.network, momentum, weak)                    # sets the prototypes
    before = [(bank.get_buffer(n).clone(), bank.get_buffer(f"{n}_initialized").clone())
              for n in ("key_similarity", "negative_class_similarity")]
    members = select_key_segments(momentum.frame_prob, weak, ppl.cfg)[..., :C]
    sim = bank.nearest(bank.embed(momentum.features))[0][..., :C]             # against the prototypes just set
    negatives = (~weak.bool())[:, None, None, :].expand_as(sim)
    ppl.after_optimizer_step(ppl.network, momentum, weak)                    # the update under test
    for (name, chosen), (old, was_set) in zip((("key_similarity", members), ("negative_class_similarity", negatives)),
                                              before):
        chosen = chosen & torch.isfinite(sim)                                 # classes with a prototype only
        count = chosen.sum(dim=(0, 1))
        mean = (sim.masked_fill(~chosen, 0.0)).sum(dim=(0, 1)) / count.clamp_min(1)
        blended = torch.where(was_set, 0.99 * old + 0.01 * mean, mean)       # bank_momentum 0.99; the first sets it
        expected = torch.where(count > 0, blended, old)
        assert torch.allclose(bank.get_buffer(name), expected, atol=1e-6), name
    known = torch.isfinite(bank.midpoint())
    assert known.sum() >= 2
    middle = (bank.key_similarity + bank.negative_class_similarity) / 2
    assert torch.allclose(bank.midpoint()[known], middle[known])


def test_midpoint_labels_compare_the_class_similarity_with_the_threshold():
    ppl = method("ppl_soft", decision="midpoint")
    inputs, weak = batch()
    for _ in range(2):
        momentum = ppl.momentum(ppl.network(*inputs), *inputs)
        ppl.after_optimizer_step(ppl.network, momentum, weak)
    labels = prototype_pseudo_labels(momentum.features, ppl.bank, weak, ppl.cfg, hard=False)
    sim = ppl.bank.nearest(ppl.bank.embed(momentum.features))[0][..., :C]
    expected = torch.sigmoid((sim - ppl.bank.midpoint()) / ppl.cfg.tau)
    usable = labels.weights.bool() & weak.bool()[:, None, None, :]
    assert usable.sum() > 10
    assert torch.allclose(labels.targets[usable], expected[usable], atol=1e-6)
    unknown = ~torch.isfinite(ppl.bank.midpoint())[None, None].expand_as(usable) & weak.bool()[:, None, None, :]
    assert unknown.any() and (labels.weights[unknown] == 0).all()            # no threshold yet: no loss


def test_midpoint_needs_per_class_negatives():
    with pytest.raises(ValueError, match="ppl.decision: midpoint needs ppl.competition=per_class"):
        PPLConfig(decision="midpoint", background="low_confidence").validate()


def test_oracle_labels_are_the_segment_truth_inside_the_weak_label():
    labels, weak = labels_of("oracle", 1, {})
    truth = dense_truth(weak)
    assert torch.equal(labels.targets, truth) and (labels.weights == 1).all()
    assert truth.sum() > 0


def test_oracle_without_segment_truth_is_refused():
    ppl = method("oracle")
    inputs, weak = batch()
    with pytest.raises(ValueError, match="ppl.labeler: oracle needs per-segment truth"):
        ppl.losses(ppl.network(*inputs), inputs, weak, 1)


# ---------------------------------------------------------------------------------------------
# em_mil
# ---------------------------------------------------------------------------------------------

def test_em_mil_alternates_e_and_m_blocks_after_warm_up():
    cfg = PPLConfig(labeler="em_mil", warmup_epochs=2, em_mil_alternate_epochs=1)
    assert [em_mil_phase(e, cfg) for e in range(7)] == list("EEEMEME")
    cfg = PPLConfig(labeler="em_mil", warmup_epochs=1, em_mil_alternate_epochs=2)
    assert [em_mil_phase(e, cfg) for e in range(8)] == list("EEEMMEEM")


def test_key_instances_follow_the_authors_threshold_on_the_mean_of_both_streams():
    key_prob = torch.tensor([[0.1, 0.2, 0.9, 0.5, 0.1], [0.3, 0.2, 0.7, 0.9, 0.1]]).T[None]   # (1, T=5, M=2)
    mean = key_prob.mean(dim=2)                                   # [0.2, 0.2, 0.8, 0.7, 0.1]
    threshold = mean.mean() + 0.15 * (0.8 - 0.1)                  # 0.4 + 0.105
    assert torch.equal(key_instances(key_prob, 0.15), mean > threshold)
    assert key_instances(key_prob, 0.15).tolist() == [[False, False, True, True, False]]


def asynchronous_video():
    """One video, two labelled classes that never co-occur: class 1 is audio-only in segments 0-3, class 2 is
    visual-only in segments 6-9. The classifier knows it exactly; the key-instance head marks every segment
    with an event (the best a class-agnostic head can do)."""
    truth = torch.zeros(1, T, 2, C)
    truth[0, 0:4, AUDIO, 1] = 1.0
    truth[0, 6:10, VISUAL, 2] = 1.0
    weak = torch.zeros(1, C)
    weak[0, [1, 2]] = 1.0
    frame_prob = 0.05 + 0.9 * truth
    key_prob = torch.full((1, T, 2), 0.1)
    key_prob[0, 0:4] = key_prob[0, 6:10] = 0.9
    online = ParserOutput(torch.zeros(1, T, 2, 16), frame_prob, frame_prob.amax(dim=1), frame_prob.amax(dim=(1, 2)),
                          key_prob)
    return online, weak, truth


def test_em_mil_keeps_its_all_events_co_occur_assumption_where_it_is_wrong():
    """EM-MIL gives every labelled class, in both modalities, the same key instances: class 1 (audio only, 0-3)
    is labelled present in segments 6-9 and in the visual stream, class 2 the other way round."""
    online, weak, truth = asynchronous_video()
    labels = em_mil_pseudo_labels(online, weak, PPLConfig(labeler="em_mil", warmup_epochs=0), epoch=1)   # M-step
    targets = labels.targets[0]                                             # (T, M, C)
    assert torch.equal(targets[..., 1], targets[..., 2])                    # the same for both classes ...
    assert torch.equal(targets[:, AUDIO], targets[:, VISUAL])               # ... and both modalities
    events = torch.zeros(T)
    events[0:4] = events[6:10] = 1.0
    assert torch.equal(targets[:, AUDIO, 1], events)                        # the key instances of the video
    wrong = (targets[..., 1:3] >= 0.5) & (truth[0, ..., 1:3] == 0)
    assert wrong.sum() == 3 * 8                                             # 8 true positives of 32 targets
    assert labels.weights[0, :, :, 1:3].eq(1).all()                         # and the M-step trains on all of them


def test_em_mil_e_step_teaches_the_key_head_the_union_of_above_mean_segments():
    online, weak, _ = asynchronous_video()
    events = torch.zeros(1, T)
    events[0, 0:4] = events[0, 6:10] = 1.0
    assert torch.equal(key_instance_targets(online.frame_prob, weak), events)
    labels = em_mil_pseudo_labels(online, weak, PPLConfig(labeler="em_mil", warmup_epochs=0), epoch=0)   # E-step
    assert torch.equal(labels.key_targets, events)
    assert labels.weights[0, :, :, 1:3].eq(0).all()


def test_key_instance_head_is_optional_and_never_trains_the_parser():
    default = AudioVisualParser(NetworkConfig(**TINY))
    with_head = AudioVisualParser(NetworkConfig(key_instance_head=True, **TINY))
    names = {n for n, _ in default.named_parameters()}
    extra = {n for n, _ in with_head.named_parameters()} - names
    assert names < {n for n, _ in with_head.named_parameters()} and all(n.startswith("key_instance.") for n in extra)
    inputs, _ = batch()
    assert default(*inputs).key_prob is None
    out = with_head(*inputs)
    assert out.key_prob.shape == (B, T, 2) and ((out.key_prob > 0) & (out.key_prob < 1)).all()
    out.key_prob.sum().backward()
    trained = {n for n, p in with_head.named_parameters() if p.grad is not None}
    assert trained == extra                                               # the head reads detached features


def test_em_mil_without_its_head_is_refused_naming_the_key():
    with pytest.raises(ValueError, match="ppl.labeler.*model.key_instance_head"):
        PPL(NetworkConfig(**TINY), PPLConfig(labeler="em_mil"))


def test_em_mil_e_step_loss_reaches_the_key_head():
    ppl = method("em_mil")
    inputs, weak = batch()
    out = ppl.network(*inputs)
    labels = ppl.losses(out, inputs, weak, epoch=0).labels
    pseudo_label_loss(out, labels).backward()
    head = [p.grad for p in ppl.network.key_instance.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in head)


# ---------------------------------------------------------------------------------------------
# poibin
# ---------------------------------------------------------------------------------------------

def poisson_binomial_pmf(prob: torch.Tensor) -> torch.Tensor:
    """P(N = n), n = 0..T, of the number of successes of independent Bernoulli(prob_t) (dynamic programme)."""
    pmf = torch.zeros(prob.shape[0] + 1, dtype=torch.float64)
    pmf[0] = 1.0
    for p in prob.double():
        pmf = torch.cat([pmf[:1] * (1 - p), pmf[1:] * (1 - p) + pmf[:-1] * p])
    return pmf


def test_poibin_expected_count_of_positives_matches_its_estimate():
    ppl = method("poibin", poibin_positive_fraction=0.3)
    inputs, weak = batch()
    out = ppl.network(*inputs)
    labels = poibin_pseudo_labels(out.frame_prob, weak, ppl.cfg)
    for b, m, c in itertools.product(range(B), range(2), range(C)):
        if weak[b, c]:
            pmf = poisson_binomial_pmf(labels.targets[b, :, m, c])
            expected = (torch.arange(T + 1, dtype=torch.float64) * pmf).sum()
            assert abs(float(expected) - 0.3 * T) < 1e-4, (b, m, c)


def test_poibin_labels_are_the_models_probabilities_shifted_by_one_logit_per_class():
    """The closest product of Bernoullis with the required mean: one shift b per (video, modality, class),
    so the order of the model's segment probabilities is kept."""
    prob = torch.rand(3, T, 2, 4, generator=torch.Generator().manual_seed(1)) * 0.98 + 0.01
    matched = count_matched_probabilities(prob, expected_count=6.0)
    shift = torch.logit(matched.double()) - torch.logit(prob.double())
    assert torch.allclose(shift, shift[:, :1].expand_as(shift), atol=1e-3)
    assert torch.allclose(matched.sum(dim=1), torch.full((3, 2, 4), 6.0), atol=1e-4)


def test_poibin_forces_the_prior_count_on_a_modality_without_the_event():
    """The fixed proportion of positives is PoiBin's strong prior: the visual stream of an audio-only event
    is still given poibin_positive_fraction * T expected positives."""
    online, weak, _ = asynchronous_video()
    labels = poibin_pseudo_labels(online.frame_prob, weak, PPLConfig(labeler="poibin", poibin_positive_fraction=0.6))
    assert abs(float(labels.targets[0, :, VISUAL, 1].sum()) - 6.0) < 1e-4      # class 1 has no visual segment
    assert torch.allclose(labels.targets[0, :, VISUAL, 1], torch.full((T,), 0.6), atol=1e-5)   # flat: 0.6 each


# ---------------------------------------------------------------------------------------------
# the pseudo-label contrastive loss
# ---------------------------------------------------------------------------------------------

def contrastive_case(k=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    bank = PrototypeBank(6, 8, prototypes_per_class=k, seed=seed)
    bank.initialized[:, :4] = True                       # classes 0-3 have prototypes; 4, 5 and background not
    features = torch.randn(2, 5, 2, 8, generator=g)
    assignment = torch.randint(0, 6, (2, 5, 2), generator=g)
    assignment[0, 0, 0] = -1                             # undecided
    labels = PseudoLabels(torch.zeros(2, 5, 2, 6), torch.ones(2, 5, 2, 6), assignment)
    return bank, features, labels


def test_contrastive_loss_is_infonce_against_the_nearest_prototype_of_every_usable_class():
    bank, features, labels = contrastive_case(k=2)
    tau = 0.2
    expected, n = 0.0, 0
    unit = F.normalize(features, dim=-1)
    for b, t, m in itertools.product(range(2), range(5), range(2)):
        target = int(labels.assignment[b, t, m])
        if target < 0 or target >= 4:                    # undecided, or its class has no prototype
            continue
        logits = torch.stack([(bank.prototypes[m, c] @ unit[b, t, m]).max() for c in range(4)]) / tau
        expected += float(torch.logsumexp(logits, 0) - logits[target])
        n += 1
    assert n > 0
    loss = prototype_contrastive_loss(features, bank, labels, tau)
    assert float(loss) == pytest.approx(expected / n, rel=1e-5)


def test_contrastive_loss_pulls_a_feature_to_its_pseudo_labels_prototype():
    bank, features, labels = contrastive_case(k=3)
    labels.assignment[:] = 2
    features = features.clone().requires_grad_(True)
    optimiser = torch.optim.SGD([features], lr=0.5)

    def margin():
        sim, _ = bank.nearest(bank.embed(features.detach()))
        return (sim[..., 2] - sim[..., [0, 1, 3]].amax(-1)).mean()

    before, first = margin(), None
    for _ in range(20):
        loss = prototype_contrastive_loss(features, bank, labels, 0.1)
        first = float(loss.detach()) if first is None else first
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert margin() > before + 0.1 and float(loss.detach()) < first


def test_contrastive_positive_is_the_nearest_of_its_classs_k_prototypes():
    """With K > 1 a feature sitting on any one of its class's slots is a perfect positive."""
    bank, _, labels = contrastive_case(k=3)
    labels.assignment[:] = 1
    on_slot = bank.prototypes[:, 1, 2][None, None].expand(2, 5, 2, 8).clone()   # class 1, slot 2, per modality
    with_k = prototype_contrastive_loss(on_slot, bank, labels, 0.1)
    bank.initialized[:, 1, 2] = False                                             # hide that slot
    without = prototype_contrastive_loss(on_slot, bank, labels, 0.1)
    assert float(with_k) < float(without)


def test_contrastive_loss_ignores_classes_without_prototypes_and_undecided_segments():
    bank, features, labels = contrastive_case()
    loss = prototype_contrastive_loss(features, bank, labels, 0.1)
    bank.prototypes[:, 4:] = torch.randn_like(bank.prototypes[:, 4:])            # uninitialised: never compared
    changed = labels.assignment.clone()
    changed[changed >= 4] = -1
    again = prototype_contrastive_loss(features, bank, PseudoLabels(labels.targets, labels.weights, changed), 0.1)
    assert torch.equal(loss, again)
    none = PseudoLabels(labels.targets, labels.weights, torch.full_like(labels.assignment, -1))
    assert float(prototype_contrastive_loss(features, bank, none, 0.1)) == 0.0


# ---------------------------------------------------------------------------------------------
# re-estimation schedule (EM reading of "iteratively re-estimated")
# ---------------------------------------------------------------------------------------------

def run_epochs(ppl, epochs, steps=2):
    """Train-free steps: labels from the labelling bank, then a bank update; returns, per (epoch, step), the
    labelling bank's prototypes and the live bank's prototypes just before the step."""
    seen = []
    for epoch in epochs:
        for step in range(steps):
            inputs, weak = batch(seed=10 * epoch + step)
            live = ppl.bank.prototypes.clone()
            out = ppl.losses(ppl.network(*inputs), inputs, weak, epoch)
            labelling = ppl.labelling_bank(epoch)
            expected = prototype_pseudo_labels(out.momentum.features, labelling, weak, ppl.cfg, hard=False)
            assert torch.equal(out.labels.targets, expected.targets)
            seen.append((epoch, step, labelling.prototypes.clone(), live, labelling is ppl.bank))
            ppl.after_optimizer_step(ppl.network, out.momentum, weak)
    return seen


def test_pseudo_labels_come_from_the_bank_frozen_when_each_cycle_began():
    ppl = method("ppl_soft", reestimate_every=2, warmup_epochs=1, ema_decay=None)
    seen = run_epochs(ppl, range(6))
    live_at = {(e, s): live for e, s, _, live, _ in seen}
    for epoch, step, labelling, _, is_live in seen:
        if epoch == 0:                                     # warm-up: the live bank
            assert is_live
            continue
        cycle = 1 + (epoch - 1) // 2 * 2                   # cycles start at epochs 1, 3, 5
        assert not is_live and torch.equal(labelling, live_at[(cycle, 0)]), (epoch, step)
    assert not torch.equal(live_at[(1, 0)], live_at[(2, 1)])   # the live bank moved during the cycle


def test_without_reestimation_every_step_reads_the_live_bank():
    ppl = method("ppl_soft", ema_decay=None)
    assert all(is_live for *_, is_live in run_epochs(ppl, range(3)))
    assert ppl.bank.snapshot is None and "snapshot_epoch" not in ppl.bank.state_dict()


def test_a_resumed_run_keeps_the_frozen_bank_of_its_cycle():
    ppl = method("ppl_soft", reestimate_every=2, warmup_epochs=0, ema_decay=None)
    run_epochs(ppl, [0, 1, 2])                             # mid-cycle of the cycle begun at epoch 2
    frozen = ppl.labelling_bank(2).prototypes.clone()
    resumed = method("ppl_soft", reestimate_every=2, warmup_epochs=0, ema_decay=None, seed=1)
    resumed.load_state_dict(ppl.state_dict())
    assert torch.equal(resumed.labelling_bank(3).prototypes, frozen)                 # same cycle: same E-step
    assert not torch.equal(resumed.bank.prototypes, frozen)
    assert torch.equal(resumed.labelling_bank(4).prototypes, resumed.bank.prototypes)  # next cycle: re-estimated


# ---------------------------------------------------------------------------------------------
# training steps and config
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("labeler, epoch, options", LABELERS + [("none", 1, {})], ids=IDS + ["none"])
def test_a_few_steps_with_each_labeler_lower_the_loss_on_a_tiny_batch(labeler, epoch, options):
    ppl = method(labeler, contrastive_weight=0.1, **options)
    inputs, weak = batch(batch_size=8)
    truth = dense_truth(weak)
    optimiser = torch.optim.Adam(ppl.network.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        out = ppl.network(*inputs)
        step = ppl.losses(out, inputs, weak, epoch, dense_truth=truth)
        optimiser.zero_grad()
        step.losses.total.backward()
        optimiser.step()
        ppl.after_optimizer_step(ppl.network, step.momentum, weak)
        losses.append(float(step.losses.total.detach()))
        assert torch.isfinite(step.losses.total)
    assert sum(losses[-3:]) < 0.8 * sum(losses[:3]), losses
    if labeler != "none":
        assert step.losses.pseudo_label > 0


@pytest.mark.parametrize("key, value", [
    ("labeler", "emmil"), ("prototype_assignment", "kmeans"), ("sinkhorn_epsilon", 0.0),
    ("sinkhorn_iterations", 0), ("sinkhorn_iterations", 1000), ("reestimate_every", -1), ("em_mil_gamma", 1.0),
    ("em_mil_gamma", -0.1), ("em_mil_alternate_epochs", 0), ("poibin_positive_fraction", 0.0),
    ("poibin_positive_fraction", 1.0)])
def test_new_options_are_validated_naming_their_key(key, value):
    with pytest.raises(ValueError, match=f"^ppl.{key}: "):
        PPLConfig(**{key: value}).validate()


def test_defaults_of_the_new_options_leave_the_method_as_it_was():
    cfg = PPLConfig()
    assert (cfg.labeler, cfg.prototypes_per_class, cfg.prototype_assignment, cfg.reestimate_every,
            cfg.contrastive_weight) == ("ppl_soft", 1, "nearest", 0, 0.0)
    assert NetworkConfig().key_instance_head is False


def test_pseudo_label_counts_per_modality_add_up_to_the_total():
    """The per-modality TP/FP/FN (what shows visual vs audio confirmation bias) partition the overall counts."""
    from model.pseudo_labels import PL_COUNT_NAMES, PseudoLabels, pseudo_label_counts

    g = torch.Generator().manual_seed(0)
    b, t, c = 4, 10, 5
    weak = (torch.rand(b, c, generator=g) < 0.5).float()
    dense = (torch.rand(b, t, 2, c, generator=g) < 0.3).float()
    targets = torch.rand(b, t, 2, c, generator=g)
    labels = PseudoLabels(targets=targets, weights=torch.ones_like(targets),
                          assignment=torch.zeros(b, t, 2, dtype=torch.long))
    counts = dict(zip(PL_COUNT_NAMES, pseudo_label_counts(labels, torch.rand(b, t, 2, c, generator=g),
                                                          torch.rand(b, c, generator=g), weak, dense).tolist()))
    for name in ("pl_tp", "pl_fp", "pl_fn", "model_tp", "model_fp", "model_fn"):
        assert counts[name] == counts[f"{name}_a"] + counts[f"{name}_v"]
    labelled = weak.bool()[:, None, None, :]
    audio_truth = dense.bool()[:, :, :1] & labelled
    audio_pl = (targets[:, :, :1] >= 0.5) & labelled
    assert counts["pl_tp_a"] == (audio_pl & audio_truth).sum().item() > 0
