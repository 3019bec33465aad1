"""In-loop evaluation: forward a rank's share of a split, gather every rank's rows, put them back in the
split's order, score with the LLP protocol.

World-size invariance: rows are sorted by ``split_row`` (the video's row in the annotation CSV, the
order ``ppl-avvp evaluate`` aligns predictions to) before scoring, so the numbers are bitwise the same
for any number of ranks and equal to ``ppl-avvp evaluate`` on the same predictions. Without dense
truth (AudioSet-style data) the split's weak-label loss, computed from the same gathered rows, is
the model-selection score, identical on every rank.
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distributed.runtime.collectives import Collectives
from distributed.runtime.engine import cast_inputs
from model.metrics import llp_scores

INPUT_KEYS = ("audio", "visual_2d", "visual_3d")
ROW_KEYS = ("frame_prob", "global_prob", "weak_labels", "dense_audio", "dense_visual")


def _valid_rows(batch: dict) -> dict | None:
    """Drop rows marked invalid (skipped bad samples); None if nothing is left."""
    if "valid" not in batch or bool(batch["valid"].all()):
        return batch
    keep = batch["valid"].nonzero().flatten()
    batch = {k: ([v[i] for i in keep.tolist()] if isinstance(v, list) else v[keep]) for k, v in batch.items()}
    return batch if batch["video_id"] else None


@torch.no_grad()
def predict_rows(network: torch.nn.Module, batches: Iterable[dict], device: torch.device) -> dict[str, Any]:
    """This rank's predictions as NumPy rows (dense truth and weak labels passed through)."""
    was_training = network.training
    network.eval()
    parts: dict[str, list] = {k: [] for k in ("video_id", "split_row", *ROW_KEYS)}
    for batch in batches:
        batch = _valid_rows(batch)
        if batch is None:
            continue
        out = network(*cast_inputs(network, tuple(batch[k].to(device) for k in INPUT_KEYS)))
        parts["video_id"] += list(batch["video_id"])
        if "split_row" in batch:
            parts["split_row"].append(batch["split_row"].numpy())
        parts["frame_prob"].append(out.frame_prob.float().cpu().numpy())
        parts["global_prob"].append(out.global_prob.float().cpu().numpy())
        for key in ("weak_labels", "dense_audio", "dense_visual"):
            if key in batch:
                parts[key].append(batch[key].numpy())
    network.train(was_training)
    return parts


def gather_in_split_order(local: dict[str, Any], comm: Collectives) -> dict[str, Any]:
    """Every rank's rows, concatenated and sorted into the split's order (any world size)."""
    everything = comm.gather_objects(local)
    ids = [v for part in everything for v in part["video_id"]]
    merged: dict[str, Any] = {"video_id": ids}
    for key in ("split_row", *ROW_KEYS):
        arrays = [a for part in everything for a in part[key]]
        if arrays and sum(len(a) for a in arrays) == len(ids):
            merged[key] = np.concatenate(arrays)
    order = (np.argsort(merged["split_row"], kind="stable") if "split_row" in merged
             else np.argsort(np.asarray(ids, dtype=object), kind="stable"))
    merged["video_id"] = [ids[i] for i in order]
    for key in ("split_row", *ROW_KEYS):
        if key in merged:
            merged[key] = merged[key][order]
    return merged


def weak_label_loss(rows: dict[str, Any]) -> float:
    """Mean BCE of the video-level predictions against the weak labels (model selection without dense truth)."""
    prob = np.clip(rows["global_prob"].astype(np.float64), 1e-7, 1 - 1e-7)
    weak = rows["weak_labels"].astype(np.float64)
    return float(-(weak * np.log(prob) + (1 - weak) * np.log(1 - prob)).mean())


def evaluate_split(network: torch.nn.Module, batches: Iterable[dict], device: torch.device,
                   comm: Collectives) -> tuple[dict[str, float], float | None, dict[str, Any]]:
    """(the ten LLP numbers, or {} without dense truth; the weak-label loss, or None without weak labels;
    the gathered rows in split order)."""
    rows = gather_in_split_order(predict_rows(network, batches, device), comm)
    if not rows["video_id"]:
        return {}, None, rows
    scores = {}
    if "dense_audio" in rows and "dense_visual" in rows:
        scores = llp_scores(rows["frame_prob"], rows["global_prob"], rows["dense_audio"], rows["dense_visual"])
    loss = weak_label_loss(rows) if "weak_labels" in rows else None
    return scores, loss, rows


def save_predictions(path: Path, rows: dict[str, Any]) -> None:
    """The rows as ``ppl-avvp evaluate --predictions`` reads them (video_ids, frame_prob, global_prob). Atomic."""
    tmp = path.with_name(f".{path.name}.tmp.npz")
    np.savez(tmp, video_ids=np.asarray(rows["video_id"], dtype=str), frame_prob=rows["frame_prob"],
             global_prob=rows["global_prob"])
    os.replace(tmp, path)
