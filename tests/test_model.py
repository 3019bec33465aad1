"""The method's pieces in isolation: network, EMA, prototype bank, pseudo-labels, losses."""
import copy

import pytest
import torch
import torch.nn.functional as F

from model.config import NetworkConfig, PPLConfig
from model.losses import pl_weight_at, total_loss
from model.momentum import MomentumEncoder
from model.network import AttentiveMMIL, AudioVisualParser, pool_frames
from model.ppl import PPL
from model.prototypes import PrototypeBank, select_key_segments
from model.pseudo_labels import prototype_pseudo_labels

B, T, C = 3, 10, 25


def inputs(batch=B, frames=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, T, 128, generator=g), torch.randn(batch, frames * T, 2048, generator=g),
            torch.randn(batch, T, 512, generator=g))


def weak(batch=B, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = (torch.rand(batch, C, generator=g) < 0.15).float()
    w[:, 0] = 1.0
    return w


@pytest.mark.parametrize("preset", ["ppl", "han"])
def test_network_output_shapes_and_probability_ranges(preset):
    net = AudioVisualParser(NetworkConfig(preset=preset))
    out = net(*inputs())
    assert out.features.shape == (B, T, 2, 512)
    assert out.frame_prob.shape == (B, T, 2, C)
    assert out.modality_prob.shape == (B, 2, C)
    assert out.global_prob.shape == (B, C)
    for p in (out.frame_prob, out.modality_prob, out.global_prob):
        assert torch.all((p >= 0) & (p <= 1))


@pytest.mark.parametrize("preset", ["ppl", "han"])
def test_every_parameter_gets_a_gradient(preset):
    net = AudioVisualParser(NetworkConfig(preset=preset))
    out = net(*inputs())
    (out.global_prob.sum() + out.frame_prob.sum() + out.modality_prob.sum()).backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert missing == []


def test_dimensions_come_from_config():
    cfg = NetworkConfig(num_classes=7, num_segments=4, audio_dim=16, visual_2d_dim=32, visual_3d_dim=8, model_dim=24,
                        audio_hidden=12, visual_hidden=20)
    out = AudioVisualParser(cfg)(torch.randn(2, 4, 16), torch.randn(2, 4, 32), torch.randn(2, 4, 8))
    assert out.frame_prob.shape == (2, 4, 2, 7) and out.features.shape == (2, 4, 2, 24)


@pytest.mark.parametrize("preset", ["ppl", "han"])
def test_pooling_frames_before_projection_equals_projecting_every_frame(preset):
    torch.manual_seed(0)
    net = AudioVisualParser(NetworkConfig(preset=preset)).eval()
    audio, frames, v3d = inputs(frames=8)
    pooled = net(audio, pool_frames(frames, T), v3d)
    direct = net(audio, frames, v3d)
    assert torch.equal(pooled.frame_prob, direct.frame_prob)
    # the linear layer commutes with the mean: project 80 frames, then pool
    linear = net.projection.visual_2d if preset == "han" else net.projection.visual_2d[0]
    per_frame = linear(frames).view(B, T, 8, -1).mean(2)
    assert torch.allclose(per_frame, linear(pool_frames(frames, T)), atol=1e-5)


def test_presets_differ_in_structure():
    ppl_params = sum(p.numel() for p in AudioVisualParser(NetworkConfig(preset="ppl")).parameters())
    han = AudioVisualParser(NetworkConfig(preset="han"))
    assert isinstance(han.projection.audio, torch.nn.Linear)
    assert ppl_params != sum(p.numel() for p in han.parameters())


def test_network_config_rejects_bad_values():
    with pytest.raises(ValueError, match="model.preset"):
        NetworkConfig(preset="bert").validate()
    with pytest.raises(ValueError, match="model.num_classes"):
        NetworkConfig(num_classes=0).validate()


def test_ema_update_follows_the_formula():
    net = AudioVisualParser(NetworkConfig())
    enc = MomentumEncoder(net, decay=0.9)
    before = copy.deepcopy(enc.ema.state_dict())
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    enc.update(net)
    for name, online in net.state_dict().items():
        expected = 0.9 * before[name] + 0.1 * online
        assert torch.allclose(enc.ema.state_dict()[name], expected, atol=1e-6), name
    assert not any(p.requires_grad for p in enc.ema.parameters())


def test_without_ema_the_momentum_output_is_the_online_output_detached():
    net = AudioVisualParser(NetworkConfig())
    enc = MomentumEncoder(net, decay=None)
    out = net(*inputs())
    m = enc(out, *inputs())
    assert enc.ema is None and torch.equal(m.features, out.features) and not m.features.requires_grad


def test_bfloat16_teacher_runs_in_bfloat16_on_the_inputs_device_and_returns_float32():
    torch.manual_seed(0)
    net = AudioVisualParser(NetworkConfig())
    exact = MomentumEncoder(net, decay=0.9)
    fast = MomentumEncoder(net, decay=0.9, precision="bfloat16")
    out = net(*inputs())
    a, b = exact(out, *inputs()), fast(out, *inputs())
    for name in ("features", "frame_prob", "modality_prob", "global_prob"):
        x, y = getattr(a, name), getattr(b, name)
        assert y.dtype == torch.float32 and y.device == x.device and not y.requires_grad, name
        # bf16 really ran here (an autocast on another device type would be a no-op: identical outputs) ...
        assert not torch.equal(x, y), name
    # ... and stays close: ~3 significant digits, well inside what a soft pseudo-label resolves
    assert (a.frame_prob - b.frame_prob).abs().max() < 0.02
    assert F.cosine_similarity(a.features, b.features, dim=-1).min() > 0.999


def test_teacher_precision_is_validated():
    with pytest.raises(ValueError, match="teacher_precision"):
        MomentumEncoder(AudioVisualParser(NetworkConfig()), decay=0.9, precision="float16")
    with pytest.raises(ValueError, match="ppl.teacher_precision"):
        PPLConfig(teacher_precision="fp16").validate()


def test_float_output_keeps_every_field_including_the_key_instance_head():
    net = AudioVisualParser(NetworkConfig(key_instance_head=True))
    out = net(*inputs())
    bf = type(out)(*(None if t is None else t.bfloat16() for t in (
        out.features, out.frame_prob, out.modality_prob, out.global_prob, out.key_prob)))
    back = bf.float()
    assert out.key_prob is not None and back.key_prob is not None and back.key_prob.dtype == torch.float32
    assert all(t.dtype == torch.float32 for t in (back.features, back.frame_prob, back.modality_prob, back.global_prob))


def test_video_probability_is_capped_at_one_where_hans_pooling_sums_past_it():
    """Audio attends to segment 0, visual to segment 1, and each segment's modality softmax favours the modality
    attending to it: HAN's sum of weights is ~2 there. The output stays a probability (`evaluate` refuses > 1)."""
    cfg = NetworkConfig(model_dim=4)
    mmil = AttentiveMMIL(cfg)
    with torch.no_grad():
        for layer in (mmil.classifier, mmil.temporal_attention, mmil.modality_attention):
            layer.weight.zero_(), layer.bias.zero_()
        mmil.classifier.bias.fill_(20.0)                   # every segment p ~ 1
        mmil.temporal_attention.weight[:, 0] = 50.0        # temporal weight follows feature 0
        mmil.modality_attention.weight[:, 1] = 50.0        # modality weight follows feature 1
    features = torch.zeros(1, 2, 2, 4)                     # (B, T, M, d)
    features[0, 0, 0, :2], features[0, 1, 0, :2] = 1.0, -1.0   # audio: segment 0
    features[0, 0, 1, :2], features[0, 1, 1, :2] = -1.0, 1.0   # visual: segment 1
    frame_prob, modality_prob, global_prob = mmil(features)
    uncapped = (torch.softmax(mmil.temporal_attention(features), 1) * torch.softmax(mmil.modality_attention(features), 2)
                * frame_prob).sum(dim=(1, 2))
    assert uncapped.min() > 1.9
    assert torch.equal(global_prob, torch.ones_like(global_prob))
    assert float(modality_prob.max()) <= 1.0


def test_ema_decay_outside_unit_interval_is_rejected():
    with pytest.raises(ValueError, match="ema_decay"):
        MomentumEncoder(AudioVisualParser(NetworkConfig()), decay=1.0)
    with pytest.raises(ValueError, match="ppl.ema_decay"):
        PPLConfig(ema_decay=-0.1).validate()


def test_tau_must_be_positive():
    with pytest.raises(ValueError, match="ppl.tau"):
        PPLConfig(tau=0).validate()


def random_step(batch=8, k=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(batch, T, 2, 32, generator=g)
    frame_prob = torch.rand(batch, T, 2, C, generator=g)
    w = weak(batch, seed)
    return features, frame_prob, w


def test_key_segments_are_labelled_confident_top_k():
    cfg = PPLConfig(key_top_k=2, key_min_prob=0.6, background_max_prob=0.2, background_top_k=1)
    _, prob, w = random_step()
    members = select_key_segments(prob, w, cfg)
    keys = members[..., :C]
    assert not keys[~w.bool()[:, None, None, :].expand_as(keys)].any()        # only labelled classes
    assert (prob[keys] >= 0.6).all()
    assert (keys.sum(dim=1) <= 2).all()                                         # at most top-k per (b, m, c)
    bg = members[..., C]
    labelled_max = prob.masked_fill(~w.bool()[:, None, None, :], 0).amax(-1)
    assert (labelled_max[bg] < 0.2).all() and (bg.sum(dim=1) <= 1).all()


def test_bank_from_two_halves_summed_by_the_reducer_equals_the_whole_batch():
    cfg = PPLConfig(key_min_prob=0.3, background_max_prob=0.3, background_top_k=2)
    features, prob, w = random_step(batch=8)
    members = select_key_segments(prob, w, cfg)
    whole, split = (PrototypeBank(C, 32, prototypes_per_class=2, momentum=0.9, center=True) for _ in range(2))
    negatives = (~w.bool())[:, None, None, :].expand_as(prob)
    for step in range(3):
        f, m, n = (x.roll(step, dims=0) for x in (features, members, negatives))
        whole.update(f, m, negative_members=n)
        other = split.collect(f[4:], m[4:], n[4:])            # what rank 1 would contribute
        split.update(f[:4], m[:4], reducer=lambda buf: buf + other, negative_members=n[:4])
        assert torch.allclose(whole.prototypes, split.prototypes, atol=1e-6)
        assert torch.allclose(whole.negatives, split.negatives, atol=1e-6)
        assert torch.allclose(whole.center, split.center, atol=1e-6)
        assert torch.equal(whole.initialized, split.initialized)


def test_bank_prototypes_stay_unit_norm_and_empty_classes_unchanged():
    cfg = PPLConfig(key_min_prob=0.3)
    features, prob, w = random_step()
    w[:, 5] = 0.0
    bank = PrototypeBank(C, 32, prototypes_per_class=3, momentum=0.5)
    before = bank.prototypes.clone()
    counts = bank.update(features, select_key_segments(prob, w, cfg))
    assert torch.allclose(bank.prototypes.norm(dim=-1), torch.ones(2, C + 1, 3), atol=1e-5)
    assert torch.equal(bank.prototypes[:, 5], before[:, 5]) and (counts[:, 5] == 0).all()
    assert torch.equal(bank.initialized, counts > 0)


def test_first_update_sets_a_prototype_then_blends():
    bank = PrototypeBank(1, 4, momentum=0.75)
    members = torch.zeros(1, 1, 2, 2, dtype=torch.bool)
    members[0, 0, 0, 0] = True
    first = torch.tensor([1.0, 0, 0, 0]).expand(1, 1, 2, 4)
    bank.update(first, members)
    assert torch.allclose(bank.prototypes[0, 0, 0], torch.tensor([1.0, 0, 0, 0]))
    second = torch.tensor([0, 1.0, 0, 0]).expand(1, 1, 2, 4)
    bank.update(second, members)
    assert torch.allclose(bank.prototypes[0, 0, 0], F.normalize(torch.tensor([0.75, 0.25, 0, 0]), dim=0))


def initialised_bank(seed=0):
    bank = PrototypeBank(C, 32, prototypes_per_class=2, momentum=0.9, seed=seed)
    bank.initialized.fill_(True)
    bank.negatives.copy_(F.normalize(torch.randn(2, C, 32, generator=torch.Generator().manual_seed(seed + 1)), dim=-1))
    bank.negatives_initialized.fill_(True)
    return bank


@pytest.mark.parametrize("competition", ["across_classes", "per_class"])
@pytest.mark.parametrize("hard", [False, True])
def test_pseudo_labels_are_zero_outside_the_weak_label(competition, hard):
    features, _, w = random_step()
    background = "low_confidence" if competition == "across_classes" else "negatives"
    cfg = PPLConfig(competition=competition, background=background)
    cfg.validate()
    labels = prototype_pseudo_labels(features, initialised_bank(), w, cfg, hard)
    outside = ~w.bool()[:, None, None, :].expand_as(labels.targets)
    assert (labels.targets[outside] == 0).all()
    assert (labels.weights[outside] == 1).all()   # known negatives carry loss
    assert ((labels.targets >= 0) & (labels.targets <= 1)).all()


def labelled_similarities(features, bank, w):
    """s_c over the weak classes + background, and which entries are usable (computed from the bank's API)."""
    sim, _ = bank.nearest(bank.embed(features))
    labelled = torch.cat([w.bool(), torch.ones_like(w[:, :1], dtype=torch.bool)], dim=-1)
    return sim, labelled[:, None, None, :] & torch.isfinite(sim)


def test_soft_labels_with_background_sum_to_one_across_classes():
    features, _, w = random_step()
    bank = initialised_bank()
    labels = prototype_pseudo_labels(features, bank, w, PPLConfig(competition="across_classes", background="low_confidence", tau=0.1), hard=False)
    sim, usable = labelled_similarities(features, bank, w)
    q_bg = torch.softmax((sim / 0.1).masked_fill(~usable, float("-inf")), -1)[..., C]
    assert torch.allclose(labels.targets.sum(-1) + q_bg, torch.ones_like(q_bg), atol=1e-5)


@pytest.mark.parametrize("competition, background", [("across_classes", "low_confidence"),
                                                     ("per_class", "low_confidence"), ("per_class", "negatives")])
def test_small_tau_soft_labels_approach_hard_labels(competition, background):
    features, _, w = random_step()
    bank = initialised_bank()
    hard = prototype_pseudo_labels(features, bank, w, PPLConfig(competition=competition, background=background),
                                   hard=True)
    sim, usable = labelled_similarities(features, bank, w)
    if background == "negatives":
        margin = (sim[..., :C] - bank.negative_similarity(bank.embed(features))).abs()
    elif competition == "per_class":
        margin = (sim[..., :C] - sim[..., C:]).abs()
    else:
        top2 = sim.masked_fill(~usable, float("-inf")).topk(2, dim=-1).values
        margin = (top2[..., 0] - top2[..., 1]).unsqueeze(-1).expand(-1, -1, -1, C)
    previous = None
    for tau in (1e-1, 1e-2, 1e-3, 1e-5):
        soft = prototype_pseudo_labels(features, bank, w, PPLConfig(competition=competition, background=background,
                                                                    tau=tau), hard=False)
        gap = (soft.targets - hard.targets).abs()
        assert previous is None or gap.sum() < previous
        previous = gap.sum()
    # at tau = 1e-5 soft == hard except on exact near-ties of the similarities
    assert (gap[margin > 1e-3] < 1e-6).all()


def test_confidence_gate_removes_loss_on_uncertain_segments():
    features, _, w = random_step()
    bank = initialised_bank()
    open_ = prototype_pseudo_labels(features, bank, w, PPLConfig(tau=1.0), hard=False)
    gated = prototype_pseudo_labels(features, bank, w, PPLConfig(tau=1.0, confidence_gate=0.9), hard=False)
    labelled = w.bool()[:, None, None, :].expand_as(open_.weights)
    assert gated.weights[labelled].sum() < open_.weights[labelled].sum()


def test_uninitialised_classes_give_no_pseudo_label_loss():
    features, _, w = random_step()
    bank = PrototypeBank(C, 32)
    labels = prototype_pseudo_labels(features, bank, w, PPLConfig(), hard=False)
    labelled = w.bool()[:, None, None, :].expand_as(labels.weights)
    assert (labels.weights[labelled] == 0).all() and (labels.assignment == -1).all()


def test_warmup_and_ramp_schedule():
    cfg = PPLConfig(pl_weight=0.5, warmup_epochs=2, rampup_epochs=2)
    assert [pl_weight_at(e, cfg) for e in range(5)] == [0.0, 0.0, 0.25, 0.5, 0.5]
    assert pl_weight_at(5, PPLConfig(labeler="none")) == 0.0


def test_ppl_step_trains_and_fills_the_bank():
    torch.manual_seed(0)
    cfg = PPLConfig(warmup_epochs=0, key_min_prob=0.0, contrastive_weight=0.1, ema_decay=0.9)
    method = PPL(NetworkConfig(), cfg)
    opt = torch.optim.Adam(method.network.parameters(), lr=1e-3)
    x, w = inputs(batch=4), weak(4)
    for _ in range(3):
        out = method.network(*x)
        step = method.losses(out, x, w, epoch=0)
        opt.zero_grad()
        step.losses.total.backward()
        opt.step()
        method.after_optimizer_step(method.network, step.momentum, w)
        assert torch.isfinite(step.losses.total)
    assert method.bank.initialized[:, 0].any()
    assert step.losses.pseudo_label > 0


def test_base_keeps_no_momentum_copy():
    assert PPL(NetworkConfig(), PPLConfig(labeler="none")).momentum.ema is None


def test_negative_prototype_is_the_mean_of_segments_from_videos_without_the_class():
    features, prob, w = random_step(batch=6)
    w[:3, 7] = 1.0
    w[3:, 7] = 0.0
    bank = PrototypeBank(C, 32)
    negatives = (~w.bool())[:, None, None, :].expand_as(prob)
    bank.update(features, torch.zeros(6, T, 2, C + 1, dtype=torch.bool), negative_members=negatives)
    unit = F.normalize(features, dim=-1)
    expected = F.normalize(unit[3:].sum(dim=(0, 1)), dim=-1)          # (M, d): videos 3..5 lack class 7
    assert torch.allclose(bank.negatives[:, 7], expected, atol=1e-5)
    per_video = PrototypeBank(C, 32)                                   # the (B, C) shortcut gives the same
    per_video.update(features, torch.zeros(6, T, 2, C + 1, dtype=torch.bool), negative_members=~w.bool())
    assert torch.allclose(per_video.negatives, bank.negatives, atol=1e-5)
    assert bank.negatives_initialized[:, 7].all() and not bank.initialized.any()


def test_negatives_mode_scores_each_class_against_its_own_negative():
    features, _, w = random_step()
    bank = initialised_bank()
    bank.negatives.copy_(F.normalize(torch.randn(2, C, 32), dim=-1))
    bank.negatives_initialized.fill_(True)
    cfg = PPLConfig(background="negatives", tau=0.2)
    labels = prototype_pseudo_labels(features, bank, w, cfg, hard=False)
    unit = F.normalize(features, dim=-1)
    s_pos = torch.einsum("btmd,mckd->btmck", unit, bank.prototypes).amax(-1)[..., :C]
    s_neg = torch.einsum("btmd,mcd->btmc", unit, bank.negatives)
    expected = torch.sigmoid((s_pos - s_neg) / 0.2) * w[:, None, None, :]
    assert torch.allclose(labels.targets, expected, atol=1e-5)
    with pytest.raises(ValueError, match="ppl.background"):
        PPLConfig(background="negatives", competition="across_classes").validate()


def test_centred_bank_tracks_the_feature_mean_and_compares_after_subtracting_it():
    features, prob, w = random_step()
    bank = PrototypeBank(C, 32, momentum=0.5, center=True)
    bank.update(features, select_key_segments(prob, w, PPLConfig(key_min_prob=0.0)))
    assert torch.allclose(bank.center, features.mean(dim=(0, 1)), atol=1e-5)      # first update sets it
    bank.update(features + 1.0, select_key_segments(prob, w, PPLConfig(key_min_prob=0.0)))
    assert torch.allclose(bank.center, features.mean(dim=(0, 1)) + 0.5, atol=1e-5)
    assert torch.allclose(bank.embed(features), F.normalize(features - bank.center, dim=-1))


def test_ema_decay_warmup_follows_its_formula_and_forgets_the_initialisation():
    from model.momentum import warmed_up_decay

    net = AudioVisualParser(NetworkConfig())
    enc = MomentumEncoder(net, decay=0.999, warmup=True)
    init = copy.deepcopy(enc.ema.state_dict())
    share = 1.0
    for t in range(1, 31):
        alpha = warmed_up_decay(0.999, t)
        assert alpha == min(0.999, (1 + t) / (10 + t)) and enc.current_decay() == alpha
        before = copy.deepcopy(enc.ema.state_dict())
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.01)
        enc.update(net)
        for name, online in net.state_dict().items():
            if online.is_floating_point():
                assert torch.allclose(enc.ema.state_dict()[name], alpha * before[name] + (1 - alpha) * online,
                                      atol=1e-6), name
        share *= alpha
    assert int(enc.num_updates) == 30 and share < 1e-6      # the random initialisation is gone after 30 steps
    assert warmed_up_decay(0.999, 20_000) == 0.999          # the configured decay once the run is long enough
    name = next(iter(init))
    assert not torch.allclose(enc.ema.state_dict()[name], init[name])


def clustered_key_segments(seed, steps=200, per_step=16, classes=5, k=3, dim=32):
    """Key segments of ``classes`` classes, each drawn from k clusters around a shared offset, one key segment
    per video and modality; yields (features (B, 1, 2, d), members (B, 1, 2, C+1)), then the cluster centres."""
    g = torch.Generator().manual_seed(seed)
    common = 2 * torch.randn(dim, generator=g)
    class_offset = torch.randn(classes, 1, dim, generator=g)
    centres = common + class_offset + 3 * torch.randn(classes, k, dim, generator=g) / dim**0.5
    batches = []
    for _ in range(steps):
        cls = torch.randint(0, classes, (per_step,), generator=g)
        cluster = torch.randint(0, k, (per_step,), generator=g)
        x = centres[cls, cluster][:, None, None, :] + 0.5 * torch.randn(per_step, 1, 2, dim, generator=g) / dim**0.5
        batches.append((x, F.one_hot(cls, classes + 1).bool()[:, None, None, :].expand(per_step, 1, 2, classes + 1)))
    return batches, centres


@pytest.mark.parametrize("assignment", ["nearest", "sinkhorn"])
def test_every_one_of_k_slots_takes_part(assignment):
    """K > 1 used to collapse: a slot is set by its first segment and the others, left at random directions,
    lost every later segment to it (6-8 of 15 slots per modality here). Unreached slots now wait next to their
    class mean, so all K are used, and they stay apart."""
    batches, _ = clustered_key_segments(seed=0)
    bank = PrototypeBank(5, 32, prototypes_per_class=3, momentum=0.9, center=True, assignment=assignment)
    for features, members in batches:
        bank.update(features, members)
    assert bank.initialized[:, :5].all()
    gram = torch.einsum("mckd,mcjd->mckj", bank.prototypes[:, :5], bank.prototypes[:, :5])
    assert (gram - torch.eye(3) * 2 < 0.99).all()                           # pairwise distinct slots


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sinkhorn_slots_find_the_k_clusters_of_every_class(seed):
    """Balanced codes make the K slots a clustering: each class's 3 clusters end up on 3 different slots.
    (Nearest assignment, online k-means, strands slots in local optima on the same data: 0-1 of 5 classes.)"""
    batches, centres = clustered_key_segments(seed)
    bank = PrototypeBank(5, 32, prototypes_per_class=3, momentum=0.9, center=True, assignment="sinkhorn", seed=seed)
    for features, members in batches:
        bank.update(features, members)
    embedded = bank.embed(centres.reshape(15, 1, 1, 32).expand(15, 1, 2, 32))            # (C*K, 1, M, d)
    sim = torch.einsum("ntmd,mckd->ntmck", embedded, bank.prototypes)[:, 0]            # (C*K, M, C+1, K)
    for c in range(5):
        slots = sim[3 * c:3 * c + 3, :, c].argmax(dim=-1)                                 # (K clusters, M)
        for m in range(2):
            assert sorted(slots[:, m].tolist()) == [0, 1, 2], (c, m)


def test_sinkhorn_codes_balance_a_class_over_its_slots_and_ties_go_to_the_nearest():
    from model.prototypes import balanced_codes, identity_reducer

    g = torch.Generator().manual_seed(0)
    sim = torch.rand(6, 1, 1, 2, 3, generator=g)                            # 6 segments, 1 modality, C+1 = 2, K = 3
    sim[:, 0, 0, 0] += torch.tensor([0.5, 0.0, 0.0])                         # all prefer slot 0
    members = torch.zeros(6, 1, 1, 2, dtype=torch.bool)
    members[:, 0, 0, 0] = True
    codes = balanced_codes(sim, members, epsilon=0.05, iterations=50, reducer=identity_reducer)
    assert torch.allclose(codes[:, 0, 0, 0].sum(dim=0), torch.full((3,), 2.0), atol=1e-3)   # n/K each
    assert torch.allclose(codes.sum(dim=-1)[members], torch.ones(6)) and codes[~members].eq(0).all()
    bank = PrototypeBank(1, 4, prototypes_per_class=3, assignment="sinkhorn")
    one = torch.zeros(1, 1, 2, 2, dtype=torch.bool)
    one[0, 0, :, 0] = True                                                  # a single key segment per modality ...
    feature = bank.prototypes[:, 0, 1][None, None]                          # ... sitting on slot 1: (1, 1, M, d)
    assert bank.assign(feature, one)[0, 0, :, 0].tolist() == [[0.0, 1.0, 0.0]] * 2
