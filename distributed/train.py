"""`ppl-avvp train` / `python -m distributed.train`: one training job.

Config file (or built-in preset: ppl, base, han) + ``key=value`` overrides -> validated config; the data
checked cheaply (folders, manifests, shapes, class count); then ``<output_dir>/config.yaml`` written and
the MLflow run created. ``distributed.num_workers: 0`` runs the worker loop in this process; N >= 1 runs
it on N Ray Train workers (local 127.0.0.1 instance, or the cluster of ``ray job submit`` /
``distributed.ray_address``).

One output_dir holds one run. A folder that already holds one (checkpoints, results, model files) is
refused unless ``--resume`` is given; then its checkpoints must belong to the same run (same fingerprint,
see distributed/runtime/checkpoint.py; optim.epochs may grow) and training continues from the latest.
Ray Train's restarts within a job (``distributed.max_failures``) always resume from its own checkpoint.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from distributed.common.commandline import OneLineParser, run_command
from distributed.common.config import RunConfig, load_config, save_config
from distributed.common.errors import ConfigError, DataError, UserError
from distributed.common.fsutil import HOST_TAG, check_output_path, pid_alive
from distributed.runtime.checkpoint import (BEST_MODEL_FILE, FINAL_MODEL_FILE, check_same_run, remove_stale_temporaries,
                                            run_checkpoints, run_fingerprint)
from distributed.runtime.launch import fit_with_ray
from distributed.runtime.loop import RESULTS_FILE, train_loop_per_worker
from distributed.runtime.wtal_eval import PROPOSALS_FILES

RUN_OUTPUTS = (RESULTS_FILE, BEST_MODEL_FILE, FINAL_MODEL_FILE, *PROPOSALS_FILES.values())
DRIVER_TAG = "ppl_avvp.driver"            # MLflow tag: "<host>:<pid>" of the process that created the run
OUTPUT_DIR_TAG = "ppl_avvp.output_dir"    # MLflow tag: the run's absolute output_dir


def parse_args(argv):
    parser = OneLineParser(prog="ppl-avvp train", description=__doc__.split("\n\n")[0],
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="ppl", help="YAML file or preset name (ppl, base, han)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. ppl.tau=0.05 data.batch_size=32")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in output_dir from its latest checkpoint (same settings; "
                             "optim.epochs may grow); without it an output_dir holding a run is refused")
    return parser.parse_intermixed_args(argv)   # overrides may follow flags: --no-mlflow optim.epochs=1


# ---------------------------------------------------------------------------------------------
# before anything is written
# ---------------------------------------------------------------------------------------------

def check_data(cfg: RunConfig) -> None:
    """Cheap checks of what the worker loop will read: folders and manifests exist, shapes and the class
    count fit model.*, the train split fills a batch on every rank. No feature array beyond one video."""
    if cfg.distributed.engine == "deepspeed":
        from distributed.runtime.engine import deepspeed_config

        deepspeed_config(cfg)                      # the optional JSON exists and agrees with the config
    if cfg.is_wtal:
        check_wtal_data(cfg)
        return
    if cfg.data.shards:
        from distributed.data.shards import ShardData

        ShardData(cfg, 0, cfg.world_size)          # manifests, shapes, batch arithmetic; opens no tar
        return
    from distributed.data.arrays import batches_per_rank
    from distributed.data.features import FeatureSpec, read_video_features
    from distributed.data.llp import LLP_CLASSES, load_split

    if cfg.model.num_classes != len(LLP_CLASSES):
        raise ConfigError(f"model.num_classes: {cfg.model.num_classes}, but the LLP annotations in "
                          f"{cfg.data.annotations} name {len(LLP_CLASSES)} classes")
    m = cfg.model
    spec = FeatureSpec(num_segments=m.num_segments, audio_dim=m.audio_dim, visual_2d_dim=m.visual_2d_dim,
                       visual_3d_dim=m.visual_3d_dim)
    for split in ("train", "val", "test"):
        videos = load_split(cfg.data.annotations, split, num_segments=m.num_segments).video_ids
        if not videos:
            raise DataError(f"{cfg.data.annotations}: split {split!r} has no videos")
        read_video_features(cfg.data.features, videos[0], spec)
        if split == "train":
            n = min(len(videos), cfg.data.limit_train) if cfg.data.limit_train else len(videos)
            batches_per_rank(n, cfg.data.batch_size, cfg.world_size)


def check_wtal_data(cfg: RunConfig) -> None:
    """W-TAL (THUMOS14 layout): both splits' annotations, the class count, one video's features per split;
    or, with data.shards, the shard sets' manifests, annotations and widths (no tar is opened)."""
    if cfg.data.shards:
        from distributed.data.shards.wtal import WTALShardData

        WTALShardData(cfg, 0, cfg.world_size)
        return
    from distributed.data.arrays import batches_per_rank
    from distributed.data.thumos14 import PROTOCOLS, load_thumos14
    from distributed.data.wtal_features import read_wtal_features

    m, d = cfg.model, cfg.data
    if m.rgb_dim != m.flow_dim:
        raise ConfigError(f"model.flow_dim: {m.flow_dim} differs from model.rgb_dim={m.rgb_dim}; the I3D feature "
                          f"reader takes one width for both streams")
    for split in ("train", "test"):
        ann = load_thumos14(d.annotations, split, test_set=PROTOCOLS[d.protocol].test_set)
        if len(ann.classes) != m.num_classes:
            raise ConfigError(f"model.num_classes: {m.num_classes}, but the THUMOS14 annotations in {d.annotations} "
                              f"name {len(ann.classes)} classes")
        if len(ann) == 0:
            raise DataError(f"{d.annotations}: THUMOS14 split {split!r} has no annotated videos")
        read_wtal_features(d.features, ann.videos[0], dim=m.rgb_dim, duration=float(ann.duration[0]))
        if split == "train":
            batches_per_rank(min(len(ann), d.limit_train) if d.limit_train else len(ann), d.batch_size, cfg.world_size)


def check_output_dir(cfg: RunConfig, resume: bool) -> list[Path]:
    """The resume-or-fresh policy (module doc), read-only: refusals are one line and touch nothing.
    Returns the checkpoints a resumed run continues from."""
    output_dir = Path(cfg.output_dir)
    check_output_path(output_dir, "output_dir", folder=True)
    checkpoints = run_checkpoints(output_dir)
    outputs = [name for name in RUN_OUTPUTS if (output_dir / name).exists()]
    if not resume and (checkpoints or outputs):
        found = [str(p.relative_to(output_dir)) for p in checkpoints[-1:]] + outputs
        raise UserError(f"output_dir {output_dir}: holds a run already ({', '.join(found)}); pass --resume to "
                        f"continue it, or choose another output_dir")
    fingerprint = run_fingerprint(cfg)
    for checkpoint in checkpoints:
        check_same_run(checkpoint, fingerprint)
    return checkpoints


def prepare_output_dir(cfg: RunConfig, checkpoints: list[Path], resume: bool) -> None:
    """Create output_dir; remove what killed writers left and results that no longer describe the run."""
    output_dir = Path(cfg.output_dir)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"output_dir {output_dir}: cannot create it ({' '.join(str(err).split())})") from None
    remove_stale_temporaries(output_dir / "checkpoints")
    for name in ("config.yaml", *RUN_OUTPUTS):
        (output_dir / f".{name}.tmp").unlink(missing_ok=True)   # a killed writer's half file
    # results describe a finished run; a resumed one writes them again, a fresh one (nothing to resume) new ones
    stale = [RESULTS_FILE] if checkpoints else list(RUN_OUTPUTS)
    for name in stale:
        (output_dir / name).unlink(missing_ok=True)
    if resume and not checkpoints:
        print(f"output_dir {output_dir}: no checkpoint to resume from; starting the run", flush=True)


# ---------------------------------------------------------------------------------------------
# MLflow run status
# ---------------------------------------------------------------------------------------------

def _client(cfg: RunConfig):
    from distributed.runtime.tracking import mlflow_client, tracking_uri

    return mlflow_client(tracking_uri(cfg))


def _fail_orphaned_runs(cfg: RunConfig, client) -> None:
    """Earlier runs of this output_dir still RUNNING whose driver (this host) is gone, e.g. ``kill -9``: FAILED."""
    output_dir = str(Path(cfg.output_dir).resolve())
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    if experiment is None or "'" in output_dir:
        return
    for run in client.search_runs([experiment.experiment_id],
                                  f"tags.{OUTPUT_DIR_TAG} = '{output_dir}' and attributes.status = 'RUNNING'"):
        host, _, pid = run.data.tags.get(DRIVER_TAG, "").partition(":")
        if host == HOST_TAG and pid.isdigit() and not pid_alive(int(pid)):
            client.set_tag(run.info.run_id, "ppl_avvp.failure", f"driver process {pid} died")
            client.set_terminated(run.info.run_id, "FAILED")


def _start_mlflow_run(cfg: RunConfig) -> str:
    from distributed.runtime.tracking import create_run, tracking_uri

    run_id = create_run(cfg)
    client = _client(cfg)
    client.set_tag(run_id, DRIVER_TAG, f"{HOST_TAG}:{os.getpid()}")
    client.set_tag(run_id, OUTPUT_DIR_TAG, str(Path(cfg.output_dir).resolve()))
    _fail_orphaned_runs(cfg, client)
    print(f"MLflow run {run_id} at {tracking_uri(cfg)}", flush=True)
    return run_id


def _end_mlflow_run(cfg: RunConfig, run_id: str, status: str, err: BaseException) -> None:
    """A run that did not finish must not stay RUNNING in MLflow; tracking trouble must not hide ``err``."""
    try:
        client = _client(cfg)
        client.set_tag(run_id, "ppl_avvp.failure", " ".join(f"{type(err).__name__}: {err}".split())[:500])
        client.set_terminated(run_id, status)
    except Exception as mlflow_err:  # noqa: BLE001
        print(f"ppl-avvp train: could not mark MLflow run {run_id} {status}: {mlflow_err}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# the job
# ---------------------------------------------------------------------------------------------

def _fit(cfg: RunConfig, loop_config: dict, callbacks: list | None) -> None:
    """Ray Train; a worker's UserError (bad data, a refused checkpoint) comes back as that one line."""
    try:
        fit_with_ray(cfg, loop_config, callbacks=callbacks)
    except UserError:
        raise
    except Exception as err:
        failures = getattr(err, "worker_failures", None) or {}
        user_errors = [failures[rank] for rank in sorted(failures) if isinstance(failures[rank], UserError)]
        if user_errors:
            raise UserError(str(user_errors[0])) from None
        raise


def train(cfg: RunConfig, mlflow: bool = True, *, resume: bool = False, on_epoch=None,
          callbacks: list | None = None) -> dict:
    """Run one job end to end; returns results.json's content.

    ``resume``: continue the run in output_dir (see the module doc). ``on_epoch(metrics)`` is called after
    every epoch of an in-process run (num_workers=0); ``callbacks`` go to Ray Train's RunConfig (e.g.
    Tune's report callback) for Ray Train runs.
    """
    checkpoints = check_output_dir(cfg, resume)
    check_data(cfg)
    prepare_output_dir(cfg, checkpoints, resume)
    output_dir = Path(cfg.output_dir)
    save_config(cfg, output_dir / "config.yaml")
    run_id = _start_mlflow_run(cfg) if mlflow and cfg.tracking.mlflow else None
    loop_config = {"config": cfg.to_dict(), "mlflow_run_id": run_id}
    try:
        if cfg.distributed.num_workers == 0:
            train_loop_per_worker(loop_config, on_epoch=on_epoch)
        else:
            _fit(cfg, loop_config, callbacks)
    except BaseException as err:
        if run_id:
            _end_mlflow_run(cfg, run_id, "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED", err)
        raise
    return json.loads((output_dir / RESULTS_FILE).read_text())


def main(argv=None) -> int:
    args = parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    results = train(cfg, mlflow=not args.no_mlflow, resume=args.resume)
    if results.get("task") == "wtal":
        from distributed.runtime.wtal_eval import format_wtal_table

        print(format_wtal_table(results["rows"], title=f"{cfg.name}: THUMOS14 test, protocol {results['protocol']} "
                                                       f"(mAP %, tIoU)"))
    else:
        from distributed.evaluate import format_table

        print(format_table(results["test"], title=f"{cfg.name}: test (best val epoch {results['best_epoch']})"))
    print(f"results: {Path(cfg.output_dir) / RESULTS_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
