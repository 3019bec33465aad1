"""Per-video loop oracle for ``model.metrics.llp_scores``: the reference LLP protocol written
straight from its definition (HAN ``eval_metrics.py`` / ``main_avvp.py`` eval), one video and
one class at a time, with events as 0/1 vectors as the reference keeps them.

Only tests and the benchmark use it; the product has one metric implementation (model/metrics.py).
"""
from __future__ import annotations

import numpy as np


def _mean_over_classes(values: list) -> float:
    """``sum(F) / len(F)`` of the reference, summed left to right (1.0 when no class counts)."""
    if len(values) == 0:
        return 1.0  # all true negatives
    total = 0.0
    for v in values:
        total = total + v
    return total / len(values)


def _f_list(tp, fp, fn) -> list:
    out = []
    for c in range(len(tp)):
        if (tp[c] + fp[c]) != 0 or (tp[c] + fn[c]) != 0:
            out.append(2 * tp[c] / (2 * tp[c] + (fn[c] + fp[c])))
    return out


def segment_level(so_a, so_v, so_av, gt_a, gt_v, gt_av):
    """Per-video segment-level F for A, V, Event@AV (pooled A+V), AV. Inputs (C, T) in {0, 1}."""
    tp_a = np.sum(so_a * gt_a, axis=1)
    fn_a = np.sum((1 - so_a) * gt_a, axis=1)
    fp_a = np.sum(so_a * (1 - gt_a), axis=1)
    tp_v = np.sum(so_v * gt_v, axis=1)
    fn_v = np.sum((1 - so_v) * gt_v, axis=1)
    fp_v = np.sum(so_v * (1 - gt_v), axis=1)
    tp_av = np.sum(so_av * gt_av, axis=1)
    fn_av = np.sum((1 - so_av) * gt_av, axis=1)
    fp_av = np.sum(so_av * (1 - gt_av), axis=1)
    f_a = _mean_over_classes(_f_list(tp_a, fp_a, fn_a))
    f_v = _mean_over_classes(_f_list(tp_v, fp_v, fn_v))
    f = _mean_over_classes(_f_list(tp_a + tp_v, fp_a + fp_v, fn_a + fn_v))
    f_av = _mean_over_classes(_f_list(tp_av, fp_av, fn_av))
    return f_a, f_v, f, f_av


def to_vec(start: int, end: int, length: int) -> np.ndarray:
    x = np.zeros(length)
    for i in range(start, end):
        x[i] = 1
    return x


def extract_event(seq) -> list[np.ndarray]:
    """Maximal runs of 1s, each as a 0/1 vector of length T, scanning left to right."""
    length = len(seq)
    events = []
    i = 0
    while i < length:
        if seq[i] == 1:
            start = i
            j = i + 1
            while j < length and seq[j] == 1:
                j += 1
            events.append(to_vec(start, j, length))
            i = j + 1
        else:
            i += 1
    return events


def event_wise_metric(event_p, event_gt) -> tuple[int, int, int]:
    """TP/FP/FN of one class: a prediction is TP if ANY truth event has IoU >= 0.5 (else FP);
    a truth event with no prediction at IoU >= 0.5 is FN. ``None`` = no events."""
    tp = fp = fn = 0
    if event_p is not None:
        for x1 in event_p:
            if event_gt is None:
                fp += 1
                continue
            hit = False
            for x2 in event_gt:
                if np.sum(x1 * x2) >= 0.5 * np.sum(x1 + x2 - x1 * x2):
                    hit = True
                    break
            if hit:
                tp += 1
            else:
                fp += 1
    if event_gt is not None:
        for x1 in event_gt:
            if event_p is None:
                fn += 1
                continue
            hit = False
            for x2 in event_p:
                if np.sum(x1 * x2) >= 0.5 * np.sum(x1 + x2 - x1 * x2):
                    hit = True
                    break
            if not hit:
                fn += 1
    return tp, fp, fn


def event_level(so_a, so_v, so_av, gt_a, gt_v, gt_av):
    """Per-video event-level F for A, V, Event@AV (pooled A+V), AV. Inputs (C, T) in {0, 1}."""
    num_classes = so_a.shape[0]
    counts = {m: (np.zeros(num_classes), np.zeros(num_classes), np.zeros(num_classes))
              for m in ("a", "v", "av")}
    for c in range(num_classes):
        for m, pred, gt in (("a", so_a, gt_a), ("v", so_v, gt_v), ("av", so_av, gt_av)):
            event_p = extract_event(pred[c]) if np.sum(pred[c]) != 0 else None
            event_gt = extract_event(gt[c]) if np.sum(gt[c]) != 0 else None
            tp, fp, fn = event_wise_metric(event_p, event_gt)
            counts[m][0][c] += tp
            counts[m][1][c] += fp
            counts[m][2][c] += fn
    (tp_a, fp_a, fn_a), (tp_v, fp_v, fn_v), (tp_av, fp_av, fn_av) = counts["a"], counts["v"], counts["av"]
    f_a = _mean_over_classes(_f_list(tp_a, fp_a, fn_a))
    f_v = _mean_over_classes(_f_list(tp_v, fp_v, fn_v))
    f = _mean_over_classes(_f_list(tp_a + tp_v, fp_a + fp_v, fn_a + fn_v))
    f_av = _mean_over_classes(_f_list(tp_av, fp_av, fn_av))
    return f_a, f_v, f, f_av


def oracle_llp_scores(frame_prob, global_prob, dense_audio, dense_visual, threshold: float = 0.5) -> dict[str, float]:
    """The ten numbers, one video at a time, as the reference eval loop computes them."""
    frame_prob = np.asarray(frame_prob)
    global_prob = np.asarray(global_prob)
    num_segments = frame_prob.shape[1]
    seg = {"a": [], "v": [], "event": [], "av": []}
    evt = {"a": [], "v": [], "event": [], "av": []}
    for i in range(frame_prob.shape[0]):
        o = (global_prob[i][None, :] >= threshold).astype(np.int_)                 # (1, C)
        pa = (frame_prob[i, :, 0, :] >= threshold).astype(np.int_) * np.repeat(o, num_segments, axis=0)
        pv = (frame_prob[i, :, 1, :] >= threshold).astype(np.int_) * np.repeat(o, num_segments, axis=0)
        gt_a = np.transpose(np.asarray(dense_audio[i], dtype=np.float64))          # (C, T)
        gt_v = np.transpose(np.asarray(dense_visual[i], dtype=np.float64))
        gt_av = gt_a * gt_v
        so_a, so_v = np.transpose(pa), np.transpose(pv)
        so_av = so_a * so_v
        for store, fn in ((seg, segment_level), (evt, event_level)):
            f_a, f_v, f, f_av = fn(so_a, so_v, so_av, gt_a, gt_v, gt_av)
            store["a"].append(f_a)
            store["v"].append(f_v)
            store["event"].append(f)
            store["av"].append(f_av)
    out = {}
    for prefix, store in (("seg", seg), ("evt", evt)):
        a = 100 * np.mean(np.array(store["a"]))
        v = 100 * np.mean(np.array(store["v"]))
        av = 100 * np.mean(np.array(store["av"]))
        out[f"{prefix}_a"] = float(a)
        out[f"{prefix}_v"] = float(v)
        out[f"{prefix}_av"] = float(av)
        out[f"{prefix}_type"] = float((100 * np.mean(np.array(store["av"])) + 100 * np.mean(np.array(store["a"]))
                                       + 100 * np.mean(np.array(store["v"]))) / 3.)
        out[f"{prefix}_event"] = float(100 * np.mean(np.array(store["event"])))
    return out
