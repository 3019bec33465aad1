"""`ppl-avvp submit RECIPE`: validate a cluster recipe here, then hand it to `ray job submit`.

    ppl-avvp submit clusters/recipes/llp_8gpu.yaml --address http://HEAD:8265 [key=value ...]
    ppl-avvp submit clusters/recipes/sweep_tau_ema.yaml --address http://HEAD:8265 --no-wait
    ppl-avvp submit clusters/recipes/llp_1gpu.yaml --dry-run          (print the command only)

Before anything reaches the cluster the recipe is loaded with ``load_config`` (plus the overrides),
its DeepSpeed JSON is checked against it, and the shard arithmetic (train shards >= ranks x loader
workers, unless ``data.resample``) is checked against the train manifest when it is readable from
this machine, else against the shard count the recipe declares in ``submit.yaml``. A sweep file
(keys ``base``, ``space``, ...) is checked the same way for every point of its grid.

Then it runs, printing the exact command first::

    ray job submit --address URL --runtime-env-json '{"working_dir": ..., "excludes": [...],
        "env_vars": {...}} -- python -m distributed.train --config RECIPE key=value ...

Submit-time settings (entrypoint module, working_dir, excludes, env vars) come from
``submit.yaml`` next to the recipe (see ``clusters/recipes/submit.yaml``), never from the recipe
itself: recipes are plain run configs. ``MLFLOW_TRACKING_URI`` is forwarded from this shell into the
job's ``env_vars`` when set, which is how runs find the shared tracking server.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from distributed.common.commandline import OneLineParser, run_command
from distributed.common.config import RunConfig, load_config, read_yaml
from distributed.common.errors import ConfigError, UserError

SETTINGS_FILE = "submit.yaml"
SETTINGS_KEYS = {"entrypoint", "working_dir", "excludes", "env_vars", "forward_env", "train_shards",
                 "entrypoint_num_cpus", "entrypoint_num_gpus"}
# Used when no submit.yaml sits next to the recipe (a user's own config file).
BUILTIN_SETTINGS: dict[str, Any] = {
    "entrypoint": "distributed.train",
    "working_dir": ".",
    "excludes": [".git/", ".venv/", "venv/", "runs/", "demo/", "mlruns/", ".cache/", ".pytest_cache/",
                 "*.egg-info/", "__pycache__/", "*.tar", "*.npy", "*.db"],
    "env_vars": {"PYTHONUNBUFFERED": "1"},
    "forward_env": ["MLFLOW_TRACKING_URI"],
}
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = OneLineParser(prog="ppl-avvp submit", description=__doc__.split("\n\n")[0],
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipe", nargs="?", help="run config (e.g. clusters/recipes/llp_8gpu.yaml) or sweep file")
    p.add_argument("overrides", nargs="*", help="key=value run-config overrides, passed on to the job")
    p.add_argument("--address", default=None,
                   help="Ray dashboard/jobs address, e.g. http://HEAD:8265 (default: $RAY_ADDRESS, "
                        "else ray's own lookup)")
    p.add_argument("--no-wait", action="store_true", help="return once submitted; do not tail the logs")
    p.add_argument("--dry-run", action="store_true", help="validate and print the command; submit nothing")
    p.add_argument("--settings", default=None,
                   help=f"submit settings file (default: {SETTINGS_FILE} next to the recipe, if any)")
    p.add_argument("--working-dir", default=None,
                   help="folder shipped as the job's working_dir (default: settings, else '.')")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra job environment variable (repeatable)")
    p.add_argument("--submission-id", default=None, help="job id to use (default: Ray makes one)")
    args = p.parse_intermixed_args(argv)
    if not args.recipe:
        raise UserError("the following argument is required: RECIPE (e.g. clusters/recipes/llp_8gpu.yaml)")
    return args


# ------------------------------------------------------------------------------------------------
# Settings (submit.yaml)
# ------------------------------------------------------------------------------------------------

def _merge_settings(base: dict, extra: dict, where: str) -> dict:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if key not in SETTINGS_KEYS:
            raise ConfigError(f"{where}: unknown submit setting '{key}' "
                              f"(known: {', '.join(sorted(SETTINGS_KEYS))})")
        if key in ("excludes", "forward_env"):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{where}.{key}: expected a list of strings")
            out[key] = list(out.get(key, [])) + [v for v in value if v not in out.get(key, [])]
        elif key == "env_vars":
            if not isinstance(value, dict):
                raise ConfigError(f"{where}.env_vars: expected a mapping")
            out[key] = {**out.get(key, {}), **{str(k): str(v) for k, v in value.items()}}
        else:
            out[key] = value
    return out


def load_settings(recipe: Path, settings_path: str | None) -> tuple[dict, Path | None]:
    """Defaults merged with the recipe's own entry; returns (settings, the file they came from)."""
    path = Path(settings_path) if settings_path else recipe.parent / SETTINGS_FILE
    if not path.is_file():
        if settings_path:
            raise UserError(f"--settings: {path} not found")
        return copy.deepcopy(BUILTIN_SETTINGS), None
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(tree, dict) or set(tree) - {"defaults", "recipes"}:
        raise ConfigError(f"{path}: expected top-level keys 'defaults' and 'recipes'")
    defaults, recipes = tree.get("defaults") or {}, tree.get("recipes") or {}
    if not isinstance(defaults, dict) or not isinstance(recipes, dict):
        raise ConfigError(f"{path}: 'defaults' and 'recipes' must be mappings")
    settings = _merge_settings({"env_vars": {}, "excludes": [], "forward_env": []}, defaults, f"{path}: defaults")
    entry = recipes.get(recipe.name) or {}
    if not isinstance(entry, dict):
        raise ConfigError(f"{path}: recipes.{recipe.name} must be a mapping")
    settings = _merge_settings(settings, entry, f"{path}: recipes.{recipe.name}")
    settings.setdefault("entrypoint", BUILTIN_SETTINGS["entrypoint"])
    settings.setdefault("working_dir", BUILTIN_SETTINGS["working_dir"])
    if not re.match(r"^[A-Za-z_][\w.]*$", str(settings["entrypoint"])):
        raise ConfigError(f"{path}: entrypoint must be a python module name, got {settings['entrypoint']!r}")
    shards = settings.get("train_shards")
    if shards is not None and (isinstance(shards, bool) or not isinstance(shards, int) or shards < 1):
        raise ConfigError(f"{path}: recipes.{recipe.name}.train_shards must be a positive integer")
    return settings, path


# ------------------------------------------------------------------------------------------------
# Validation
# ------------------------------------------------------------------------------------------------

def _in_working_dir(path: Path, working_dir: Path) -> Path:
    """``path`` relative to working_dir: what the job, started inside working_dir, will open."""
    try:
        return path.resolve().relative_to(working_dir)
    except ValueError:
        raise UserError(f"{path}: not inside the working_dir {working_dir} that is shipped to the cluster; "
                        f"run from the repository root or pass --working-dir") from None


def _on_cluster(path_str: str, working_dir: Path) -> Path:
    """Where a config path points when the job runs (relative paths start at working_dir)."""
    path = Path(path_str).expanduser()
    return path if path.is_absolute() else working_dir / path


def check_deepspeed(cfg: RunConfig, working_dir: Path) -> None:
    """The DeepSpeed JSON must exist in the shipped tree and agree with the config (ZeRO stage, bf16)."""
    if cfg.distributed.engine != "deepspeed":
        return
    from distributed.runtime.engine import deepspeed_config

    probe = copy.deepcopy(cfg)
    if probe.distributed.deepspeed_config:
        probe.distributed.deepspeed_config = str(_on_cluster(probe.distributed.deepspeed_config, working_dir))
    deepspeed_config(probe)


def check_shards(cfg: RunConfig, working_dir: Path, assumed_train_shards: int | None) -> str:
    """Shard arithmetic of the reader; returns a one-line note of what was checked."""
    d = cfg.data
    if not d.shards:
        return "data: LLP folders (annotations + features); no shard arithmetic"
    if _URL.match(d.shards):
        raise ConfigError(f"data.shards: {d.shards} is a URL; the shard reader opens local paths only. "
                          f"Mount the bucket on every node (FSx for Lustre, Filestore, JuiceFS, GCS FUSE) "
                          f"and give the mount path")
    world, readers_per_rank = cfg.world_size, max(1, d.loader_workers)
    readers = world * readers_per_rank
    train_dir = _on_cluster(d.shards, working_dir) / "train"
    if (train_dir / "manifest.json").is_file():
        from distributed.data.shards import load_manifest, train_batches_per_epoch, train_plan

        manifest = load_manifest(train_dir)
        # The reader's own check (raises DataError naming the fix when shards < readers).
        train_plan(manifest, d.batch_size, 0, world, num_workers=d.loader_workers, resample=d.resample)
        steps = train_batches_per_epoch(manifest, d.batch_size, world, resample=d.resample)
        return (f"train shards: {len(manifest['shards'])} shards, {manifest['num_samples']} videos for "
                f"{world} rank(s) x {readers_per_rank} reader(s) = {readers}; {steps} steps/epoch (manifest)")
    if assumed_train_shards is None:
        return (f"train shards: {train_dir}/manifest.json not readable here; shard arithmetic skipped "
                f"(needs >= {readers} train shards unless data.resample)")
    if not d.resample and assumed_train_shards < readers:
        raise ConfigError(
            f"data.loader_workers: {world} rank(s) x {readers_per_rank} loader worker(s) = {readers} readers, "
            f"but the recipe assumes {assumed_train_shards} train shards (submit.yaml train_shards); every "
            f"reader needs its own shard: write >= {readers} shards, lower data.loader_workers, or set "
            f"data.resample=true")
    return (f"train shards: assumed {assumed_train_shards} (submit.yaml; manifest not readable here) for "
            f"{world} rank(s) x {readers_per_rank} reader(s) = {readers}: ok")


def validate_run(recipe_rel: Path, overrides: list[str], working_dir: Path,
                 assumed_train_shards: int | None) -> tuple[RunConfig, list[str]]:
    cfg = load_config(working_dir / recipe_rel, overrides)
    check_deepspeed(cfg, working_dir)
    notes = [check_shards(cfg, working_dir, assumed_train_shards)]
    dist = cfg.distributed
    notes.insert(0, f"recipe ok: {cfg.name}: {cfg.world_size} worker(s) x batch {cfg.data.batch_size} "
                    f"(global {cfg.world_size * cfg.data.batch_size}), engine {dist.engine}"
                    + (f" ZeRO-{dist.zero_stage}" if dist.engine == "deepspeed" else "")
                    + f", {dist.precision}, {'GPU' if dist.use_gpu else 'CPU'}")
    if dist.num_workers >= 1 and not Path(cfg.output_dir).is_absolute():
        notes.append(f"note: output_dir {cfg.output_dir!r} is relative to the job's working_dir on the head "
                     f"node; on a multi-node cluster use shared storage (rank 0 writes results.json there "
                     f"and Ray Train keeps checkpoints under it)")
    return cfg, notes


def validate_sweep(recipe_rel: Path, overrides: list[str], working_dir: Path,
                   assumed_train_shards: int | None) -> list[str]:
    """The sweep loader's own validation (every trial's config), then DeepSpeed and shard checks on a trial.

    Paths in a sweep file resolve against the file's folder and the current directory, as they will
    on the cluster (the job starts in working_dir), so the check runs from working_dir.
    """
    from distributed.common.config import config_from_dict
    from tune.spaces import load_sweep, trial_tree   # the sweep schema lives with tune.sweep

    here = Path.cwd()
    os.chdir(working_dir)
    try:
        spec = load_sweep(recipe_rel, list(overrides), check_data=False)
        cfg = config_from_dict(trial_tree(spec.payload(parent_run_id="validation"), spec.points[0], spec.seeds[0],
                                          spec.experiment_dir / "validation", "validation"))
    finally:
        os.chdir(here)
    check_deepspeed(cfg, working_dir)
    return [f"sweep ok: {spec.name}: {len(spec.points)} point(s) x {len(spec.seeds)} seed(s) = {spec.num_trials} "
            f"trials of {cfg.world_size} worker(s) ({'GPU' if cfg.distributed.use_gpu else 'CPU'}), "
            f"{spec.max_concurrent_trials or 'as resources allow'} at a time, metric {spec.metric} ({spec.mode})",
            check_shards(cfg, working_dir, assumed_train_shards)]


# ------------------------------------------------------------------------------------------------
# Command
# ------------------------------------------------------------------------------------------------

def ray_cli() -> str:
    """The `ray` CLI of this interpreter's environment (the same Ray version as the project)."""
    here = Path(sys.executable).parent / "ray"
    if here.is_file():
        return str(here)
    found = shutil.which("ray")
    if found:
        return found
    raise UserError("the `ray` command was not found next to this Python or on PATH "
                    "(install the project: pip install -e .)")


def parse_env(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not _ENV_NAME.match(key):
            raise UserError(f"--env {item!r}: expected KEY=VALUE")
        out[key] = value
    return out


def build_runtime_env(settings: dict, working_dir: Path, extra_env: dict[str, str]) -> dict:
    """working_dir + excludes + env_vars (settings, then forwarded variables, then --env)."""
    env_vars = {str(k): str(v) for k, v in (settings.get("env_vars") or {}).items()}
    for name in settings.get("forward_env") or []:
        if os.environ.get(name):
            env_vars[name] = os.environ[name]
    env_vars.update(extra_env)
    runtime_env: dict[str, Any] = {"working_dir": str(working_dir)}
    if settings.get("excludes"):
        runtime_env["excludes"] = list(settings["excludes"])
    if env_vars:
        runtime_env["env_vars"] = env_vars
    return runtime_env


def build_command(ray: str, address: str | None, runtime_env: dict, entrypoint: list[str], *,
                  no_wait: bool = False, submission_id: str | None = None, settings: dict | None = None) -> list[str]:
    cmd = [ray, "job", "submit"]
    if address:
        cmd += ["--address", address]
    if submission_id:
        cmd += ["--submission-id", submission_id]
    settings = settings or {}
    for key, flag in (("entrypoint_num_cpus", "--entrypoint-num-cpus"), ("entrypoint_num_gpus", "--entrypoint-num-gpus")):
        if settings.get(key) is not None:
            cmd += [flag, str(settings[key])]
    cmd += ["--runtime-env-json", json.dumps(runtime_env, separators=(",", ":"))]
    if no_wait:
        cmd.append("--no-wait")
    return cmd + ["--"] + entrypoint


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    for item in args.overrides:
        if "=" not in item:
            raise UserError(f"override {item!r}: expected key=value")
    extra_env = parse_env(args.env)
    recipe = Path(args.recipe)
    if not recipe.is_file():
        raise UserError(f"{recipe}: recipe file not found")
    settings, settings_file = load_settings(recipe, args.settings)
    working_dir = Path(args.working_dir or settings["working_dir"]).expanduser().resolve()
    if not working_dir.is_dir():
        raise UserError(f"working_dir {working_dir}: not a directory")
    recipe_rel = _in_working_dir(recipe, working_dir)

    tree = read_yaml(recipe)
    if "space" in tree:   # a sweep file (tune/spaces.py's schema), run by tune.sweep
        if settings["entrypoint"] == BUILTIN_SETTINGS["entrypoint"]:
            settings["entrypoint"] = "tune.sweep"
        notes = validate_sweep(recipe_rel, args.overrides, working_dir, settings.get("train_shards"))
    else:
        _, notes = validate_run(recipe_rel, args.overrides, working_dir, settings.get("train_shards"))
    if settings_file is not None:
        notes.append(f"submit settings: {settings_file} (entrypoint {settings['entrypoint']})")
    for line in notes:
        print(line, file=sys.stderr)

    runtime_env = build_runtime_env(settings, working_dir, extra_env)
    entrypoint = ["python", "-m", str(settings["entrypoint"]), "--config", recipe_rel.as_posix(), *args.overrides]
    address = args.address or os.environ.get("RAY_ADDRESS") or None
    cmd = build_command(ray_cli(), address, runtime_env, entrypoint, no_wait=args.no_wait,
                        submission_id=args.submission_id, settings=settings)
    if "MLFLOW_TRACKING_URI" not in runtime_env.get("env_vars", {}):
        print("note: MLFLOW_TRACKING_URI is not set: unless the recipe sets a tracking URI, the job logs to "
              "sqlite:///<its working_dir>/runs/mlflow.db on the cluster, which goes away with the job's files",
              file=sys.stderr)
    print(shlex.join(cmd), flush=True)
    if args.dry_run:
        return 0
    return subprocess.run(cmd, check=False).returncode


if __name__ == "__main__":
    sys.exit(run_command(main))
