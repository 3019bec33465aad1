"""Variable-length W-TAL batches: padding never changes a video's scores, its losses or the prototype bank."""
import numpy as np
import pytest
import torch

from model.config import NetworkConfig, PPLConfig
from model.network import AudioVisualParser
from model.ppl import PPL
from model.prototypes import select_key_segments

C, D = 5, 16
LENGTHS = (7, 12, 3)


def wtal_net_cfg(preset="han"):
    return NetworkConfig(preset=preset, streams="rgb_flow", num_classes=C, rgb_dim=D, flow_dim=D, model_dim=32,
                         visual_hidden=24, han_ffn_dim=32)


def videos(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(t, D, generator=g), torch.randn(t, D, generator=g)) for t in LENGTHS]


def padded(vids, length=None, fill=0.0):
    """One batch (rgb, flow, mask), padded to ``length`` with ``fill``."""
    length = length or max(len(r) for r, _ in vids)
    rgb = torch.full((len(vids), length, D), fill)
    flow = torch.full((len(vids), length, D), fill)
    mask = torch.zeros(len(vids), length, dtype=torch.bool)
    for i, (r, f) in enumerate(vids):
        rgb[i, :len(r)], flow[i, :len(f)], mask[i, :len(r)] = r, f, True
    return rgb, flow, mask


def weak(seed=0):
    g = torch.Generator().manual_seed(seed)
    w = (torch.rand(len(LENGTHS), C, generator=g) < 0.4).float()
    w[:, 0] = 1.0
    return w


@pytest.mark.parametrize("preset", ["han", "ppl"])
def test_a_video_alone_scores_the_same_as_inside_a_padded_batch(preset):
    torch.manual_seed(0)
    net = AudioVisualParser(wtal_net_cfg(preset)).eval()
    vids = videos()
    with torch.no_grad():
        batch = net(*padded(vids, length=20, fill=1e3))        # loud padding: must still not leak
        for i, (rgb, flow) in enumerate(vids):
            t = len(rgb)
            alone = net(rgb[None], flow[None])                  # no mask at all
            torch.testing.assert_close(batch.frame_prob[i, :t], alone.frame_prob[0], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(batch.features[i, :t], alone.features[0], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(batch.global_prob[i], alone.global_prob[0], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(batch.modality_prob[i], alone.modality_prob[0], rtol=1e-5, atol=1e-6)
            assert (batch.frame_prob[i, t:] == 0).all()          # padded snippets score nothing


def test_an_all_true_mask_changes_nothing_on_llp_shaped_inputs():
    torch.manual_seed(0)
    net = AudioVisualParser(NetworkConfig(preset="han")).eval()
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(2, 10, 128, generator=g), torch.randn(2, 10, 2048, generator=g),
         torch.randn(2, 10, 512, generator=g))
    with torch.no_grad():
        plain, masked = net(*x), net(*x, torch.ones(2, 10, dtype=torch.bool))
    torch.testing.assert_close(masked.global_prob, plain.global_prob, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(masked.frame_prob, plain.frame_prob, rtol=1e-5, atol=1e-6)


def _trained_step(method, rgb, flow, mask, weak_labels):
    """One training-mode forward + losses + bank update (no optimizer: the weights stay put)."""
    method.network.eval()          # dropout off so two paddings see the same network
    online = method.network(rgb, flow, mask)
    step = method.losses(online, (rgb, flow, mask), weak_labels, epoch=5, mask=mask)
    method.after_optimizer_step(method.network, step.momentum, weak_labels, mask=mask)
    return step


@pytest.mark.parametrize("background", ["negatives", "low_confidence"])
def test_padding_changes_neither_the_losses_nor_the_prototype_bank(background):
    competition = "per_class" if background == "negatives" else "across_classes"
    cfg = PPLConfig(labeler="ppl_soft", warmup_epochs=0, rampup_epochs=0, key_min_prob=0.0, ema_decay=0.9,
                    background=background, competition=competition, background_max_prob=1.0,
                    contrastive_weight=0.5)
    vids, w = videos(), weak()
    results = []
    for length, fill in ((12, 0.0), (31, -7.0)):
        torch.manual_seed(0)
        method = PPL(wtal_net_cfg(), cfg, seed=0)
        rgb, flow, mask = padded(vids, length, fill)
        first = _trained_step(method, rgb, flow, mask, w)        # bank gets initialised
        second = _trained_step(method, rgb, flow, mask, w)       # pseudo-labels now read it
        results.append((first, second, {k: v.clone() for k, v in method.bank.state_dict().items()}))
    (a1, a2, bank_a), (b1, b2, bank_b) = results
    assert bank_a["initialized"].any()
    for name in bank_a:
        torch.testing.assert_close(bank_a[name], bank_b[name], rtol=1e-5, atol=1e-6, msg=name)
    for x, y in ((a1, b1), (a2, b2)):
        for term in ("total", "mil", "pseudo_label", "contrastive"):
            torch.testing.assert_close(getattr(x.losses, term), getattr(y.losses, term), rtol=1e-5, atol=1e-6)
    assert float(a2.losses.pseudo_label.detach()) > 0


def test_the_bank_buffer_of_a_padded_batch_is_the_sum_of_each_video_alone():
    cfg = PPLConfig(labeler="ppl_soft", key_min_prob=0.0, background="negatives")
    torch.manual_seed(0)
    method = PPL(wtal_net_cfg(), cfg, seed=0).eval()
    vids, w = videos(), weak()
    rgb, flow, mask = padded(vids, 16, 5.0)
    with torch.no_grad():
        out = method.network(rgb, flow, mask)
        members = select_key_segments(out.frame_prob, w, cfg, valid=mask)
        negatives = (~w.bool())[:, None, None, :] & mask[:, :, None, None]
        together = method.bank.collect(out.features, members, negatives.expand(-1, -1, 2, -1), valid=mask)
        alone = 0
        for i, (r, f) in enumerate(vids):
            o = method.network(r[None], f[None])
            m = select_key_segments(o.frame_prob, w[i:i + 1], cfg)
            alone = alone + method.bank.collect(o.features, m, ~w[i:i + 1].bool())
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)
    assert members[~mask].sum() == 0


def test_key_segments_never_pick_padding_even_when_top_k_exceeds_the_length():
    cfg = PPLConfig(key_top_k=5, key_min_prob=0.0, background="low_confidence", competition="across_classes",
                    background_top_k=5, background_max_prob=1.0)
    prob = torch.rand(2, 6, 2, C)
    weak_labels = torch.ones(2, C)
    mask = torch.tensor([[True] * 3 + [False] * 3, [True] * 6])
    members = select_key_segments(prob, weak_labels, cfg, valid=mask)
    assert members[0, 3:].sum() == 0
    assert members[0, :3, :, :C].all()          # top-5 of 3 real snippets: all three


def test_em_mil_and_poibin_are_refused_for_variable_length_streams():
    from model.config import check_compatible

    for labeler in ("em_mil", "poibin"):
        with pytest.raises(ValueError, match="ppl.labeler"):
            check_compatible(wtal_net_cfg(), PPLConfig(labeler=labeler))


def test_map_is_zero_when_no_prediction_overlaps_any_ground_truth():
    """Regression: the vectorised matcher met an empty candidate graph (an untrained model's proposals)."""
    from model.localization import Segments, evaluate_localization

    truth = Segments(np.array([0, 1]), np.array([0, 1]), np.array([10.0, 5.0]), np.array([20.0, 9.0]))
    far = Segments(np.array([0, 1, 1]), np.array([0, 1, 0]), np.array([40.0, 30.0, 5.0]),
                   np.array([50.0, 31.0, 9.0]), np.array([0.9, 0.8, 0.7]))
    scores = evaluate_localization(truth, far, num_classes=2)
    assert scores.mean_ap.tolist() == [0.0] * 7
