"""The LLP evaluation protocol (Tian et al. 2020; HAN's ``eval_metrics.py`` + ``main_avvp.py`` eval),
vectorised over a whole split.

Layouts: ``frame_prob (N, T, 2, C)`` (audio first), ``global_prob (N, C)``, dense truth
``(N, T, C)`` in {0, 1}. The ten numbers are the per-video F-scores averaged over videos, in
percent. Every floating-point operation is done in the order the reference does it, so the result
equals the reference's per-video loop bit for bit (``tests/oracle_metrics.py`` checks that).

Vectorised over the whole split: only (video, class) pairs that are predicted or present are
gathered (LLP is sparse: ~3 of 25 classes per video), and all counting runs on those pairs at once.
"""
from __future__ import annotations

import numpy as np

SCORE_KEYS: tuple[str, ...] = (
    "seg_a", "seg_v", "seg_av", "seg_type", "seg_event",
    "evt_a", "evt_v", "evt_av", "evt_type", "evt_event",
)


# ---------------------------------------------------------------------------------------------
# input checks
# ---------------------------------------------------------------------------------------------

def _as_numeric(name: str, x) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype.kind not in "biuf":
        raise ValueError(f"{name}: expected a numeric array, got dtype {x.dtype}")
    if x.dtype.kind == "f" and x.size and np.isnan(x.min()):     # min propagates NaN: one pass, no temporary
        raise ValueError(f"{name}: contains NaN")
    return x


def _check_predictions(frame_prob, global_prob) -> tuple[np.ndarray, np.ndarray]:
    frame_prob = _as_numeric("frame_prob", frame_prob)
    global_prob = _as_numeric("global_prob", global_prob)
    if frame_prob.ndim != 4 or frame_prob.shape[2] != 2:
        raise ValueError(f"frame_prob: expected shape (N, T, 2, C), got {frame_prob.shape}")
    n, t, _, c = frame_prob.shape
    if min(n, t, c) < 1:
        raise ValueError(f"frame_prob: empty dimension in shape {frame_prob.shape}")
    if global_prob.shape != (n, c):
        raise ValueError(f"global_prob: expected shape {(n, c)} to match frame_prob, "
                         f"got {global_prob.shape}")
    return frame_prob, global_prob


def _check_truth(name: str, dense, shape: tuple[int, int, int]) -> np.ndarray:
    dense = _as_numeric(name, dense)
    if dense.shape != shape:
        raise ValueError(f"{name}: expected shape {shape} (N, T, C) to match frame_prob, got {dense.shape}")
    if dense.dtype.kind != "b" and not ((dense == 0) | (dense == 1)).all():
        raise ValueError(f"{name}: values must be 0 or 1")
    return dense.astype(bool)


# ---------------------------------------------------------------------------------------------
# building blocks shared with predict / timeline code
# ---------------------------------------------------------------------------------------------

def binarize_predictions(frame_prob, global_prob, threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Segment decisions ``(pred_a, pred_v)``, each bool (N, T, C).

    Reference rule (main_avvp.py eval): a segment is positive iff its frame probability is
    >= threshold AND the video-level probability is >= threshold; the video-level gate removes
    segment false positives of classes the video is not predicted to contain.
    """
    frame_prob, global_prob = _check_predictions(frame_prob, global_prob)
    gate = (global_prob >= threshold)[:, None, :]                  # (N, 1, C), repeated over T
    pred_a = (frame_prob[:, :, 0, :] >= threshold) & gate
    pred_v = (frame_prob[:, :, 1, :] >= threshold) & gate
    return pred_a, pred_v


def extract_events(binary) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Maximal runs of 1s along the last axis, as padded arrays.

    ``binary (..., T)`` -> ``starts, ends`` int64 ``(..., K)`` (half-open ``[start, end)``) and
    ``valid`` bool ``(..., K)``, K = ceil(T / 2) (the most runs T segments can hold); runs are in
    time order and fill the first slots. Same events as the reference ``extract_event``.
    """
    x = np.asarray(binary).astype(bool)
    lead, t = x.shape[:-1], x.shape[-1]
    starts, ends, n_runs = _runs(x.reshape(-1, t).T)
    k_max = (t + 1) // 2
    valid = np.arange(k_max)[:, None] < n_runs
    return tuple(a.T.reshape(*lead, k_max) for a in (starts.astype(np.int64), ends.astype(np.int64), valid))


# ---------------------------------------------------------------------------------------------
# internals work time-major: (T, B) with one column per sequence, so that every reduction over
# time is an elementwise add of contiguous rows (a reduction over a short last axis is ~10x slower)
# ---------------------------------------------------------------------------------------------

def _runs(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Runs of 1s of (T, B) bool columns -> starts, ends (ceil(T/2), B) (0 where unused), counts (B,)."""
    t, b = x.shape
    begin = x.copy()
    begin[1:] &= ~x[:-1]                                            # first segment of a run
    last = x.copy()
    last[:-1] &= ~x[1:]                                             # last segment of a run
    # running run number per column; a loop over time steps (np.cumsum along a short axis is slower)
    dtype = np.int16 if t < 2**14 else np.int64                      # 2 * inter below must not overflow
    run_no = np.empty((t, b), dtype=dtype)
    count = np.zeros(b, dtype=dtype)
    for i in range(t):
        count += begin[i]
        run_no[i] = count
    starts = np.zeros(((t + 1) // 2, b), dtype=dtype)
    ends = np.zeros_like(starts)
    for out, edge, shift in ((starts, begin, 0), (ends, last, 1)):
        flat = np.flatnonzero(edge)                                 # = segment * b + column
        seg, col = np.divmod(flat, b)
        slot = run_no.ravel()[flat].astype(np.intp) - 1
        out.ravel()[slot * b + col] = seg + shift                   # ends are half-open
    return starts, ends, count


def _segment_counts(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """TP, FP, FN of segments per column (reference ``segment_level``). (T, B) -> (B,)."""
    tp = np.count_nonzero(pred & truth, axis=0)
    return tp, np.count_nonzero(pred, axis=0) - tp, np.count_nonzero(truth, axis=0) - tp


def _event_counts(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """TP, FP, FN of events per column (reference ``event_level``). (T, B) -> (B,).

    Reference ``event_wise_metric``, which is not a one-to-one matching: a predicted event is a TP
    if ANY truth event of the class has IoU >= 0.5 with it (else a FP); a truth event is a FN if
    NO predicted event does.
    """
    p_start, p_end, n_pred = _runs(pred)
    g_start, g_end, n_truth = _runs(truth)
    g_valid = np.arange(g_start.shape[0])[:, None] < n_truth        # (K, B)
    tp = np.zeros(pred.shape[1], dtype=np.int64)
    g_hit = np.zeros(g_valid.shape, dtype=bool)
    for k in range(int(n_pred.max(initial=0))):                     # loop over run slots only
        ps, pe = p_start[k], p_end[k]                               # k-th predicted event of each column
        inter = np.minimum(pe, g_end) - np.maximum(ps, g_start)     # (K, B); < 0 when disjoint
        union = np.maximum(pe, g_end) - np.minimum(ps, g_start)     # = |A u B| whenever inter >= 0
        # IoU >= 0.5  <=>  inter >= 0.5 * union (the reference's test, exact for integer lengths)
        match = (2 * inter >= union) & g_valid & (k < n_pred)
        tp += match.any(axis=0)
        g_hit |= match
    fn = n_truth - np.count_nonzero(g_hit, axis=0)
    return tp, n_pred - tp, fn


def _video_f(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, video: np.ndarray, rank: np.ndarray,
             n_videos: int) -> np.ndarray:
    """Per-video F: mean over the classes predicted or present of 2TP/(2TP+FP+FN); 1.0 if none.

    Counts are (M, B) over (video, class) pairs sorted by video then class; ``rank`` is a pair's
    slot within its video. Each video's class F-scores are laid out slot-major and summed slot by
    slot (``np.cumsum`` over axis 0): left to right in class order, as the reference's
    ``sum(F) / len(F)`` does, so the result is bit-identical (a pair that does not count adds 0.0,
    which changes no bit). Returns (M, n_videos).
    """
    denom = 2 * tp + fp + fn
    counted = denom > 0                  # reference: (TP+FP) != 0 or (TP+FN) != 0
    f = np.zeros(tp.shape, dtype=np.float64)
    np.divide(2 * tp, denom, out=f, where=counted)
    slots = int(rank.max(initial=0)) + 1
    f_slots = np.zeros((slots, tp.shape[0], n_videos))
    f_slots[rank, :, video] = f.T
    counted_slots = np.zeros((slots, tp.shape[0], n_videos), dtype=bool)
    counted_slots[rank, :, video] = counted.T
    total = np.cumsum(f_slots, axis=0)[-1]
    n_counted = np.count_nonzero(counted_slots, axis=0)
    return np.where(n_counted > 0, total / np.maximum(n_counted, 1), 1.0)   # 1.0: all true negatives


def _level_scores(counts: tuple[np.ndarray, np.ndarray, np.ndarray], video: np.ndarray, rank: np.ndarray,
                  n_videos: int, prefix: str) -> dict[str, float]:
    """The five numbers of one level from (3, B) pair counts of [audio, visual, audio-visual]."""
    # Event@AV: audio and visual TP/FP/FN pooled per class, then the same per-video F
    tp, fp, fn = (np.concatenate([x, x[:1] + x[1:2]]) for x in counts)        # (4, B): a, v, av, pooled
    f_video = _video_f(tp, fp, fn, video, rank, n_videos)                     # (4, N)
    f_a, f_v, f_av, f_event = (100 * np.mean(f) for f in f_video)
    # Type@AV: mean of the three percentages, summed in the reference's order (AV + A + V)
    f_type = (f_av + f_a + f_v) / 3.0
    return {f"{prefix}_a": float(f_a), f"{prefix}_v": float(f_v), f"{prefix}_av": float(f_av),
            f"{prefix}_type": float(f_type), f"{prefix}_event": float(f_event)}


# ---------------------------------------------------------------------------------------------
# the protocol
# ---------------------------------------------------------------------------------------------

def llp_scores(frame_prob, global_prob, dense_audio, dense_visual, threshold: float = 0.5) -> dict[str, float]:
    """The ten LLP numbers in percent: ``seg_*`` and ``evt_*`` for a, v, av, type (Type@AV), event (Event@AV).

    frame_prob (N, T, 2, C) [audio, visual], global_prob (N, C), dense_audio / dense_visual (N, T, C)
    in {0, 1}. Equals the reference protocol to the last bit; raises ValueError naming the array
    on a wrong shape, NaN or non-binary truth.
    """
    if not np.isfinite(threshold):
        raise ValueError(f"threshold: must be a finite number, got {threshold!r}")
    frame_prob, global_prob = _check_predictions(frame_prob, global_prob)
    n, t, _, c = frame_prob.shape
    truth_a = _check_truth("dense_audio", dense_audio, (n, t, c))
    truth_v = _check_truth("dense_visual", dense_visual, (n, t, c))

    # Only (video, class) pairs that are predicted (video-level gate open) or present in the truth
    # can have nonzero counts; all others are true negatives, which the protocol skips. Gather
    # those pairs as time-major (T, B) columns, in (video, class) order.
    gate = global_prob >= threshold                                             # (N, C)
    video, cls = np.nonzero(gate | (truth_a | truth_v).any(axis=1))
    rank = np.arange(video.size) - np.searchsorted(video, video)               # class slot within its video
    # segment decision = frame prob >= threshold AND video-level prob >= threshold (main_avvp.py eval)
    frames = (frame_prob[video, :, :, cls] >= threshold) & gate[video, cls][:, None, None]   # (B, T, 2)
    pa, pv = frames[:, :, 0], frames[:, :, 1]
    ga, gv = truth_a[video, :, cls], truth_v[video, :, cls]                     # (B, T)
    # AV = audio AND visual, for prediction and for truth
    pred = np.ascontiguousarray(np.concatenate([pa, pv, pa & pv]).T)           # (T, 3B)
    truth = np.ascontiguousarray(np.concatenate([ga, gv, ga & gv]).T)

    scores = {}
    for prefix, count in (("seg", _segment_counts), ("evt", _event_counts)):
        counts = tuple(x.reshape(3, -1) for x in count(pred, truth))
        scores.update(_level_scores(counts, video, rank, n, prefix))
    return scores
