"""W-TAL evaluation in the worker loop: forward each rank's test videos, make proposals, gather, mAP@tIoU.

Which scores feed the proposals (**ours**, docs/tal.md): the snippet class scores are the two streams'
segment probabilities averaged, cas[t, c] = (p_rgb[t, c] + p_flow[t, c]) / 2, thresholded class by class
(the seed's HAN has no class-agnostic attention branch); the video scores are the parser's video-level
P (Eq. 6). Proposals, OIC scores, soft-NMS, the ambiguous filter and the mAP are model.localization's,
unchanged. Each rank makes the proposals of its own videos; the gathered proposals are put back in the
split's video order (stable), so the scores are the same for any number of ranks.

The epoch score is logged under ``test_map_*``; model selection here is best-on-test (the peers report
it), and results.json holds the last epoch's and the best-on-test epoch's rows, each labelled.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distributed.data.thumos14 import Protocol, Thumos14Split, write_proposals
from distributed.runtime.collectives import Collectives
from distributed.runtime.engine import cast_inputs
from model.localization import (AVERAGE_RANGES, TIOU_THRESHOLDS, Segments, evaluate_localization,
                                snippet_segments_to_seconds, video_proposals)

SELECT_KEY = "map_avg_0.1_0.7"
PROPOSALS_FILES = {"last": "test_proposals_last.json", "best_on_test": "test_proposals_best.json"}


def metric_keys() -> list[str]:
    """MLflow-safe names: map_0.1 ... map_0.7, map_avg_0.1_0.5, map_avg_0.3_0.7, map_avg_0.1_0.7."""
    return [f"map_{t:g}" for t in TIOU_THRESHOLDS] + [f"map_avg_{lo:g}_{hi:g}" for lo, hi in AVERAGE_RANGES]


def snippet_scores(frame_prob: np.ndarray) -> np.ndarray:
    """(T, M, C) per-stream probabilities -> (T, C) class activation: the mean over the streams."""
    return frame_prob.astype(np.float64).mean(axis=1)


@torch.no_grad()
def predict_videos(network: torch.nn.Module, batches: Iterable[dict], device: torch.device) -> list[dict]:
    """This rank's videos: split_row, video_id, frame_prob (T_i, M, C) and global_prob (C,), padding cut off."""
    was_training = network.training
    network.eval()
    rows = []
    for batch in batches:
        inputs = (batch["rgb"].to(device), batch["flow"].to(device), batch["mask"].to(device))
        out = network(*cast_inputs(network, inputs))
        frame_prob, global_prob = out.frame_prob.float().cpu().numpy(), out.global_prob.float().cpu().numpy()
        for i, t in enumerate(batch["length"].tolist()):
            rows.append({"split_row": int(batch["split_row"][i]), "video_id": batch["video_id"][i],
                         "frame_prob": frame_prob[i, :t], "global_prob": global_prob[i]})
    network.train(was_training)
    return rows


def proposals_of(rows: list[dict], split: Thumos14Split, protocol: Protocol) -> Segments:
    """Every row's proposals (snippet units; seconds for protocol B), in row order."""
    parts = []
    for row in rows:
        v = row["split_row"]
        ambiguous = split.ambiguous_snippets(v) if protocol.drop_ambiguous else None
        parts.append(video_proposals(snippet_scores(row["frame_prob"]), row["global_prob"].astype(np.float64),
                                     video=v, ambiguous=ambiguous))
    proposals = Segments.concatenate(parts)
    return snippet_segments_to_seconds(proposals) if protocol.units == "seconds" else proposals


def score(split: Thumos14Split, proposals: Segments, protocol: Protocol) -> dict[str, float]:
    """mAP@0.1..0.7 and the three averages, in percent, under the keys of ``metric_keys``."""
    result = evaluate_localization(split.ground_truth(protocol.units), proposals, len(split.classes))
    values = [*result.mean_ap.tolist(), *result.averages.values()]
    return {k: 100.0 * float(v) for k, v in zip(metric_keys(), values)}


def _gathered(local: Segments, comm: Collectives) -> Segments:
    parts = comm.gather_objects(tuple(getattr(local, n) for n in ("video", "label", "start", "end", "score")))
    merged = Segments.concatenate(Segments(*p) for p in parts)
    return merged.take(np.argsort(merged.video, kind="stable"))


def evaluate_wtal(network: torch.nn.Module, data, device: torch.device, comm: Collectives,
                  split_name: str = "test") -> tuple[dict[str, float], Segments]:
    """The split's scores (same on every rank) and its gathered proposals."""
    split = data.splits[split_name]
    local = proposals_of(predict_videos(network, data.eval(split_name), device), split.annotations, data.protocol)
    proposals = _gathered(local, comm)
    return score(split.annotations, proposals, data.protocol), proposals


def format_wtal_table(rows: list[dict], title: str | None = None) -> str:
    """The seed's Table 5 layout: mAP@0.1 ... 0.7, AVG [0.1:0.5], [0.3:0.7], [0.1:0.7] (percent, one decimal),
    one line per labelled row (``{"label", "test": scores}``)."""
    names = [f"{t:g}" for t in TIOU_THRESHOLDS] + [f"[{lo:g}:{hi:g}]" for lo, hi in AVERAGE_RANGES]
    label_width = max([len("mAP@tIoU")] + [len(r["label"]) for r in rows]) + 2
    lines = [title] if title else []
    lines.append(f"{'mAP@tIoU':<{label_width}}" + "".join(f"{n:>8}" for n in names[:7])
                 + "".join(f"{'AVG' + n:>14}" for n in names[7:]))
    for row in rows:
        values = [row["test"][k] for k in metric_keys()]
        lines.append(f"{row['label']:<{label_width}}" + "".join(f"{v:>8.1f}" for v in values[:7])
                     + "".join(f"{v:>14.1f}" for v in values[7:]))
    return "\n".join(lines)


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def _write_proposals_atomic(path: Path, proposals: Segments, split: Thumos14Split, units: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write_proposals(tmp, proposals, split, units)
    os.replace(tmp, path)


def finish_wtal(cfg, ctx, engine, data, comm: Collectives, state, logger, results_file: str, best_model_file: str,
                load_model) -> None:
    """Score test with the last and with the best-on-test weights; results.json, proposals, MLflow, report."""
    output_dir = Path(cfg.output_dir)
    comm.barrier()                     # rank 0 has written the best model
    network = engine.module
    last_scores, last_props = evaluate_wtal(network, data, ctx.device, comm)
    best = load_model(output_dir / best_model_file)
    current = {k: v.detach().clone() for k, v in network.state_dict().items()}
    network.load_state_dict(best["network"])
    best_scores, best_props = evaluate_wtal(network, data, ctx.device, comm)
    network.load_state_dict(current)
    if len(set(comm.gather_objects(state.best_epoch))) != 1:
        raise RuntimeError(f"ranks disagree on the best epoch: {comm.gather_objects(state.best_epoch)}")
    last_epoch = cfg.optim.epochs
    rows = [{"label": f"last epoch ({last_epoch})", "selection": "last", "epoch": last_epoch, "test": last_scores},
            {"label": f"best on test (epoch {state.best_epoch})", "selection": "best_on_test",
             "epoch": state.best_epoch, "test": best_scores}]
    results = {"name": cfg.name, "task": "wtal", "protocol": cfg.data.protocol, "units": data.protocol.units,
               "best_epoch": state.best_epoch, "last_epoch": last_epoch, "rows": rows, "test": last_scores,
               "history": state.history}
    if ctx.rank == 0:
        split = data.splits["test"].annotations
        for selection, proposals in (("last", last_props), ("best_on_test", best_props)):
            _write_proposals_atomic(output_dir / PROPOSALS_FILES[selection], proposals, split, data.protocol.units)
        _write_json_atomic(output_dir / results_file, results)
        if logger:
            metrics = {f"test_last_{k}": v for k, v in last_scores.items()}
            metrics.update({f"test_best_on_test_{k}": v for k, v in best_scores.items()})
            logger.metrics(metrics, step=last_epoch)
            for name in (results_file, "config.yaml", *PROPOSALS_FILES.values()):
                logger.artifact(output_dir / name)
            logger.finish()
    if ctx.in_ray:
        import ray.train

        ray.train.report({"test": last_scores, "best_epoch": state.best_epoch, "done": True})
