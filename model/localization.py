"""Weakly-supervised temporal action localisation (W-TAL): proposals from snippet scores, and
detection mAP at temporal IoU, in pure NumPy.

Proposals follow the CO2-Net / DELU line (``proposal_methods.multiple_threshold_hamnet``,
``utils/wsad_utils.py``: ``get_proposal_oic_2``, ``soft_nms``, ``grouping``, and
``filter_segments``); detection AP is ActivityNet's (``Evaluation/eval_detection.py``:
``compute_average_precision_detection``, ``segment_iou``, ``interpolated_prec_rec``).
``docs/tal.md`` lists every rule with its source and every choice made here.

A segment is ``[start, end)`` in one unit for a whole evaluation: snippet indices (protocol A, the
CO2-Net / DELU line) or seconds (protocol B, the BaS-Net line). ``seconds_to_snippets`` is the
one conversion from seconds to snippet indices (I3D: 25 fps, 16 frames = 0.64 s a snippet).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

FEATURE_FPS = 25                 # I3D features are extracted from video resampled to 25 fps
FRAMES_PER_SNIPPET = 16          # one feature vector per 16 frames = 0.64 s
TIOU_THRESHOLDS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
AVERAGE_RANGES: tuple[tuple[float, float], ...] = ((0.1, 0.5), (0.3, 0.7), (0.1, 0.7))
ACTION_THRESHOLDS: tuple[float, ...] = tuple(np.linspace(0.1, 0.9, 10).tolist())   # CO2-Net / DELU


# ---------------------------------------------------------------------------------------------
# units
# ---------------------------------------------------------------------------------------------

def seconds_to_snippets(seconds, fps: float = FEATURE_FPS,
                        frames_per_snippet: int = FRAMES_PER_SNIPPET) -> np.ndarray:
    """Snippet index of a time: ``round(t * fps / frames_per_snippet)``, halves to even.

    Exactly the peers' ``round(t * 25 / 16)`` (Python's and NumPy's rounding both send x.5 to the
    even neighbour; the product is taken before the division, as they do, so the floats agree).
    Used for ground-truth bounds and ambiguous intervals alike. Returns int64.
    """
    t = np.asarray(seconds, dtype=np.float64)
    return np.round(t * fps / frames_per_snippet).astype(np.int64)


def snippets_to_seconds(snippets, fps: float = FEATURE_FPS,
                        frames_per_snippet: int = FRAMES_PER_SNIPPET) -> np.ndarray:
    """Start time of snippet index ``i``: ``i * frames_per_snippet / fps`` (0.64 s a snippet)."""
    return np.asarray(snippets, dtype=np.float64) * frames_per_snippet / fps


# ---------------------------------------------------------------------------------------------
# segment tables
# ---------------------------------------------------------------------------------------------

def _column(name: str, values, kind: str) -> np.ndarray:
    x = np.asarray(values)
    if x.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got shape {x.shape}")
    if kind == "int":
        if x.size and x.dtype.kind not in "iu":
            raise ValueError(f"{name}: expected integers, got dtype {x.dtype}")
        x = x.astype(np.int64)
        if x.size and x.min() < 0:
            raise ValueError(f"{name}: row {int(np.argmin(x))} is negative ({int(x.min())})")
        return x
    if x.size and x.dtype.kind not in "biuf":
        raise ValueError(f"{name}: expected numbers, got dtype {x.dtype}")
    x = x.astype(np.float64)
    bad = ~np.isfinite(x)
    if bad.any():
        raise ValueError(f"{name}: row {int(np.argmax(bad))} is not finite ({x[bad][0]})")
    return x


@dataclass(frozen=True, eq=False)
class Segments:
    """Temporal segments of a whole split, one row each: ground truth or predictions.

    video: (K,) int64 row index into the split's video list;  label: (K,) int64 class index;
    start, end: (K,) float64, ``[start, end)`` in one unit;  score: (K,) float64 (ones if omitted).
    """

    video: np.ndarray
    label: np.ndarray
    start: np.ndarray
    end: np.ndarray
    score: np.ndarray | None = field(default=None)

    def __post_init__(self):
        columns = {"video": _column("video", self.video, "int"), "label": _column("label", self.label, "int"),
                   "start": _column("start", self.start, "float"), "end": _column("end", self.end, "float")}
        score = np.ones(len(columns["video"])) if self.score is None else self.score
        columns["score"] = _column("score", score, "float")
        lengths = {name: len(x) for name, x in columns.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"Segments: columns differ in length {lengths}")
        backwards = columns["end"] < columns["start"]
        if backwards.any():
            i = int(np.argmax(backwards))
            raise ValueError(f"end: row {i} ends ({columns['end'][i]}) before it starts ({columns['start'][i]})")
        for name, x in columns.items():
            object.__setattr__(self, name, x)

    def __len__(self) -> int:
        return len(self.video)

    @classmethod
    def empty(cls) -> "Segments":
        return cls(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0), np.zeros(0))

    @classmethod
    def concatenate(cls, parts) -> "Segments":
        parts = list(parts)
        if not parts:
            return cls.empty()
        return cls(*(np.concatenate([getattr(p, name) for p in parts])
                     for name in ("video", "label", "start", "end", "score")))

    def take(self, rows) -> "Segments":
        return Segments(self.video[rows], self.label[rows], self.start[rows], self.end[rows], self.score[rows])


def snippet_segments_to_seconds(segments: Segments, fps: float = FEATURE_FPS,
                                frames_per_snippet: int = FRAMES_PER_SNIPPET) -> Segments:
    """Proposals found in snippet units, expressed in seconds (protocol B, ActivityNet files)."""
    return replace(segments, start=snippets_to_seconds(segments.start, fps, frames_per_snippet),
                   end=snippets_to_seconds(segments.end, fps, frames_per_snippet))


# ---------------------------------------------------------------------------------------------
# proposals (CO2-Net / DELU): thresholds -> contiguous runs -> OIC score -> soft-NMS -> filter
# ---------------------------------------------------------------------------------------------

def contiguous_runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Maximal runs of True in each row of ``mask (N, T)``: (row, start, end), ``[start, end)``,
    in row-major order (row, then time)."""
    n, t = mask.shape
    padded = np.zeros((n, t + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    step = np.diff(padded, axis=1)          # (N, T+1): +1 where a run starts, -1 one past its end
    row, start = np.nonzero(step == 1)
    _, end = np.nonzero(step == -1)
    return row, start, end


def _interval_sums(values: np.ndarray, row: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """``values[row, start:end].sum()`` for every interval at once (0 for empty intervals)."""
    n, t = values.shape
    flat = np.zeros(n * (t + 1))             # one zero after each row, so ``end == T`` is a valid index
    flat.reshape(n, t + 1)[:, :t] = values
    base = row * (t + 1)
    bounds = np.stack([base + start, base + end], axis=1).reshape(-1)
    sums = np.add.reduceat(flat, bounds)[::2] if len(bounds) else np.zeros(0)
    return np.where(end > start, sums, 0.0)


def outer_inner_contrast(scores: np.ndarray, row: np.ndarray, start: np.ndarray, end: np.ndarray,
                         inflation: float = 0.25) -> np.ndarray:
    """OIC score of each run ``[start, end)`` of ``scores[row]`` (AutoLoc's outer-inner contrast).

    inner = mean score inside the run; outer = mean over the ``inflation * length`` snippets on
    each side (bounds truncated toward zero as ``int()`` does, clipped to the video), 0 when the
    run touches both ends of the video. ``scores: (N, T)``; returns inner - outer, (R,).
    """
    t = scores.shape[1]
    length = end - start
    inner = _interval_sums(scores, row, start, end) / length
    outer_start = np.maximum(0, np.trunc(start - inflation * length)).astype(np.int64)
    outer_end = np.minimum(t, np.trunc((end - 1) + inflation * length).astype(np.int64) + 1)
    n_outer = (start - outer_start) + (outer_end - end)
    outer_sum = _interval_sums(scores, row, outer_start, start) + _interval_sums(scores, row, end, outer_end)
    outer = np.where(n_outer > 0, outer_sum / np.maximum(n_outer, 1), 0.0)
    return inner - outer


def soft_nms(start: np.ndarray, end: np.ndarray, score: np.ndarray,
             sigma: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian soft-NMS of one class's proposals: keeps all, decays overlapping scores.

    Repeatedly takes the highest current score (first in the current order on ties; the taken row
    swaps places with the head of the list, as the reference does), then multiplies every
    remaining score by ``exp(-iou**2 / sigma)``. IoU uses the reference's inclusive "+1" lengths
    (``end - start + 1``), so abutting proposals overlap slightly. Returns (pick order, decayed
    scores in that order).
    """
    start = np.asarray(start, dtype=np.float64)
    end = np.asarray(end, dtype=np.float64)
    current = np.array(score, dtype=np.float64)
    order = np.arange(len(current))
    area = end - start + 1
    for i in range(len(order)):
        j = i + int(np.argmax(current[order[i:]]))
        order[i], order[j] = order[j], order[i]
        top, rest = order[i], order[i + 1:]
        inter = np.maximum(np.minimum(end[top], end[rest]) - np.maximum(start[top], start[rest]) + 1, 0.0)
        iou = inter / (area[top] + area[rest] - inter)
        current[rest] *= np.exp(-(iou * iou) / sigma)
    return order, current[order]


def overlaps_intervals(start: np.ndarray, end: np.ndarray, intervals: np.ndarray) -> np.ndarray:
    """True where snippet range ``[start, end)`` shares a snippet with any of ``intervals (A, 2)``."""
    intervals = np.asarray(intervals, dtype=np.int64).reshape(-1, 2)
    s = np.asarray(start, dtype=np.int64)[:, None]
    e = np.asarray(end, dtype=np.int64)[:, None]
    return (np.maximum(s, intervals[None, :, 0]) < np.minimum(e, intervals[None, :, 1])).any(axis=1)


def video_proposals(cas: np.ndarray, video_scores: np.ndarray, *, video: int = 0,
                    actionness: np.ndarray | None = None, ambiguous: np.ndarray | None = None,
                    thresholds=ACTION_THRESHOLDS, class_threshold: float = 0.2, inflation: float = 0.25,
                    gamma: float = 0.2, sigma: float = 0.3) -> Segments:
    """Proposals of one video in snippet units, as the CO2-Net / DELU evaluation makes them.

    cas: (T, C) snippet class scores (what OIC is computed on; CO2-Net passes cas * attention);
    video_scores: (C,) video-level class scores. Classes with ``video_scores >= class_threshold``
    are localised (the top class if none is). For each threshold and class, the runs of snippets
    whose score is ``> threshold`` become proposals — the class's own column of ``cas``, or, with
    ``actionness: (T,)``, one class-agnostic curve for every class (CO2-Net / DELU threshold the
    attention). Score = OIC(run) + gamma * video_scores[c]; Gaussian soft-NMS per class; then every
    proposal sharing a snippet with an ``ambiguous (A, 2)`` interval (snippet units) is dropped.
    Rows come class by class (ascending), each in soft-NMS pick order.
    """
    cas = np.asarray(cas, dtype=np.float64)
    video_scores = np.asarray(video_scores, dtype=np.float64)
    if cas.ndim != 2 or cas.shape[0] == 0:
        raise ValueError(f"cas: expected shape (T, C) with T >= 1, got {cas.shape}")
    if video_scores.shape != (cas.shape[1],):
        raise ValueError(f"video_scores: expected shape ({cas.shape[1]},) to match cas, got {video_scores.shape}")
    if not (np.isfinite(cas).all() and np.isfinite(video_scores).all()):
        raise ValueError("cas / video_scores: contain NaN or infinity")
    thresholds = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    t = cas.shape[0]

    classes = np.nonzero(video_scores >= class_threshold)[0]
    if len(classes) == 0:
        classes = np.array([int(np.argmax(video_scores))])
    k = len(classes)
    class_scores = cas[:, classes].T                                              # (K, T)
    if actionness is None:
        curve = class_scores
    else:
        actionness = np.asarray(actionness, dtype=np.float64)
        if actionness.shape != (t,):
            raise ValueError(f"actionness: expected shape ({t},) to match cas, got {actionness.shape}")
        curve = np.broadcast_to(actionness, (k, t))
    above = curve[None, :, :] > thresholds[:, None, None]                         # (Θ, K, T)
    row, start, end = contiguous_runs(above.reshape(-1, t))                       # row = θ * K + k
    which = row % k
    score = outer_inner_contrast(class_scores, which, start, end, inflation) + gamma * video_scores[classes[which]]

    kept = []
    for c in range(k):
        mine = np.nonzero(which == c)[0]                  # this class's runs, threshold-major, then time
        if len(mine) == 0:
            continue
        order, decayed = soft_nms(start[mine], end[mine], score[mine], sigma)
        kept.append(Segments(np.full(len(mine), video), np.full(len(mine), classes[c]),
                             start[mine][order], end[mine][order], decayed))
    proposals = Segments.concatenate(kept)
    if ambiguous is not None and len(proposals):
        proposals = proposals.take(~overlaps_intervals(proposals.start, proposals.end, ambiguous))
    return proposals


# ---------------------------------------------------------------------------------------------
# detection AP at temporal IoU (ActivityNet), vectorised over the split
# ---------------------------------------------------------------------------------------------

def segment_tiou(pred_start, pred_end, gt_start, gt_end) -> np.ndarray:
    """Temporal IoU, broadcast: intersection / union of ``[start, end)`` (0 where the union is 0)."""
    inter = np.clip(np.minimum(pred_end, gt_end) - np.maximum(pred_start, gt_start), 0.0, None)
    union = (pred_end - pred_start) + (gt_end - gt_start) - inter
    return np.divide(inter, union, out=np.zeros(np.broadcast(inter, union).shape), where=union > 0)


def _check_thresholds(tiou_thresholds) -> np.ndarray:
    thresholds = np.asarray(tiou_thresholds, dtype=np.float64).reshape(-1)
    if len(thresholds) == 0 or not ((thresholds > 0) & (thresholds <= 1)).all():
        raise ValueError(f"tiou_thresholds: expected numbers in (0, 1], got {list(thresholds)}")
    return thresholds


def _candidate_pairs(ground_truth: Segments, video, label, start, end, num_classes: int,
                     min_tiou: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every (prediction, ground truth) of the same video and class with tIoU >= ``min_tiou``.

    Ground truth is sorted by (video, class, start); a prediction ``[s, e)`` can only overlap the
    ground truth of its group that starts in ``[s - longest, e)``, found by binary search on an
    exact integer key (group, rank of the start). Returns (prediction row, ground-truth position in
    that order, its row in ``ground_truth``, tIoU), sorted by prediction row.
    """
    gt_key = ground_truth.video * num_classes + ground_truth.label
    gt_order = np.lexsort((ground_truth.start, gt_key))
    gt_key, gt_start, gt_end = gt_key[gt_order], ground_truth.start[gt_order], ground_truth.end[gt_order]
    groups, first, count = np.unique(gt_key, return_index=True, return_counts=True)
    longest = np.maximum.reduceat(gt_end - gt_start, first)                           # per group
    starts = np.unique(gt_start)
    stride = len(starts) + 1
    gt_position_key = np.repeat(np.arange(len(groups)), count) * stride + np.searchsorted(starts, gt_start)

    key = video * num_classes + label
    group_of_key = np.full(max(int(key.max()), int(groups[-1])) + 1, -1)
    group_of_key[groups] = np.arange(len(groups))
    group = group_of_key[key]
    pred = np.nonzero(group >= 0)[0]
    group = group[pred]
    bounds = np.searchsorted(starts, np.concatenate([start[pred] - longest[group], end[pred]]))
    lo, hi = np.split(np.searchsorted(gt_position_key, np.tile(group, 2) * stride + bounds), 2)
    n = np.maximum(hi - lo, 0)
    pair_pred = np.repeat(pred, n)
    pair_gt = np.repeat(lo - np.cumsum(n) + n, n) + np.arange(n.sum())
    tiou = segment_tiou(start[pair_pred], end[pair_pred], gt_start[pair_gt], gt_end[pair_gt])
    keep = tiou >= min_tiou
    return pair_pred[keep], pair_gt[keep], gt_order[pair_gt[keep]], tiou[keep]


def _best_candidates(pred: np.ndarray, tiou: np.ndarray, gt_row: np.ndarray) -> np.ndarray:
    """Index of each prediction's best pair (highest tIoU, then lowest ground-truth row) in
    ``pred`` (non-decreasing: each prediction's pairs are contiguous)."""
    if len(pred) == 0:      # no candidate pair at all (reduceat cannot take an empty array)
        return np.zeros(0, dtype=np.int64)
    head = np.nonzero(np.r_[True, pred[1:] != pred[:-1]])[0]
    size = np.diff(np.r_[head, len(pred)])
    top = tiou == np.repeat(np.maximum.reduceat(tiou, head), size)
    row = np.where(top, gt_row, np.iinfo(np.int64).max)
    return np.nonzero(top & (row == np.repeat(np.minimum.reduceat(row, head), size)))[0]


def _match(ground_truth: Segments, video, label, start, end, thresholds, num_classes) -> np.ndarray:
    """True positives ``(R, P)`` of predictions already sorted by class, then score.

    The greedy rule of ActivityNet: in score order, each prediction takes the still-unmatched
    ground truth of its video and class with the highest tIoU >= threshold (the lowest ground-truth
    row on ties). Done in rounds instead of one prediction at a time: a prediction is decided as
    soon as no earlier undecided prediction competes for any of its free candidates — then nothing
    before it can change what it finds, so it takes its best free candidate exactly as the
    sequential loop would. Every threshold is its own copy of the candidate graph; the first round
    runs once on the loosest threshold's graph, which contains all the others.
    """
    n_thr, n_pred, n_gt = len(thresholds), len(video), len(ground_truth)
    tp = np.zeros((n_thr, n_pred), dtype=bool)
    if n_pred == 0 or n_gt == 0:
        return tp
    pred, gt, gt_row, tiou = _candidate_pairs(ground_truth, video, label, start, end, num_classes,
                                              float(thresholds.min()))
    taken = np.zeros((n_thr, n_gt), dtype=bool)

    # first round: uncontested at the loosest threshold means uncontested at every threshold
    earliest = np.full(n_gt, n_pred)
    np.minimum.at(earliest, gt, pred)
    contested = np.zeros(n_pred, dtype=bool)
    contested[pred[earliest[gt] < pred]] = True
    free = np.nonzero(~contested[pred])[0]
    best = free[_best_candidates(pred[free], tiou[free], gt_row[free])]
    reached = tiou[best][None, :] >= thresholds[:, None]                                  # (R, B)
    tp[:, pred[best]] = reached
    taken[:, gt[best]] = reached

    # later rounds: the contested predictions, one copy of their candidate graph per threshold
    rest = np.nonzero(contested[pred])[0]
    t, k = np.nonzero((tiou[rest][None, :] >= thresholds[:, None]) & ~taken[:, gt[rest]])
    k = rest[k]
    node_pred, node_gt, gt_row, tiou = t * n_pred + pred[k], t * n_gt + gt[k], gt_row[k], tiou[k]
    tp, taken = tp.reshape(-1), taken.reshape(-1)
    while len(node_pred):                                                      # node_pred is non-decreasing
        earliest = np.full(n_thr * n_gt, n_thr * n_pred)
        np.minimum.at(earliest, node_gt, node_pred)                             # first claimant of each free gt
        waiting = np.zeros(n_thr * n_pred, dtype=bool)
        waiting[node_pred[earliest[node_gt] < node_pred]] = True
        ready = np.nonzero(~waiting[node_pred])[0]
        best = ready[_best_candidates(node_pred[ready], tiou[ready], gt_row[ready])]
        tp[node_pred[best]] = True
        taken[node_gt[best]] = True
        alive = waiting[node_pred] & ~taken[node_gt]
        node_pred, node_gt, gt_row, tiou = node_pred[alive], node_gt[alive], gt_row[alive], tiou[alive]
    return tp.reshape(n_thr, n_pred)


def detection_ap(ground_truth: Segments, predictions: Segments, num_classes: int,
                 tiou_thresholds=TIOU_THRESHOLDS) -> np.ndarray:
    """ActivityNet detection AP, ``(R, C)``: NaN for classes without ground truth.

    Per class: predictions sorted by score, descending (stable: input order breaks ties); greedy
    matching (``_match``); precision made monotone from the right (the interpolated envelope) and
    summed over the recall steps. Predictions of classes without ground truth are ignored; those
    in videos without ground truth of their class are false positives.
    """
    thresholds = _check_thresholds(tiou_thresholds)
    for name, seg in (("ground_truth", ground_truth), ("predictions", predictions)):
        if len(seg) and seg.label.max() >= num_classes:
            raise ValueError(f"{name}.label: class {int(seg.label.max())} is outside 0..{num_classes - 1}")
    n_pos = np.bincount(ground_truth.label, minlength=num_classes)                 # (C,)
    rows = np.nonzero(n_pos[predictions.label] > 0)[0]
    rows = rows[np.argsort(-predictions.score[rows], kind="stable")]              # ties keep input order
    rows = rows[np.argsort(predictions.label[rows], kind="stable")]
    label = predictions.label[rows]
    tp = _match(ground_truth, predictions.video[rows], label, predictions.start[rows],
                predictions.end[rows], thresholds, num_classes)                     # (R, P)

    ap = np.full((len(thresholds), num_classes), np.nan)
    class_edges = np.searchsorted(label, np.arange(num_classes + 1))
    for c in np.nonzero(n_pos)[0]:
        hits = tp[:, class_edges[c]:class_edges[c + 1]]                                 # (R, P_c)
        tp_cum = np.cumsum(hits, axis=1)
        precision = tp_cum / np.arange(1, hits.shape[1] + 1)
        recall = tp_cum / n_pos[c]
        envelope = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
        recall_step = np.diff(recall, axis=1, prepend=0.0)
        ap[:, c] = _sum_in_order(recall_step * envelope)
    return ap


def _sum_in_order(x: np.ndarray) -> np.ndarray:
    """Row sums added left to right (``np.sum`` adds pairwise), so the per-class loop of the
    definition gives the same floats to the last bit."""
    return np.cumsum(x, axis=1)[:, -1] if x.shape[1] else np.zeros(x.shape[0])


@dataclass(frozen=True, eq=False)
class LocalizationScores:
    """mAP at each tIoU threshold and its averages (fractions in [0, 1]).

    ap: (R, C), NaN for classes without ground truth; mean_ap: (R,) over classes with ground
    truth; averages: ``"[0.1:0.5]"`` -> mean of mean_ap over the thresholds in that range.
    """

    tiou_thresholds: tuple[float, ...]
    ap: np.ndarray
    mean_ap: np.ndarray
    averages: dict[str, float]

    def as_dict(self) -> dict[str, float]:
        out = {f"mAP@{t:g}": float(m) for t, m in zip(self.tiou_thresholds, self.mean_ap)}
        out.update({f"mAP@{name}": value for name, value in self.averages.items()})
        return out

    def table(self) -> str:
        """Two lines in the seed's layout (percent, one decimal)."""
        names = [f"{t:g}" for t in self.tiou_thresholds] + [f"AVG{name}" for name in self.averages]
        values = list(100 * self.mean_ap) + [100 * v for v in self.averages.values()]
        width = max(6, *(len(n) for n in names))
        return ("  ".join(n.rjust(width) for n in names) + "\n"
                + "  ".join(f"{v:.1f}".rjust(width) for v in values))


def evaluate_localization(ground_truth: Segments, predictions: Segments, num_classes: int,
                          tiou_thresholds=TIOU_THRESHOLDS) -> LocalizationScores:
    """mAP@tIoU of a whole split, with the [0.1:0.5], [0.3:0.7], [0.1:0.7] averages computed here."""
    thresholds = _check_thresholds(tiou_thresholds)
    if len(ground_truth) == 0:
        raise ValueError("ground_truth: no segments, mAP is undefined")
    ap = detection_ap(ground_truth, predictions, num_classes, thresholds)
    with_truth = ap[:, ~np.isnan(ap[0])]                                           # (R, C')
    mean_ap = _sum_in_order(with_truth) / with_truth.shape[1]
    averages = {}
    for lo, hi in AVERAGE_RANGES:
        inside = (thresholds >= lo - 1e-9) & (thresholds <= hi + 1e-9)
        if np.isclose(thresholds, lo).any() and np.isclose(thresholds, hi).any():
            averages[f"[{lo:g}:{hi:g}]"] = float(mean_ap[inside].mean())
    return LocalizationScores(tuple(float(t) for t in thresholds), ap, mean_ap, averages)


# ---------------------------------------------------------------------------------------------
# ActivityNet JSON: {"results": {video: [{"label", "score", "segment": [start, end]}]}}
# ---------------------------------------------------------------------------------------------

def to_activitynet(segments: Segments, video_names, class_names, units: str) -> dict:
    """Predictions as an ActivityNet result object (JSON-ready); ``units`` is recorded beside them."""
    video_names, class_names = list(video_names), list(class_names)
    results: dict[str, list] = {name: [] for name in video_names}
    for v, c, s, e, p in zip(segments.video.tolist(), segments.label.tolist(), segments.start.tolist(),
                             segments.end.tolist(), segments.score.tolist()):
        results[video_names[v]].append({"label": class_names[c], "score": p, "segment": [s, e]})
    return {"version": "VERSION 1.3", "units": units, "results": results,
            "external_data": {"used": False, "details": ""}}


def _number(where: str, x) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not np.isfinite(x):
        raise ValueError(f"{where}: expected a finite number, got {x!r}")
    return float(x)


def from_activitynet(obj, video_names, class_names, units: str) -> Segments:
    """Predictions from an ActivityNet result object; ValueError names the first bad field.

    Every video must be one of ``video_names`` and every label one of ``class_names``; ``units``
    must match the file's (a file without one is in seconds, ActivityNet's unit).
    """
    video_index = {name: i for i, name in enumerate(video_names)}
    class_index = {name: i for i, name in enumerate(class_names)}
    if not isinstance(obj, dict) or not isinstance(obj.get("results"), dict):
        raise ValueError("results: expected an object {video: [predictions]}")
    file_units = obj.get("units", "seconds")
    if file_units != units:
        raise ValueError(f"units: the file is in {file_units!r}, this evaluation needs {units!r}")
    columns: tuple[list, ...] = ([], [], [], [], [])
    for name, items in obj["results"].items():
        if name not in video_index:
            raise ValueError(f"results[{name!r}]: not a video of this split ({len(video_index)} videos)")
        if not isinstance(items, list):
            raise ValueError(f"results[{name!r}]: expected a list of predictions")
        for j, item in enumerate(items):
            where = f"results[{name!r}][{j}]"
            if not isinstance(item, dict):
                raise ValueError(f"{where}: expected an object with label, score, segment")
            label = item.get("label")
            if not isinstance(label, str) or label not in class_index:
                raise ValueError(f"{where}.label: unknown class {label!r}")
            segment = item.get("segment")
            if not isinstance(segment, list) or len(segment) != 2:
                raise ValueError(f"{where}.segment: expected [start, end], got {segment!r}")
            start, end = _number(f"{where}.segment", segment[0]), _number(f"{where}.segment", segment[1])
            if end < start:
                raise ValueError(f"{where}.segment: end {end} is before start {start}")
            for column, value in zip(columns, (video_index[name], class_index[label], start, end,
                                               _number(f"{where}.score", item.get("score")))):
                column.append(value)
    video, label, start, end, score = columns
    return Segments(np.array(video, dtype=np.int64), np.array(label, dtype=np.int64),
                    np.array(start, dtype=np.float64), np.array(end, dtype=np.float64),
                    np.array(score, dtype=np.float64))
