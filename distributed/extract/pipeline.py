"""The Ray Data pipeline: decode and prepare in CPU tasks, backbones in an actor pool, streaming.

    paths --map(decode_and_prepare, CPU tasks)--> compact inputs (npy bytes)
          --map_batches(Extractor, actors: concurrency, batch_size, num_gpus)--> files written, status rows

Rows carry each prepared input as ``.npy`` bytes (our own, read with ``allow_pickle=False``), so videos of
different lengths and sizes never meet Arrow's tensor typing. The actors write each video's files
themselves (atomically) and hand back only a small status row, so the driver's memory does not grow with
the number of videos; Ray Data's streaming executor bounds what is in flight.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from distributed.common.errors import DataError, UserError
from distributed.extract import outputs

log = logging.getLogger(__name__)


@dataclass
class ExtractOptions:
    out: Path
    backbones: list[str]
    weights_dir: Path | None = None
    weights_manifest: dict = field(default_factory=dict)
    random_init: bool = False
    seed: int = 0
    segments: int | None = None  # None: T = floor(seconds) per video; LLP: 10
    batch_size: int = 4  # videos per actor call
    concurrency: int = 1  # model actors
    num_gpus: float | None = None  # per actor; None: 1 when the cluster has GPUs, else 0
    model_cpus: float = 1.0
    decode_cpus: float = 1.0
    progress: bool = True


def decode_and_prepare(row: dict, backbones: list[str], segments: int | None) -> dict:
    """CPU task: decode one video, apply the sampling rules, prepare every backbone's input.
    A video that cannot be used becomes a row with its reason (it is recorded, the job goes on)."""
    from distributed.extract import backbones as registry
    from distributed.extract import sampling
    from distributed.extract.backbones import Prepared
    from distributed.extract.decode import decode

    result = {"id": row["id"], "path": row["path"], "error": "", "segments": 0}
    try:
        chosen = [registry.get(name) for name in backbones]
        video = decode(row["path"], extra_audio_rates=registry.extra_audio_rates(chosen))  # 48 kHz only for CLAP
        count = segments or sampling.num_segments(video.seconds)
        picked = video.frames[sampling.frame_indices(video.times, video.durations, count)]
        item = Prepared(frames=picked, audio=video.audio, segments=count, extra_audio=video.extra_audio)
        del video
        for name, backbone in zip(backbones, chosen):
            result[name] = outputs.to_bytes(backbone.prepare(item))
        result["segments"] = count
    except DataError as err:
        result["error"] = " ".join(str(err).split())
    except Exception as err:  # noqa: BLE001 - one bad video must not stop the job
        result["error"] = f"{row['path']}: {type(err).__name__}: {' '.join(str(err).split())}"
    if result["error"]:
        for name in backbones:
            result[name] = b""
    return result


class Extractor:
    """One model actor: builds every backbone once, then runs batches of videos and writes their files."""

    def __init__(self, opts: ExtractOptions, threads: int = 1):
        import torch

        from distributed.extract import backbones as registry
        from distributed.extract.weights import build_model

        torch.set_num_threads(max(1, threads))
        self.out = Path(opts.out)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.backbones = [registry.get(name) for name in opts.backbones]
        self.models = [build_model(b, opts.weights_dir, random_init=opts.random_init, seed=opts.seed,
                                   manifest=opts.weights_manifest).to(self.device) for b in self.backbones]

    def __call__(self, batch: dict) -> dict:
        import torch

        ids = [str(v) for v in batch["id"]]
        errors = [str(e) for e in batch["error"]]
        good = [i for i, e in enumerate(errors) if not e]
        try:
            features = {i: {} for i in good}
            with torch.inference_mode():
                for backbone, model in zip(self.backbones, self.models):
                    inputs = [outputs.from_bytes(batch[backbone.name][i]) for i in good]
                    if not inputs:
                        continue
                    stacked = np.concatenate(inputs)
                    result = backbone.forward(model, stacked, self.device).float().cpu().numpy()
                    start = 0
                    for i, x in zip(good, inputs):
                        features[i][backbone.name] = result[start : start + len(x)].reshape(-1, backbone.dim)
                        start += len(x)
            for i in good:
                for name, array in features[i].items():
                    if not np.isfinite(array).all():
                        raise ValueError(f"{name} features of {ids[i]} are not finite")
                    outputs.write_npy_atomically(outputs.feature_file(self.out, name, ids[i]),
                                                 array.astype(np.float32))
        except Exception as err:  # noqa: BLE001 - recorded per video; the job goes on
            for i in good:
                errors[i] = f"{batch['path'][i]}: model step failed ({type(err).__name__}: {' '.join(str(err).split())})"
        return {"id": np.asarray(ids), "path": np.asarray([str(p) for p in batch["path"]]),
                "error": np.asarray(errors), "segments": np.asarray(batch["segments"], dtype=np.int64)}


def init_ray(local_cpus: float) -> None:
    """Join the job's cluster under ``ray job submit`` (RAY_ADDRESS set); else a local instance on 127.0.0.1."""
    address = os.environ.get("RAY_ADDRESS", "")
    if not address:
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # every component on loopback (runtime/launch.py)
    import ray

    if ray.is_initialized():
        return
    if address:
        ray.init(logging_level=logging.WARNING)
    else:
        ray.init(_node_ip_address="127.0.0.1", include_dashboard=False, logging_level=logging.WARNING,
                 num_cpus=max(os.cpu_count() or 1, int(np.ceil(local_cpus))))


class _Progress:
    """tqdm on a terminal; otherwise a line every 10% (and at the end)."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.count, self.t0 = total, 0, time.monotonic()
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="video", desc="extract")
        self.enabled, self.step = enabled, max(1, total // 10)

    def update(self) -> None:
        self.count += 1
        if self.bar is not None:
            self.bar.update(1)
        elif self.enabled and (self.count % self.step == 0 or self.count == self.total):
            rate = self.count / max(time.monotonic() - self.t0, 1e-9)
            print(f"extract: {self.count}/{self.total} videos ({rate:.2f}/s)", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run(videos: list[tuple[str, Path]], opts: ExtractOptions) -> dict:
    """Extract every video not done yet; returns counts and the failures (also in failures.jsonl)."""
    out = Path(opts.out)
    outputs.prepare_out(out, opts.backbones)
    todo = [(vid, path) for vid, path in videos if not outputs.is_done(out, vid, opts.backbones)]
    summary = {"videos": len(videos), "skipped": len(videos) - len(todo), "written": 0, "failed": 0}
    failures: list[dict] = []
    if todo:
        init_ray(opts.concurrency * opts.model_cpus + opts.decode_cpus)
        import ray

        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        context.print_on_execution_start = False
        context.issue_detectors_config.detectors = []  # its memory hints are about the whole fused pipeline
        gpus = opts.num_gpus
        if gpus is None:
            gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
        items = [{"id": vid, "path": str(path)} for vid, path in todo]
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        decode_args = {"num_cpus": opts.decode_cpus}
        # a ray_remote_args_fn keeps decoding in its own CPU tasks: Ray Data would otherwise fuse it into the
        # model actors (operator_fusion.are_op_remote_args_compatible) and decode on the GPU workers
        ds = ds.map(decode_and_prepare, fn_kwargs={"backbones": opts.backbones, "segments": opts.segments},
                    ray_remote_args_fn=lambda: dict(decode_args))
        ds = ds.map_batches(Extractor, fn_constructor_kwargs={"opts": opts, "threads": int(max(1, opts.model_cpus))},
                            batch_size=opts.batch_size, concurrency=opts.concurrency, num_gpus=gpus,
                            num_cpus=opts.model_cpus, batch_format="numpy")
        progress = _Progress(len(todo), opts.progress)
        try:
            for row in ds.iter_rows():
                if row["error"]:
                    failures.append({"id": str(row["id"]), "path": str(row["path"]), "reason": str(row["error"])})
                else:
                    summary["written"] += 1
                progress.update()
        finally:
            progress.close()
    summary["failed"] = len(failures)
    outputs.write_failures(out, failures)
    summary["failures"] = failures
    return summary


def check_options(opts: ExtractOptions) -> None:
    """Everything the flags can get wrong, as one line, before Ray starts."""
    if opts.batch_size < 1 or opts.concurrency < 1:
        raise UserError("--batch-size and --concurrency must be at least 1")
    if opts.segments is not None and opts.segments < 1:
        raise UserError(f"--segments: must be at least 1, got {opts.segments}")
    if opts.num_gpus is not None and opts.num_gpus < 0:
        raise UserError(f"--num-gpus: must be >= 0, got {opts.num_gpus}")
