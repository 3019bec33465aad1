"""model.metrics: the vectorised LLP protocol equals the per-video reference loop exactly."""
from __future__ import annotations

import numpy as np
import pytest

from model.metrics import SCORE_KEYS, binarize_predictions, extract_events, llp_scores
from oracle_metrics import oracle_llp_scores

T, C = 10, 3
HI, LO = 0.9, 0.1


def _video(audio=(), visual=(), truth_audio=(), truth_visual=(), gate=None, num_classes=C):
    """One video from event lists ``(class, start, end)``; the global prob is on for predicted classes."""
    frame = np.full((T, 2, num_classes), LO)
    truth = np.zeros((2, T, num_classes), dtype=np.uint8)
    for m, events in enumerate((audio, visual)):
        for c, s, e in events:
            frame[s:e, m, c] = HI
    for m, events in enumerate((truth_audio, truth_visual)):
        for c, s, e in events:
            truth[m, s:e, c] = 1
    if gate is None:
        gate = np.where(frame.max(axis=(0, 1)) >= 0.5, HI, LO)
    return frame, np.asarray(gate, dtype=np.float64), truth[0], truth[1]


def _split(*videos):
    frame, glob, ta, tv = zip(*videos)
    return np.stack(frame), np.stack(glob), np.stack(ta), np.stack(tv)


def _scores(*videos):
    args = _split(*videos)
    scores = llp_scores(*args)
    assert scores == oracle_llp_scores(*args)      # every hand-worked case is also an oracle case
    return scores


# ---------------------------------------------------------------------------------------------
# vectorised == oracle, bit for bit
# ---------------------------------------------------------------------------------------------

def _random_split(rng, n, t, c, density, quantised):
    if quantised:   # many probabilities exactly at the 0.5 threshold
        frame = rng.choice([0.0, 0.25, 0.5, 0.75, 1.0], size=(n, t, 2, c))
        glob = rng.choice([0.0, 0.49, 0.5, 1.0], size=(n, c))
    else:
        frame = rng.uniform(size=(n, t, 2, c)) ** (1.0 / max(density, 1e-3))
        glob = rng.uniform(size=(n, c))
    # truth: long runs like LLP (a few classes per video, runs of several seconds)
    keep = rng.uniform(size=(n, 1, c)) < density
    truth_a = ((rng.uniform(size=(n, t, c)) < 0.7) & keep).astype(np.uint8)
    truth_v = ((rng.uniform(size=(n, t, c)) < 0.6) & (keep | (rng.uniform(size=(n, 1, c)) < density / 2))
               ).astype(np.uint8)
    empty = rng.uniform(size=n) < 0.15              # some all-zero videos (truth and/or predictions)
    truth_a[empty] = 0
    truth_v[empty & (rng.uniform(size=n) < 0.5)] = 0
    glob[rng.uniform(size=n) < 0.1] = 0.0
    return frame, glob, truth_a, truth_v


CASES = [(seed, n, t, c, density, quantised)
         for seed, (n, t, c) in enumerate([(1, 10, 25), (2, 1, 1), (5, 2, 3), (7, 3, 1), (20, 10, 25),
                                           (13, 7, 4), (30, 10, 5), (9, 13, 6), (4, 16, 2), (25, 5, 25)])
         for density, quantised in [(0.0, False), (0.1, True), (0.3, False), (0.9, True)]]


@pytest.mark.parametrize("seed,n,t,c,density,quantised", CASES)
def test_vectorised_scores_equal_oracle_exactly(seed, n, t, c, density, quantised):
    rng = np.random.default_rng(1000 + 17 * seed + int(density * 10))
    args = _random_split(rng, n, t, c, density, quantised)
    got = llp_scores(*args)
    want = oracle_llp_scores(*args)
    assert list(got) == list(SCORE_KEYS)
    assert got == want                               # == on floats: same bits, not approx


def test_vectorised_scores_equal_oracle_at_other_thresholds():
    rng = np.random.default_rng(7)
    args = _random_split(rng, 15, 10, 25, 0.3, quantised=False)
    for threshold in (0.3, 0.5, 0.75):
        assert llp_scores(*args, threshold=threshold) == oracle_llp_scores(*args, threshold=threshold)


def test_all_zero_split_scores_100_everywhere():
    frame, glob, ta, tv = _random_split(np.random.default_rng(0), 6, 10, 25, 0.3, False)
    scores = llp_scores(np.zeros_like(frame), np.zeros_like(glob), np.zeros_like(ta), np.zeros_like(tv))
    assert scores == {k: 100.0 for k in SCORE_KEYS}


# ---------------------------------------------------------------------------------------------
# hand-worked cases
# ---------------------------------------------------------------------------------------------

def test_empty_video_scores_one_hundred_percent():
    assert _scores(_video()) == {k: 100.0 for k in SCORE_KEYS}


def test_one_second_event_hit_and_shifted_miss():
    hit = _scores(_video(audio=[(0, 3, 4)], truth_audio=[(0, 3, 4)]))
    assert hit["seg_a"] == 100.0 and hit["evt_a"] == 100.0
    miss = _scores(_video(audio=[(0, 4, 5)], truth_audio=[(0, 3, 4)]))
    assert miss["seg_a"] == 0.0 and miss["evt_a"] == 0.0       # TP 0, FP 1, FN 1


def test_event_iou_exactly_half_counts_as_match():
    # prediction [0, 2) vs truth [0, 4): IoU = 2 / 4 = 0.5
    s = _scores(_video(audio=[(0, 0, 2)], truth_audio=[(0, 0, 4)]))
    assert s["evt_a"] == 100.0
    assert s["seg_a"] == 100 * (4 / 6)                        # segments: TP 2, FN 2


def test_event_iou_just_below_half_is_a_miss():
    # prediction [0, 4) vs truth [0, 9): IoU = 4 / 9, the closest to 0.5 from below at T = 10
    s = _scores(_video(audio=[(0, 0, 4)], truth_audio=[(0, 0, 9)]))
    assert s["evt_a"] == 0.0                                 # one FP and one FN
    assert s["seg_a"] == 100 * (8 / 13)


def test_class_predicted_but_absent_is_a_false_positive():
    s = _scores(_video(audio=[(0, 0, 10), (1, 0, 10)], truth_audio=[(0, 0, 10)]))
    assert s["seg_a"] == 50.0 and s["evt_a"] == 50.0         # class 0: F = 1, class 1: F = 0


def test_classes_neither_predicted_nor_present_are_not_averaged():
    s = _scores(_video(visual=[(2, 0, 5)], truth_visual=[(2, 0, 5)]))
    assert s["seg_v"] == 100.0 and s["evt_v"] == 100.0       # not 1/3: classes 0, 1 are skipped


def test_global_gate_zeroes_frame_predictions():
    gated = _video(audio=[(1, 0, 10)], gate=[LO, LO, LO])
    assert _scores(gated) == {k: 100.0 for k in SCORE_KEYS}
    frame, glob, *_ = _split(gated)
    pred_a, pred_v = binarize_predictions(frame, glob)
    assert not pred_a.any() and not pred_v.any()
    ungated = _video(audio=[(1, 0, 10)])
    assert _scores(ungated)["seg_a"] == 0.0


def test_probability_equal_to_threshold_is_positive():
    frame, glob, ta, tv = _split(_video(truth_audio=[(0, 0, 10)]))
    frame[0, :, 0, 0] = 0.5
    glob[0, 0] = 0.5
    assert llp_scores(frame, glob, ta, tv)["seg_a"] == 100.0


def test_audio_visual_is_audio_and_visual_for_prediction_and_truth():
    truth = dict(truth_audio=[(0, 0, 6)], truth_visual=[(0, 4, 10)])          # AV truth: [4, 6)
    exact = _scores(_video(audio=[(0, 0, 6)], visual=[(0, 4, 10)], **truth))   # AV prediction [4, 6)
    assert exact["seg_av"] == 100.0 and exact["evt_av"] == 100.0
    wide = _scores(_video(audio=[(0, 0, 10)], visual=[(0, 0, 10)], **truth))   # AV prediction [0, 10)
    assert wide["seg_av"] == 100 * (4 / 12)                    # TP 2, FP 8
    assert wide["evt_av"] == 0.0                             # IoU 2 / 10


def test_event_at_av_pools_audio_and_visual_counts():
    # audio: class 0 correct (TP 1); visual: class 0 predicted, absent (FP 1)
    s = _scores(_video(audio=[(0, 0, 10)], visual=[(0, 0, 10)], truth_audio=[(0, 0, 10)]))
    assert s["seg_a"] == 100.0 and s["seg_v"] == 0.0
    assert s["seg_event"] == 100 * (20 / 30)                   # pooled TP 10, FP 10 -> 2/3, not the mean 1/2
    assert s["evt_event"] == 100 * (2 / 3)                     # pooled TP 1, FP 1


def test_type_at_av_is_mean_of_audio_visual_and_av():
    s = _scores(_video(audio=[(0, 0, 10)], visual=[(0, 0, 10)], truth_audio=[(0, 0, 10)]),
                _video(audio=[(1, 2, 5)], truth_audio=[(1, 2, 4)], truth_visual=[(2, 0, 3)]))
    for level in ("seg", "evt"):
        assert s[f"{level}_type"] == (s[f"{level}_av"] + s[f"{level}_a"] + s[f"{level}_v"]) / 3


def test_scores_are_averaged_over_videos():
    perfect = _video(audio=[(0, 0, 10)], truth_audio=[(0, 0, 10)])
    wrong = _video(audio=[(1, 0, 10)], truth_audio=[(0, 0, 10)])
    assert _scores(perfect, wrong)["seg_a"] == 50.0


def test_prediction_matching_any_truth_event_is_true_positive():
    # two truth runs [0, 2) and [3, 5); predictions [0, 2) (match) and [6, 10) (none)
    s = _scores(_video(audio=[(0, 0, 2), (0, 6, 10)], truth_audio=[(0, 0, 2), (0, 3, 5)]))
    assert s["evt_a"] == 100 * 2 / 4                         # TP 1, FP 1, FN 1


# ---------------------------------------------------------------------------------------------
# building blocks
# ---------------------------------------------------------------------------------------------

def test_extract_events_returns_maximal_runs_in_time_order():
    seq = np.array([[1, 1, 0, 1, 0, 0, 1], [0, 0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1, 1],
                    [1, 0, 1, 0, 1, 0, 1]])
    starts, ends, valid = extract_events(seq)
    assert starts.shape == ends.shape == valid.shape == (4, 4)   # ceil(7 / 2) slots
    assert valid.sum(axis=1).tolist() == [3, 0, 1, 4]
    assert starts[0, :3].tolist() == [0, 3, 6] and ends[0, :3].tolist() == [2, 4, 7]
    assert (starts[2, 0], ends[2, 0]) == (0, 7)
    assert starts[3].tolist() == [0, 2, 4, 6] and ends[3].tolist() == [1, 3, 5, 7]


def test_extract_events_keeps_leading_axes_and_handles_single_segment():
    x = np.zeros((2, 3, 1), dtype=bool)
    x[1, 2, 0] = True
    starts, ends, valid = extract_events(x)
    assert starts.shape == (2, 3, 1)
    assert valid[1, 2, 0] and valid.sum() == 1 and ends[1, 2, 0] == 1


# ---------------------------------------------------------------------------------------------
# input validation
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("field,mutate,match", [
    ("frame_prob", lambda a: a[:, :, 0], "frame_prob"),
    ("global_prob", lambda a: a[:, :2], "global_prob"),
    ("global_prob", lambda a: np.where(a > 0.5, np.nan, a), "global_prob: contains NaN"),
    ("frame_prob", lambda a: np.where(a > 0.5, np.nan, a), "frame_prob: contains NaN"),
    ("dense_audio", lambda a: a[:, :5], "dense_audio"),
    ("dense_visual", lambda a: a + 2, "dense_visual: values must be 0 or 1"),
])
def test_bad_inputs_raise_value_error_naming_the_array(field, mutate, match):
    names = ("frame_prob", "global_prob", "dense_audio", "dense_visual")
    args = dict(zip(names, _split(_video(audio=[(0, 0, 3)], truth_audio=[(0, 0, 3)]))))
    args[field] = mutate(args[field])
    with pytest.raises(ValueError, match=match):
        llp_scores(**args)


def test_extract_events_matches_a_per_row_scan_on_many_sequences():
    # 40k rows: large enough that index arithmetic in a narrow integer type would overflow
    from oracle_metrics import extract_event

    rng = np.random.default_rng(5)
    x = rng.uniform(size=(40_000, 9)) < rng.uniform(size=(40_000, 1))
    starts, ends, valid = extract_events(x)
    for row in range(0, 40_000, 7):
        want = [(int(np.argmax(v)), int(len(v) - np.argmax(v[::-1]))) for v in extract_event(x[row].astype(int))]
        got = [(int(s), int(e)) for s, e, ok in zip(starts[row], ends[row], valid[row]) if ok]
        assert got == want, row


def test_scoring_binarized_predictions_as_truth_is_perfect():
    rng = np.random.default_rng(9)
    frame, glob, _, _ = _random_split(rng, 50, 10, 25, 0.3, quantised=True)
    pred_a, pred_v = binarize_predictions(frame, glob)
    assert pred_a.shape == pred_v.shape == (50, 10, 25) and pred_a.any() and pred_v.any()
    assert llp_scores(frame, glob, pred_a, pred_v) == {k: 100.0 for k in SCORE_KEYS}


def test_large_split_equals_oracle():
    rng = np.random.default_rng(21)
    args = _random_split(rng, 400, 10, 25, 0.3, quantised=False)
    assert llp_scores(*args) == oracle_llp_scores(*args)
