"""Per-class loop oracle for ``model.localization``: ActivityNet's detection AP and the CO2-Net /
DELU proposal steps written straight from their definitions, one class, one prediction (one run)
at a time, in plain Python lists and floats.

Only tests and the benchmark use it; the product has one implementation (model/localization.py).
"""
from __future__ import annotations

import math

import numpy as np


# ---------------------------------------------------------------------------------------------
# detection AP (ActivityNet eval_detection.py, from its definition)
# ---------------------------------------------------------------------------------------------

def tiou(pred_start: float, pred_end: float, gt_start: float, gt_end: float) -> float:
    inter = max(0.0, min(pred_end, gt_end) - max(pred_start, gt_start))
    union = (pred_end - pred_start) + (gt_end - gt_start) - inter
    return inter / union if union > 0 else 0.0


def interpolated_ap(precision: list[float], recall: list[float]) -> float:
    """VOC-2011 style: precision made non-increasing from the right, summed over recall steps."""
    mprec = [0.0] + list(precision) + [0.0]
    mrec = [0.0] + list(recall) + [1.0]
    for i in range(len(mprec) - 2, -1, -1):
        mprec[i] = max(mprec[i], mprec[i + 1])
    ap = 0.0
    for i in range(1, len(mrec)):
        if mrec[i] != mrec[i - 1]:
            ap += (mrec[i] - mrec[i - 1]) * mprec[i]
    return ap


def class_ap(gts: list[tuple], preds: list[tuple], threshold: float) -> float:
    """AP of one class at one threshold. gts: [(video, start, end)]; preds: [(video, start, end, score)]."""
    if not preds:
        return 0.0
    ranked = sorted(preds, key=lambda p: -p[3])            # Python's sort is stable: ties keep input order
    by_video: dict[int, list[tuple[int, float, float]]] = {}
    for j, (gt_video, gt_start, gt_end) in enumerate(gts):
        by_video.setdefault(gt_video, []).append((j, gt_start, gt_end))
    used: set[int] = set()
    tp_cum, precision, recall = 0, [], []
    for n_seen, (video, start, end, _) in enumerate(ranked, start=1):
        best, best_iou = None, -1.0
        for j, gt_start, gt_end in by_video.get(video, []):
            if j in used:
                continue
            iou = tiou(start, end, gt_start, gt_end)
            if iou >= threshold and iou > best_iou:          # the first of equal tIoUs wins
                best, best_iou = j, iou
        if best is not None:
            used.add(best)
            tp_cum += 1
        fp_cum = n_seen - tp_cum
        precision.append(tp_cum / (tp_cum + fp_cum))
        recall.append(tp_cum / len(gts))
    return interpolated_ap(precision, recall)


def oracle_detection_ap(ground_truth, predictions, num_classes: int, thresholds) -> np.ndarray:
    """(R, C) AP; NaN for classes without ground truth. Inputs are ``model.localization.Segments``."""
    gt_rows = list(zip(ground_truth.video.tolist(), ground_truth.label.tolist(),
                       ground_truth.start.tolist(), ground_truth.end.tolist()))
    pred_rows = list(zip(predictions.video.tolist(), predictions.label.tolist(), predictions.start.tolist(),
                         predictions.end.tolist(), predictions.score.tolist()))
    ap = np.full((len(thresholds), num_classes), np.nan)
    for c in range(num_classes):
        gts = [(v, s, e) for v, label, s, e in gt_rows if label == c]
        if not gts:
            continue
        preds = [(v, s, e, p) for v, label, s, e, p in pred_rows if label == c]
        for r, threshold in enumerate(thresholds):
            ap[r, c] = class_ap(gts, preds, float(threshold))
    return ap


def oracle_mean_ap(ground_truth, predictions, num_classes: int, thresholds) -> list[float]:
    ap = oracle_detection_ap(ground_truth, predictions, num_classes, thresholds)
    out = []
    for r in range(len(thresholds)):
        values = [ap[r, c] for c in range(num_classes) if not math.isnan(ap[r, c])]
        out.append(sum(values) / len(values))
    return out


# ---------------------------------------------------------------------------------------------
# proposals (CO2-Net / DELU multiple_threshold_hamnet, get_proposal_oic_2, soft_nms, filter_segments)
# ---------------------------------------------------------------------------------------------

def _runs(positions: list[int]) -> list[list[int]]:
    runs: list[list[int]] = []
    for t in positions:
        if runs and t == runs[-1][-1] + 1:
            runs[-1].append(t)
        else:
            runs.append([t])
    return runs


def _soft_nms(dets: list[list[float]], sigma: float) -> list[list[float]]:
    """dets: [[start, end, score]]; the reference's loop: take the max, swap it to the head, decay."""
    dets = [list(d) for d in dets]
    kept = []
    while dets:
        best = max(range(len(dets)), key=lambda i: (dets[i][2], -i))   # first of the maxima
        dets[0], dets[best] = dets[best], dets[0]
        top = dets.pop(0)
        kept.append(top)
        for d in dets:
            inter = max(min(top[1], d[1]) - max(top[0], d[0]) + 1, 0.0)
            iou = inter / ((top[1] - top[0] + 1) + (d[1] - d[0] + 1) - inter)
            d[2] *= math.exp(-(iou * iou) / sigma)
    return kept


def oracle_video_proposals(cas, video_scores, actionness=None, ambiguous=None, thresholds=None,
                           class_threshold=0.2, inflation=0.25, gamma=0.2, sigma=0.3) -> list[tuple]:
    """[(label, start, end, score)] in the order model.localization.video_proposals returns them."""
    cas = np.asarray(cas, dtype=np.float64)
    t_len, n_classes = cas.shape
    thresholds = np.linspace(0.1, 0.9, 10) if thresholds is None else thresholds
    classes = [c for c in range(n_classes) if video_scores[c] >= class_threshold]
    if not classes:
        classes = [int(np.argmax(video_scores))]
    found: dict[int, list[list[float]]] = {c: [] for c in classes}
    for threshold in thresholds:
        for c in classes:
            curve = actionness if actionness is not None else cas[:, c]
            for run in _runs([t for t in range(t_len) if curve[t] > threshold]):
                length = len(run)
                inner = float(np.mean(cas[run, c]))
                outer_s = max(0, int(run[0] - inflation * length))
                outer_e = min(t_len - 1, int(run[-1] + inflation * length))
                outer = list(range(outer_s, run[0])) + list(range(run[-1] + 1, outer_e + 1))
                outer_score = float(np.mean(cas[outer, c])) if outer else 0.0
                found[c].append([run[0], run[-1] + 1, inner - outer_score + gamma * video_scores[c]])
    out = []
    for c in classes:
        for start, end, score in _soft_nms(found[c], sigma):
            if ambiguous is not None and any(set(range(int(start), int(end))) & set(range(int(a), int(b)))
                                             for a, b in ambiguous):
                continue
            out.append((c, start, end, score))
    return out
