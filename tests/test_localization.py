"""model.localization: detection mAP@tIoU against the per-class oracle and hand-worked cases;
proposals (thresholds, runs, OIC, soft-NMS, ambiguous filter) on hand-made score curves."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from model.localization import (TIOU_THRESHOLDS, Segments, contiguous_runs, detection_ap,
                                evaluate_localization, from_activitynet, outer_inner_contrast,
                                seconds_to_snippets, segment_tiou, snippet_segments_to_seconds,
                                snippets_to_seconds, soft_nms, to_activitynet, video_proposals)
from oracle_tal import oracle_detection_ap, oracle_mean_ap, oracle_video_proposals


def segments(rows) -> Segments:
    """Rows (video, label, start, end[, score])."""
    if not rows:
        return Segments.empty()
    cols = list(zip(*rows))
    score = np.array(cols[4], dtype=float) if len(cols) == 5 else None
    return Segments(np.array(cols[0]), np.array(cols[1]), np.array(cols[2], dtype=float),
                    np.array(cols[3], dtype=float), score)


def ap_at(gt_rows, pred_rows, num_classes=1, thresholds=TIOU_THRESHOLDS) -> np.ndarray:
    return detection_ap(segments(gt_rows), segments(pred_rows), num_classes, thresholds)


# ---------------------------------------------------------------------------------------------
# detection AP: hand-worked cases
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("k", range(1, 8))
def test_tiou_exactly_at_a_threshold_is_a_match(k):
    # prediction [0, k) inside ground truth [0, 10): tIoU = k / 10, equal to the threshold k / 10
    ap = ap_at([(0, 0, 0, 10)], [(0, 0, 0, k, 1.0)])[:, 0]
    expected = [1.0 if t <= k / 10 else 0.0 for t in TIOU_THRESHOLDS]
    assert ap.tolist() == expected


def test_tied_scores_keep_the_input_order():
    gt = [(0, 0, 0, 10)]
    miss, hit = (0, 0, 20, 30, 0.5), (0, 0, 0, 10, 0.5)
    assert ap_at(gt, [miss, hit])[0, 0] == 0.5          # precision 1/2 when the hit is ranked second
    assert ap_at(gt, [hit, miss])[0, 0] == 1.0


def test_a_ground_truth_is_matched_at_most_once():
    gt = [(0, 0, 0, 10), (0, 0, 20, 30)]
    preds = [(0, 0, 0, 10, 0.9), (0, 0, 1, 10, 0.8), (0, 0, 20, 30, 0.7)]   # the second duplicates the first
    # tp = [1, 0, 1]: precision [1, 1/2, 2/3], recall [1/2, 1/2, 1], envelope [1, 2/3, 2/3]
    assert ap_at(gt, preds, thresholds=[0.5])[0, 0] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3, abs=1e-15)


def test_a_prediction_takes_the_unmatched_ground_truth_with_the_highest_tiou():
    gt = [(0, 0, 0, 10), (0, 0, 5, 15)]
    # p1 [4, 14): tIoU 6/14 with g1, 9/11 with g2 -> takes g2; p2 [5, 14): 9/10 with g2 (taken), 5/14 with g1
    preds = [(0, 0, 4, 14, 0.9), (0, 0, 5, 14, 0.8)]
    ap = ap_at(gt, preds, thresholds=[0.3, 0.4, 0.5])[:, 0]
    assert ap.tolist() == [1.0, 0.5, 0.5]


def test_interpolated_precision_envelope():
    gt = [(0, 0, 10 * i, 10 * i + 5) for i in range(4)]
    preds = [(0, 0, 0, 5, 0.9), (0, 0, 100, 105, 0.8), (0, 0, 10, 15, 0.7), (0, 0, 20, 25, 0.6)]
    # precision [1, 1/2, 2/3, 3/4] -> envelope [1, 3/4, 3/4, 3/4]; recall steps of 1/4 at the hits
    assert ap_at(gt, preds, thresholds=[0.5])[0, 0] == pytest.approx(0.25 + 0.25 * 0.75 * 2, abs=1e-15)


def test_a_prediction_in_a_video_without_its_class_is_a_false_positive():
    gt = [(0, 0, 0, 10), (1, 1, 0, 10)]
    preds = [(1, 0, 0, 10, 0.9), (0, 0, 0, 10, 0.5)]      # class 0 in video 1, which has only class 1
    assert ap_at(gt, preds, num_classes=2, thresholds=[0.5])[0].tolist() == [0.5, 0.0]


def test_a_class_without_ground_truth_is_left_out_of_the_mean():
    gt = [(0, 0, 0, 10), (0, 2, 30, 40)]
    preds = [(0, 0, 0, 10, 0.9), (0, 1, 30, 40, 0.8)]     # class 1 has no ground truth; class 2 no prediction
    scores = evaluate_localization(segments(gt), segments(preds), num_classes=3)
    assert np.isnan(scores.ap[:, 1]).all()
    assert scores.ap[:, 0].tolist() == [1.0] * 7 and scores.ap[:, 2].tolist() == [0.0] * 7
    assert scores.mean_ap.tolist() == [0.5] * 7


def test_empty_predictions_score_zero():
    scores = evaluate_localization(segments([(0, 0, 0, 10), (3, 1, 5, 6)]), Segments.empty(), num_classes=2)
    assert scores.ap.tolist() == [[0.0, 0.0]] * 7
    assert scores.mean_ap.tolist() == [0.0] * 7
    assert set(scores.averages.values()) == {0.0}


def test_averages_are_computed_from_the_per_threshold_row():
    # one prediction with tIoU 0.4: AP 1 at 0.1..0.4, 0 at 0.5..0.7
    scores = evaluate_localization(segments([(0, 0, 0, 10)]), segments([(0, 0, 0, 4, 1.0)]), num_classes=1)
    assert scores.mean_ap.tolist() == [1, 1, 1, 1, 0, 0, 0]
    assert scores.averages == {"[0.1:0.5]": 0.8, "[0.3:0.7]": 0.4, "[0.1:0.7]": pytest.approx(4 / 7, abs=1e-15)}
    row = scores.as_dict()
    assert row["mAP@0.3"] == 1.0 and row["mAP@0.5"] == 0.0 and row["mAP@[0.3:0.7]"] == 0.4
    assert scores.table().split("\n")[1].split() == ["100.0"] * 4 + ["0.0"] * 3 + ["80.0", "40.0", "57.1"]


def test_averages_need_both_ends_of_their_range():
    scores = evaluate_localization(segments([(0, 0, 0, 10)]), segments([(0, 0, 0, 4, 1.0)]), 1, [0.3, 0.4, 0.5])
    assert scores.averages == {}


def test_tiou_of_two_empty_segments_is_zero():
    assert segment_tiou(np.array([2.0]), np.array([2.0]), np.array([2.0]), np.array([2.0])).tolist() == [0.0]
    assert segment_tiou(0.0, 2.0, 1.0, 2.0) == 0.5


def test_bad_inputs_name_the_field():
    with pytest.raises(ValueError, match="end: row 1 ends"):
        segments([(0, 0, 0, 1), (0, 0, 5, 4)])
    with pytest.raises(ValueError, match="score: row 0 is not finite"):
        segments([(0, 0, 0, 1, float("nan"))])
    with pytest.raises(ValueError, match="predictions.label: class 3"):
        ap_at([(0, 0, 0, 10)], [(0, 3, 0, 10, 1.0)], num_classes=2)
    with pytest.raises(ValueError, match="tiou_thresholds"):
        ap_at([(0, 0, 0, 10)], [], thresholds=[0.0, 0.5])
    with pytest.raises(ValueError, match="ground_truth: no segments"):
        evaluate_localization(Segments.empty(), Segments.empty(), 1)


# ---------------------------------------------------------------------------------------------
# detection AP: the vectorised evaluator equals the per-class loop of the definition
# ---------------------------------------------------------------------------------------------

def random_split(seed: int, units: str, dense: bool):
    """A split with the hard parts: tied scores, equal tIoUs, zero-length ground truth (snippet
    rounding makes those), predictions near the truth and far from it, a class with no ground truth
    and videos without ground truth. ``dense``: a few videos packed with overlapping ground truth,
    so predictions compete for several instances at once."""
    rng = np.random.default_rng(seed)
    n_videos, n_classes, n_gt, span = (4, 3, 200, 120) if dense else (30, 6, 150, 300)
    gt_video = rng.integers(0, n_videos - 1, n_gt)                      # the last video has no ground truth
    gt_label = rng.integers(0, n_classes - 1, n_gt)                     # the last class has none either
    if units == "snippets":
        gt_start = rng.integers(0, span, n_gt).astype(float)
        gt_end = gt_start + rng.integers(0, 25, n_gt)
    else:
        gt_start = np.round(rng.uniform(0, span * 0.64, n_gt), 1)
        gt_end = gt_start + np.round(rng.exponential(5.0, n_gt), 1)
    near = rng.integers(0, n_gt, 900)
    jitter = rng.integers(-3, 4, (900, 2)) if units == "snippets" else np.round(rng.normal(0, 1.5, (900, 2)), 1)
    near_start = gt_start[near] + jitter[:, 0]
    near_end = np.maximum(near_start, gt_end[near] + jitter[:, 1])
    far_start = rng.integers(0, span, 300).astype(float)
    pred = Segments(np.concatenate([gt_video[near], rng.integers(0, n_videos, 300)]),
                    np.concatenate([gt_label[near], rng.integers(0, n_classes, 300)]),
                    np.concatenate([near_start, far_start]),
                    np.concatenate([near_end, far_start + rng.integers(1, 30, 300)]),
                    rng.integers(0, 12, 1200) / 11)                         # few distinct scores: many ties
    order = rng.permutation(len(pred))
    return Segments(gt_video, gt_label, gt_start, gt_end), pred.take(order), n_classes


@pytest.mark.parametrize("dense", [False, True], ids=["sparse", "dense"])
@pytest.mark.parametrize("units", ["snippets", "seconds"])
@pytest.mark.parametrize("seed", range(3))
def test_evaluator_equals_the_per_class_loop(seed, units, dense):
    gt, pred, n_classes = random_split(seed, units, dense)
    ap = detection_ap(gt, pred, n_classes)
    expected = oracle_detection_ap(gt, pred, n_classes, TIOU_THRESHOLDS)
    assert np.array_equal(np.isnan(ap), np.isnan(expected)) and np.isnan(ap[:, -1]).all()
    np.testing.assert_allclose(ap, expected, rtol=0, atol=1e-12)
    assert 0.2 < np.nanmean(ap[0]) < 1.0                                  # the case exercises real matching
    scores = evaluate_localization(gt, pred, n_classes)
    np.testing.assert_allclose(scores.mean_ap, oracle_mean_ap(gt, pred, n_classes, TIOU_THRESHOLDS),
                               rtol=0, atol=1e-12)
    assert scores.averages["[0.1:0.7]"] == pytest.approx(np.mean(scores.mean_ap), abs=1e-15)


# ---------------------------------------------------------------------------------------------
# units
# ---------------------------------------------------------------------------------------------

def test_seconds_to_snippets_rounds_halves_to_even_as_the_peers():
    # 0.32 s = 0.5 snippets -> 0; 0.96 s = 1.5 -> 2; 52.8 s = 82.5 -> 82; 17.6 s = 27.500000000000004 -> 28
    seconds = [0.0, 0.32, 0.64, 0.96, 52.8, 17.6]
    assert seconds_to_snippets(seconds).tolist() == [0, 0, 1, 2, 82, 28]
    assert seconds_to_snippets(seconds).tolist() == [round(t * 25 / 16) for t in seconds]
    assert snippets_to_seconds([0, 1, 25]).tolist() == [0.0, 0.64, 16.0]
    moved = snippet_segments_to_seconds(segments([(0, 0, 2, 5, 0.7)]))
    assert moved.start.tolist() == [1.28] and moved.end.tolist() == [3.2] and moved.score.tolist() == [0.7]


# ---------------------------------------------------------------------------------------------
# proposals on hand-made score curves
# ---------------------------------------------------------------------------------------------

def rows(p: Segments) -> list[tuple]:
    return list(zip(p.label.tolist(), p.start.tolist(), p.end.tolist(), p.score.tolist()))


def test_contiguous_runs():
    mask = np.array([[1, 1, 0, 1], [0, 0, 0, 0], [0, 1, 1, 1]], dtype=bool)
    row, start, end = contiguous_runs(mask)
    assert list(zip(row.tolist(), start.tolist(), end.tolist())) == [(0, 0, 2), (0, 3, 4), (2, 1, 4)]


def test_one_bump_gives_a_run_per_threshold_scored_by_oic_then_soft_nms():
    cas = np.array([0, 0, 0.5, 0.9, 0.9, 0.5, 0, 0, 0, 0])[:, None]
    p = video_proposals(cas, np.array([1.0]), thresholds=(0.3, 0.7))
    # > 0.3: [2, 6), inner 0.7, outer snippets 1 and 6 (0.25 * 4 = 1 each side) -> 0.7 - 0 + 0.2 * 1.0
    # > 0.7: [3, 5), inner 0.9, outer snippet 2 (trunc(3 - 0.5) = 2; trunc(4 + 0.5) = 4 adds none) -> 0.9 - 0.5 + 0.2
    # soft-NMS keeps [2, 6) and decays [3, 5) by exp(-0.6**2 / 0.3): "+1" IoU = 3 / (5 + 3 - 3)
    assert [r[:3] for r in rows(p)] == [(0, 2, 6), (0, 3, 5)]
    np.testing.assert_allclose(p.score, [0.9, 0.6 * math.exp(-1.2)], rtol=0, atol=1e-15)
    assert p.video.tolist() == [0, 0]


def test_runs_at_the_video_edges_have_a_one_sided_or_empty_outer_region():
    cas = np.array([0.8, 0.8, 0.0, 0.0, 0.0, 0.8])[:, None]
    p = video_proposals(cas, np.array([0.5]), thresholds=(0.5,), inflation=0.5, gamma=0.0)
    # [0, 2): outer = snippet 2 only (0.0); [5, 6): outer = snippet 4 only (0.0)
    assert sorted(rows(p)) == [(0, 0, 2, pytest.approx(0.8)), (0, 5, 6, pytest.approx(0.8))]
    whole = video_proposals(np.full((7, 1), 0.9), np.array([0.5]), thresholds=(0.5,), gamma=0.0)
    assert rows(whole) == [(0, 0, 7, pytest.approx(0.9))]                  # no outer snippets: outer score 0


def test_outer_inner_contrast_truncates_the_inflated_bounds():
    scores = np.arange(20, dtype=float)[None, :]
    # run [8, 12), length 4, inflation 0.3: trunc(8 - 1.2) = 6, trunc(11 + 1.2) = 12 -> outer {6, 7, 12}
    got = outer_inner_contrast(scores, np.array([0]), np.array([8]), np.array([12]), inflation=0.3)
    assert got[0] == pytest.approx(np.mean([8, 9, 10, 11]) - np.mean([6, 7, 12]), abs=1e-12)


def test_only_classes_above_the_video_threshold_are_localised():
    cas = np.full((6, 3), 0.95)
    assert set(video_proposals(cas, np.array([0.1, 0.5, 0.19])).label.tolist()) == {1}
    assert set(video_proposals(cas, np.array([0.1, 0.05, 0.15])).label.tolist()) == {2}   # none: the top one


def test_actionness_thresholds_every_class_at_the_same_snippets():
    cas = np.array([[0.9, 0.1], [0.9, 0.1], [0.1, 0.1], [0.1, 0.9]])
    actionness = np.array([0.0, 0.8, 0.8, 0.0])
    p = video_proposals(cas, np.array([0.6, 0.6]), actionness=actionness, thresholds=(0.5,), gamma=0.0)
    assert sorted((r[0], r[1], r[2]) for r in rows(p)) == [(0, 1, 3), (1, 1, 3)]
    by_class = {r[0]: r[3] for r in rows(p)}
    # run [1, 3), 0.25 * 2 = 0.5 each side: trunc(1 - 0.5) = 0 adds snippet 0, trunc(2 + 0.5) = 2 adds none
    assert by_class[0] == pytest.approx(0.5 - 0.9)        # inner mean(0.9, 0.1), outer cas[0, 0]
    assert by_class[1] == pytest.approx(0.1 - 0.1)


def test_soft_nms_decays_overlaps_and_keeps_everything():
    order, score = soft_nms(np.array([0.0, 0.0, 50.0, 5.0]), np.array([10.0, 10.0, 60.0, 10.0]),
                            np.array([0.9, 0.9, 0.5, 0.1]), sigma=0.3)
    # take 0 (first of the equal 0.9s): its twin decays by exp(-1 / 0.3), [5, 10) by exp(-(6/11)**2 / 0.3)
    # ("+1" IoU = 6 / (11 + 6 - 6)); then the far 0.5 (untouched), then [5, 10), which decays the twin again
    assert order.tolist() == [0, 2, 3, 1]
    decay = math.exp(-(6 / 11) ** 2 / 0.3)
    np.testing.assert_allclose(score, [0.9, 0.5, 0.1 * decay, 0.9 * math.exp(-1 / 0.3) * decay], rtol=1e-14)
    _, abutting = soft_nms(np.array([0.0, 5.0]), np.array([5.0, 10.0]), np.array([0.9, 0.8]))
    assert abutting[1] == pytest.approx(0.8 * math.exp(-(1 / 11) ** 2 / 0.3))


def test_soft_nms_breaks_ties_in_the_reference_swap_order():
    # taking row 2 swaps it with the head: the rest is [1, 0], so of the tied 0.5s row 1 comes first
    order, score = soft_nms(np.array([0.0, 100.0, 200.0]), np.array([10.0, 110.0, 210.0]), np.array([0.5, 0.5, 0.9]))
    assert order.tolist() == [2, 1, 0] and score.tolist() == [0.9, 0.5, 0.5]


def test_proposals_sharing_a_snippet_with_an_ambiguous_interval_are_dropped():
    cas = np.zeros((20, 1))
    cas[3:6, 0] = 0.9                                       # run [3, 6)
    cas[10:14, 0] = 0.9                                     # run [10, 14)
    kept = video_proposals(cas, np.array([1.0]), thresholds=(0.5,), ambiguous=np.array([[6, 8], [13, 15]]))
    assert [(r[1], r[2]) for r in rows(kept)] == [(3, 6)]  # [3, 6) and [6, 8) share no snippet; [10, 14) has 13
    empty_interval = video_proposals(cas, np.array([1.0]), thresholds=(0.5,), ambiguous=np.array([[4, 4]]))
    assert len(empty_interval) == 2


@pytest.mark.parametrize("seed", range(6))
def test_proposals_equal_the_loop_of_the_definition(seed):
    rng = np.random.default_rng(seed)
    t, c = int(rng.integers(1, 120)), 5
    cas = np.clip(np.cumsum(rng.normal(0, 0.15, (t, c)), axis=0) % 1.0, 0, 1)     # smooth-ish curves
    video_scores = rng.uniform(size=c)
    actionness = rng.uniform(size=t) if seed % 2 else None
    ambiguous = np.array([[5, 9], [30, 31]]) if seed % 3 == 0 else None
    got = rows(video_proposals(cas, video_scores, video=7, actionness=actionness, ambiguous=ambiguous))
    expected = oracle_video_proposals(cas, video_scores, actionness=actionness, ambiguous=ambiguous)
    assert len(got) == len(expected) > 0
    assert [g[:3] for g in got] == [tuple(int(x) for x in e[:3]) for e in expected]
    np.testing.assert_allclose([g[3] for g in got], [e[3] for e in expected], rtol=0, atol=1e-12)


def test_proposal_inputs_are_checked():
    with pytest.raises(ValueError, match="video_scores: expected shape"):
        video_proposals(np.zeros((4, 3)), np.zeros(2))
    with pytest.raises(ValueError, match="actionness: expected shape"):
        video_proposals(np.zeros((4, 3)), np.zeros(3), actionness=np.zeros(5))


# ---------------------------------------------------------------------------------------------
# ActivityNet JSON
# ---------------------------------------------------------------------------------------------

VIDEOS, CLASSES = ["v0", "v1", "v2"], ["Run", "Jump"]


def test_activitynet_json_round_trip_is_exact():
    pred = segments([(0, 1, 0.64, 3.2, 0.123456789012345), (2, 0, 10.0, 10.0, -0.5), (2, 1, 1 / 3, 2 / 3, 1.0)])
    obj = json.loads(json.dumps(to_activitynet(pred, VIDEOS, CLASSES, "seconds")))
    assert obj["results"]["v1"] == [] and obj["results"]["v0"][0]["label"] == "Jump"
    back = from_activitynet(obj, VIDEOS, CLASSES, "seconds")
    for name in ("video", "label", "start", "end", "score"):
        assert np.array_equal(getattr(back, name), getattr(pred, name)), name


@pytest.mark.parametrize("results, message", [
    ({"v9": []}, r"results\['v9'\]: not a video of this split"),
    ({"v0": [{"label": "Swim", "score": 1, "segment": [0, 1]}]}, r"results\['v0'\]\[0\].label: unknown class 'Swim'"),
    ({"v0": [{"label": "Run", "score": 1, "segment": [2, 1]}]}, r"segment: end 1.0 is before start 2.0"),
    ({"v0": [{"label": "Run", "score": None, "segment": [0, 1]}]}, r"\[0\].score: expected a finite number"),
    ({"v0": [{"label": "Run", "score": 1, "segment": [0]}]}, r"segment: expected \[start, end\]"),
])
def test_activitynet_json_errors_name_the_field(results, message):
    with pytest.raises(ValueError, match=message):
        from_activitynet({"results": results}, VIDEOS, CLASSES, "seconds")


def test_activitynet_json_units_must_match():
    obj = to_activitynet(Segments.empty(), VIDEOS, CLASSES, "snippets")
    with pytest.raises(ValueError, match="units: the file is in 'snippets'"):
        from_activitynet(obj, VIDEOS, CLASSES, "seconds")
    assert len(from_activitynet({"results": {}}, VIDEOS, CLASSES, "seconds")) == 0   # ActivityNet's default
