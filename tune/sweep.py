"""`ppl-avvp sweep` / `python -m tune.sweep`: a Ray Tune sweep over any training config key.

    ppl-avvp sweep --config SWEEP.yaml [--resume] [--dry-run] [--storage DIR] [--name NAME] [key=value ...]

The sweep file (schema in tune/spaces.py) names a base training config, a space of config keys
(grid / choice / uniform / loguniform), seeds, the metric and optionally ASHA and random search.
They become Tune's own param_space (tune.grid_search, tune.choice, tune.uniform, tune.loguniform;
the seeds a grid dimension) and BasicVariantGenerator (num_samples, seeded). The whole file is
validated first (every trial's config goes through the config loader): a bad key or value is one
error line and exit code 2, before Ray starts. ``--dry-run`` lists the trials Tune will run.

Every trial calls ``distributed.train.train`` with base + overrides + its point + its seed; its
MLflow run is a child of ONE parent run for the sweep (params: the sweep file flattened, tag
``ppl_avvp.sweep=<name>``), in the store every command shares unless the file names another
(``$MLFLOW_TRACKING_URI``, else ``sqlite:///<cwd>/runs/mlflow.db``). Trials report each epoch's
metrics to Tune: in-process trials (``resources_per_trial.workers: 0``) as each epoch ends, so ASHA
can stop them early; trials on their own Ray Train workers after ``train()`` returns, so ASHA ranks
them but cannot cut them short.

State lives in ``<storage>/<name>/``: Tune's experiment, ``sweep_state.json`` (parent run id, MLflow
URI, fingerprint of the trials), one folder per trial (``.../<trial>/train`` is the run's
output_dir) and ``compare/`` (the table and plots). ``--resume`` restores the Tune experiment
(finished trials are not rerun; errored and unfinished ones are; an interrupted in-process trial
continues from its last epoch checkpoint) and reuses the parent run; without a previous state it
starts the sweep. At the end the comparison table (``tune.compare``) and the wall time are printed.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from distributed.common.commandline import OneLineParser, run_command
from distributed.common.config import flatten_tree
from distributed.common.errors import UserError
from distributed.runtime.tracking import experiment_id, mlflow_client
from tune.compare import STATE_FILE, read_state, run_compare, sweep_child_runs
from tune.spaces import SweepSpec, load_sweep, point_label, trial_run_name, trial_tree


def parse_args(argv):
    parser = OneLineParser(prog="ppl-avvp sweep", description=__doc__.split("\n\n")[0],
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="sweep file (YAML; see tune/sweeps/*.yaml)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the sweep in <storage>/<name> (finished trials are kept); starts it if new")
    parser.add_argument("--dry-run", action="store_true", help="validate and list the trials; start nothing")
    parser.add_argument("--storage", help="sweeps folder (default: the file's storage:, else <cwd>/runs/sweeps)")
    parser.add_argument("--name", help="sweep name (default: the file's name:, else its stem)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the base training config")
    return parser.parse_intermixed_args(argv)   # overrides may follow flags


# ---------------------------------------------------------------------------------------------
# MLflow parent run + state file (driver side)
# ---------------------------------------------------------------------------------------------

def describe(spec: SweepSpec) -> str:
    """What --dry-run and a start print: the trials' count, each dimension and its Tune object, where things go."""
    lines = [f"sweep {spec.name}: {len(spec.points)} point(s) x {len(spec.seeds)} seed(s) = {spec.num_trials} trial(s)"]
    if spec.random_search:
        lines.append(f"  random search: {spec.num_samples} sample(s) x {len(spec.points) // spec.num_samples} "
                     f"grid combination(s); Tune's variant generator seeded {spec.search_seed}")
    lines += [f"  {dim.key}: {dim.describe(spec.random_search)}" for dim in spec.dimensions]
    lines.append(f"  seeds: {spec.seeds} (tune.grid_search); metric: {spec.metric} ({spec.mode})"
                 + (f"; ASHA max_t={spec.asha.max_t} grace={spec.asha.grace_period}" if spec.asha else ""))
    mode = "in-process" if spec.workers == 0 else f"{spec.workers} Ray Train worker(s)"
    lines.append(f"  per trial: {mode}, {spec.cpus_per_worker:g} CPU per worker; "
                 f"max concurrent: {spec.max_concurrent_trials or 'as resources allow'}")
    lines.append(f"  storage: {spec.experiment_dir}")
    lines.append(f"  MLflow: {spec.tracking_uri} (experiment {spec.experiment})")
    return "\n".join(lines)


def parent_params(spec: SweepSpec) -> dict[str, str]:
    """The sweep file flattened (one param per swept key) plus what it resolved to: the parent run's params."""
    flat = flatten_tree({k: v for k, v in spec.raw.items() if k != "space"})
    flat.update({f"space.{key}": value for key, value in (spec.raw.get("space") or {}).items()})
    out: dict[str, str] = {}
    for key, value in flat.items():
        if key == "overrides" and isinstance(value, list):
            value = " ".join(map(str, value))
        out[f"sweep.{key}"] = value if isinstance(value, str) else json.dumps(value, default=str)
    out.update({"sweep.file": str(spec.path.resolve()), "sweep.base_resolved": spec.base,
                "sweep.cli_overrides": " ".join(spec.cli_overrides), "sweep.seeds_resolved": json.dumps(spec.seeds),
                "sweep.num_points": str(len(spec.points)), "sweep.num_trials": str(spec.num_trials),
                "sweep.storage_resolved": str(spec.storage)})
    return {k[:250]: v[:6000] for k, v in out.items()}


def ensure_parent_run(spec: SweepSpec, state: dict | None) -> str:
    """Create the experiment and the sweep's parent run (or reuse the one in sweep_state.json)."""
    from mlflow.entities import Param

    client = mlflow_client(spec.tracking_uri)
    if state:
        run_id = state["parent_run_id"]
        try:
            client.get_run(run_id)
        except Exception as err:
            raise UserError(f"{spec.experiment_dir / STATE_FILE}: parent run {run_id} not found in "
                            f"{spec.tracking_uri} ({str(err).splitlines()[0]})") from None
        client.update_run(run_id, status="RUNNING")
        return run_id
    mlflow_experiment_id = experiment_id(client, spec.experiment)
    tags = {"ppl_avvp.sweep": spec.name, "ppl_avvp.role": "sweep",
            "ppl_avvp.swept_keys": ",".join(spec.swept_keys), "ppl_avvp.storage": str(spec.experiment_dir)}
    run = client.create_run(mlflow_experiment_id, run_name=f"sweep {spec.name}", tags=tags)
    run_id = run.info.run_id
    params = [Param(k, v) for k, v in parent_params(spec).items()]
    for i in range(0, len(params), 90):
        client.log_batch(run_id, params=params[i:i + 90])
    client.log_artifact(run_id, str(spec.path))
    spec.experiment_dir.mkdir(parents=True, exist_ok=True)
    state = {"name": spec.name, "parent_run_id": run_id, "tracking_uri": spec.tracking_uri,
             "experiment": spec.experiment, "experiment_id": mlflow_experiment_id, "fingerprint": spec.fingerprint(),
             "sweep_file": str(spec.path), "num_trials": spec.num_trials, "swept_keys": spec.swept_keys,
             "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    tmp = spec.experiment_dir / f".{STATE_FILE}.tmp"
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    os.replace(tmp, spec.experiment_dir / STATE_FILE)
    return run_id


# ---------------------------------------------------------------------------------------------
# the trainable (runs in a Tune trial actor)
# ---------------------------------------------------------------------------------------------

def _numeric(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


class EpochReporter:
    """Per-epoch results to Tune, in order, each epoch once; the last epoch's result also carries
    the final numbers (test_<key>, best_val_<key>, best_epoch), so a trial's last Tune result is
    its summary. ``epoch()`` is for a live hook; ``finish()`` sends what was not sent yet."""

    def __init__(self, report: Callable[[dict], None], epochs: int):
        self.report, self.epochs, self.sent = report, epochs, set()

    def epoch(self, metrics: dict[str, Any]) -> None:
        values = _numeric(metrics)
        epoch = int(values.get("epoch", 0))
        if epoch >= self.epochs or epoch in self.sent:     # the last epoch waits for the final numbers
            return
        self.sent.add(epoch)
        self.report(values)

    def finish(self, results: dict[str, Any]) -> dict[str, Any]:
        history = sorted((h for h in results.get("history") or []), key=lambda h: h.get("epoch", 0))
        for metrics in history[:-1]:
            self.epoch(metrics)
        final = _numeric(history[-1]) if history else {"epoch": self.epochs}
        final.update({f"test_{k}": v for k, v in (results.get("test") or {}).items()})
        final.update({f"best_val_{k}": v for k, v in (results.get("val") or {}).items()})
        final["best_epoch"] = results.get("best_epoch", -1)
        self.report(final)
        return final


def _runs_of(client, payload: dict, output_dir: Path, status: str | None = None) -> list:
    experiment = client.get_experiment_by_name(payload["experiment"])
    query = f"tags.mlflow.parentRunId = '{payload['parent_run_id']}' and params.output_dir = '{output_dir}'"
    if status:
        query += f" and attributes.status = '{status}'"
    return list(client.search_runs([experiment.experiment_id], filter_string=query, max_results=100))


def _tag_runs(client, payload: dict, output_dir: Path, trial_id: str, point: dict) -> None:
    for run in _runs_of(client, payload, output_dir):
        for key, value in (("ppl_avvp.sweep", payload["name"]), ("ppl_avvp.role", "trial"),
                           ("ppl_avvp.trial_id", trial_id), ("ppl_avvp.point", json.dumps(point, default=str))):
            client.set_tag(run.info.run_id, key, value)


def run_trial(config: dict[str, Any], payload: dict[str, Any] | None = None) -> None:
    """Tune function trainable: one training run for the (point, seed) Tune resolved from the param_space."""
    from ray import tune as raytune

    from distributed.common.config import config_from_dict
    from distributed.runtime.loop import RESULTS_FILE
    from distributed.train import train

    point, seed = {key: config[key] for key in payload["swept_keys"]}, int(config["seed"])
    context = raytune.get_context()
    trial_dir = Path(payload["experiment_dir"]) / context.get_trial_name()
    output_dir = trial_dir / "train"
    cfg = config_from_dict(trial_tree(payload, point, seed, output_dir,
                                      trial_run_name(payload["name"], point, seed)))
    client = mlflow_client(payload["tracking_uri"])
    reporter = EpochReporter(raytune.report, cfg.optim.epochs)
    results_file = output_dir / RESULTS_FILE
    if results_file.is_file() and _runs_of(client, payload, output_dir, status="FINISHED"):
        # this trial trained to the end before the sweep was interrupted (Tune had not recorded it)
        print(f"{context.get_trial_name()}: already finished, reporting {results_file}", flush=True)
        _tag_runs(client, payload, output_dir, context.get_trial_id(), point)
        reporter.finish(json.loads(results_file.read_text()))
        return
    for stale in _runs_of(client, payload, output_dir, status="RUNNING"):   # an interrupted attempt
        client.set_tag(stale.info.run_id, "ppl_avvp.superseded", "true")
        client.set_terminated(stale.info.run_id, "KILLED")

    # in-process trials report every epoch live (ASHA can stop them early)
    # a retried or restored trial continues its own run (same output_dir, same fingerprint)
    results = train(cfg, resume=True, on_epoch=reporter.epoch if cfg.distributed.num_workers == 0 else None)
    _tag_runs(client, payload, output_dir, context.get_trial_id(), point)
    reporter.finish(results)


def _slug(point: dict[str, Any], seed: int) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", point_label(point, seed).replace(" ", ","))[:80]


def trial_name(trial) -> str:
    """Tune trial name (also the trial's folder name): <trial id>_<point>,seed=<s>."""
    point = {key: value for key, value in trial.config.items() if key != "seed"}
    return f"{trial.trial_id}_{_slug(point, trial.config['seed'])}"


# ---------------------------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------------------------

def _init_ray(spec: SweepSpec) -> bool:
    """Join $RAY_ADDRESS / distributed.ray_address, else a local instance on 127.0.0.1. True if started."""
    import ray

    if ray.is_initialized():
        return False
    address = spec.base_tree.get("distributed", {}).get("ray_address") or os.environ.get("RAY_ADDRESS", "")
    if address:
        ray.init(address=address)
    else:
        ray.init(_node_ip_address="127.0.0.1", include_dashboard=False)
    return True


def _check_fits(spec: SweepSpec) -> None:
    """A trial that asks for more CPUs/GPUs than the whole cluster has would wait in Tune's queue forever."""
    import ray

    have = ray.cluster_resources()
    need = {"CPU": spec.cpus_per_worker * max(spec.workers, 1), "GPU": spec.gpus_per_worker * max(spec.workers, 1)}
    for kind, amount in need.items():
        if amount > have.get(kind, 0.0) + 1e-9:
            raise UserError(f"{spec.path}: resources_per_trial: one trial needs {amount:g} {kind} "
                            f"({max(spec.workers, 1)} x {kind.lower()}s_per_worker), the Ray cluster has "
                            f"{have.get(kind, 0.0):g}; lower {kind.lower()}s_per_worker or add nodes")


def _trainable(spec: SweepSpec, parent_run_id: str):
    from ray import tune as raytune

    if spec.workers == 0:
        resources = {"CPU": spec.cpus_per_worker}
        if spec.gpus_per_worker:
            resources["GPU"] = spec.gpus_per_worker
    else:
        resources = {"CPU": 0.01}            # the trial only drives its TorchTrainer's workers
    trainable = raytune.with_parameters(run_trial, payload=spec.payload(parent_run_id))
    return raytune.with_resources(trainable, resources)


def _max_concurrent(spec: SweepSpec) -> int | None:
    if spec.max_concurrent_trials or spec.workers == 0:
        return spec.max_concurrent_trials
    import ray

    cpus = ray.cluster_resources().get("CPU", 1)       # a trial's Train workers need this many CPUs
    return max(1, int(cpus // (spec.workers * spec.cpus_per_worker)))


def build_tuner(spec: SweepSpec, parent_run_id: str, restore: bool):
    from ray import tune as raytune

    trainable = _trainable(spec, parent_run_id)
    if restore:
        return raytune.Tuner.restore(str(spec.experiment_dir), trainable, resume_unfinished=True,
                                     resume_errored=True)
    from ray.tune.schedulers import AsyncHyperBandScheduler

    concurrent = _max_concurrent(spec)
    scheduler = None
    if spec.asha:
        # time_attr "epoch" (not training_iteration): a restarted trial resumes at its checkpoint's epoch;
        # stop_last_trials=False: reaching max_t must not kill a trial before it scores test
        scheduler = AsyncHyperBandScheduler(time_attr="epoch", max_t=spec.asha.max_t,
                                            grace_period=spec.asha.grace_period,
                                            reduction_factor=spec.asha.reduction_factor, stop_last_trials=False)
    return raytune.Tuner(
        trainable,
        param_space=spec.param_space(),
        # the concurrency limit lives in the search algorithm (Tune ignores max_concurrent_trials beside one)
        tune_config=raytune.TuneConfig(metric=spec.metric, mode=spec.mode, scheduler=scheduler,
                                       search_alg=spec.search_algorithm(max_concurrent=concurrent or 0),
                                       num_samples=spec.num_samples or 1,
                                       trial_name_creator=trial_name, trial_dirname_creator=trial_name),
        run_config=raytune.RunConfig(name=spec.name, storage_path=str(spec.storage), verbose=1,
                                     failure_config=raytune.FailureConfig(max_failures=spec.max_failures)),
    )


def _format_seconds(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{seconds:.1f} s ({minutes // 60:d}:{minutes % 60:02d}:{secs:02d})"


def main(argv=None) -> int:
    started = time.perf_counter()
    args = parse_args(argv)
    spec = load_sweep(args.config, args.overrides, storage=args.storage, name=args.name)
    print(describe(spec), flush=True)
    if args.dry_run:
        for point, seed in spec.trials:
            print(f"  trial: {point_label(point, seed)}")
        return 0

    from ray import tune as raytune

    state = read_state(spec.experiment_dir)
    restorable = spec.experiment_dir.is_dir() and raytune.Tuner.can_restore(str(spec.experiment_dir))
    if (state or restorable) and not args.resume:
        raise UserError(f"sweep {spec.name!r} already exists in {spec.experiment_dir}: pass --resume to continue "
                        f"it, or --name NAME to start another")
    if state and state.get("fingerprint") != spec.fingerprint():
        raise UserError(f"{args.config}: the trials differ from those of sweep {spec.name!r} in "
                        f"{spec.experiment_dir} (base, overrides, space or seeds changed); resume with the "
                        f"original file and overrides, or use --name NAME for a new sweep")
    if args.resume and not (state or restorable):
        print(f"nothing to resume in {spec.experiment_dir}: starting the sweep", flush=True)
    started_ray = _init_ray(spec)
    if started_ray:              # a cluster may autoscale; a local instance has what it has
        try:
            _check_fits(spec)
        except UserError:
            import ray

            ray.shutdown()       # refused before any run or state file exists
            raise
    parent_run_id = ensure_parent_run(spec, state)
    print(f"MLflow parent run {parent_run_id} ({spec.tracking_uri}, experiment {spec.experiment})", flush=True)

    client = mlflow_client(spec.tracking_uri)
    status, errors, unfinished, finished = "FAILED", [], 0, 0
    try:
        tuner = build_tuner(spec, parent_run_id, restore=args.resume and restorable)
        grid = tuner.fit()
        errors = list(grid.errors)
        unfinished = len(grid) - grid.num_terminated - grid.num_errors
        finished = len(sweep_child_runs(client, parent_run_id))
        if unfinished:
            status = "KILLED"
        else:
            status = "FINISHED" if finished >= spec.num_trials and not errors else "FAILED"
    except KeyboardInterrupt:
        status = "KILLED"
        print(f"sweep interrupted; continue it with --resume", file=sys.stderr)
        raise
    finally:
        client.set_terminated(parent_run_id, status)
        if started_ray:
            import ray

            ray.shutdown()

    print(f"\ntrials finished: {finished}/{spec.num_trials}" + (f"; errored: {len(errors)}" if errors else "")
          + (f"; interrupted: {unfinished}" if unfinished else ""))
    for err in errors:
        print(f"  error: {str(err).strip().splitlines()[-1][:300]}")
    if errors or unfinished or finished < spec.num_trials:
        print(f"  (trial logs in {spec.experiment_dir}; rerun with --resume to finish the sweep)")
    if finished:
        print()
        run_compare(tracking_uri=spec.tracking_uri, parent_run_id=parent_run_id, sweep=None,
                    out_dir=spec.experiment_dir / "compare")
    print(f"wall time: {_format_seconds(time.perf_counter() - started)}")
    return 0 if status == "FINISHED" else 1


if __name__ == "__main__":
    sys.exit(run_command(main))
