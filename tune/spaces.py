"""Sweep files: parse and validate them, and map them onto Ray Tune's search space (no Ray started here).

A sweep file is YAML::

    name: tau-ema                      # default: the file's stem; folder <storage>/<name>
    base: ppl                          # training config file (relative to this file or cwd) or preset
    overrides: [optim.epochs=4, ...]   # key=value applied to base (a {key: value} mapping works too)
    space:                             # dotted config key -> one distribution
      ppl.tau: {grid: [0.05, 0.1, 0.2, 0.3]}   # tune.grid_search
      ppl.ema_decay: {grid: [0.999, none]}     # none = no momentum encoder
      optim.lr: {loguniform: [1.0e-4, 1.0e-3]} # tune.loguniform; needs search: {random: {num_samples: N}}
      model.dropout: {choice: [0.0, 0.1]}      # tune.choice under random search, else tune.grid_search
    seeds: 3                           # count (0..n-1) or list [0, 1, 2]: a grid dimension `seed`
    metric: val_seg_type               # per-epoch metric Tune (and ASHA) rank trials by
    mode: max
    scheduler: {asha: {max_t: 12, grace_period: 2, reduction_factor: 3}}
    search: {random: {num_samples: 8, seed: 0}}   # Tune's num_samples; seed of its variant generator
    resources_per_trial: {workers: 0, cpus_per_worker: 1, gpus_per_worker: 0}
    max_concurrent_trials: 2
    max_failures: 0
    storage: /abs/path/runs/sweeps     # default <cwd>/runs/sweeps (relative paths: from cwd)
    experiment: ppl-avvp-sweeps        # MLflow experiment (default: the base config's)
    tracking_uri: sqlite:////abs/mlflow.db   # default: base config's, else the store every command
                                             # shares ($MLFLOW_TRACKING_URI or <cwd>/runs/mlflow.db)

String values of ``base``, ``overrides``, ``storage`` and ``tracking_uri`` may use ``$VAR``,
``${VAR}`` and ``${VAR:-default}``.

Ray Tune does the search: ``SweepSpec.param_space()`` holds one Tune search-space object per swept
key plus ``seed: tune.grid_search(seeds)``; ``SweepSpec.search_algorithm()`` is Tune's
BasicVariantGenerator, which repeats the grid ``num_samples`` times and draws the sampled keys once
per repetition (kept over its grid combinations and seeds, so runs pair up). This module does what
Tune does not: it checks the whole file before Ray starts (every trial's config through the config
loader; an error is one line naming the key), refuses keys the sweep manages, and lists the trials
up front with Tune's own variant generation and seed (for --dry-run, validation and --resume).
"""
from __future__ import annotations

import copy
import difflib
import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from distributed.common.config import (config_from_dict, flatten_tree, merge_trees, parse_overrides, read_yaml,
                                       set_dotted, with_absolute_paths)
from distributed.common.errors import ConfigError, UserError
from distributed.runtime.tracking import absolute_uri, default_tracking_uri
from tune.tables import VARIANT_KEY, Table, apply_variant, parse_tables, parse_variants

DISTRIBUTIONS = ("grid", "choice", "uniform", "loguniform")
TOP_LEVEL_KEYS = ("name", "base", "overrides", "space", "seeds", "metric", "mode", "scheduler", "search",
                  "resources_per_trial", "max_concurrent_trials", "max_failures", "storage", "experiment",
                  "tracking_uri", "description", "variants", "tables")
# keys the sweep sets for every trial: not allowed in `space`
SPACE_FORBIDDEN = {
    "seed": "set per trial from `seeds:`",
    "output_dir": "set per trial (a folder under the trial's directory)",
    "tracking.parent_run_id": "set to the sweep's parent run",
    "tracking.run_name": "set per trial from the point",
    "tracking.mlflow": "sweeps always log to MLflow",
    "tracking.experiment": "use the sweep file's `experiment:`",
    "tracking.tracking_uri": "use the sweep file's `tracking_uri:`",
    "distributed.num_workers": "use `resources_per_trial: {workers: N}`",
    "distributed.cpus_per_worker": "use `resources_per_trial: {cpus_per_worker: X}`",
}
# ... and not in overrides either (the others are allowed there and used as defaults)
OVERRIDE_FORBIDDEN = ("seed", "output_dir", "tracking.parent_run_id", "tracking.run_name", "tracking.mlflow")
METRIC_PATTERN = re.compile(r"^(val_(seg|evt)_(a|v|av|type|event)|loss_\w+|pl_\w+|bank_\w+)$")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
MAX_POINTS = 10_000
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def default_storage() -> Path:
    """Where sweeps live unless the file or --storage says otherwise."""
    return Path.cwd() / "runs" / "sweeps"


def expand_env(text: str, where: str) -> str:
    """``$VAR``, ``${VAR}``, ``${VAR:-default}``; an unset variable without default is an error."""
    def sub(match: re.Match) -> str:
        name = match.group(1) or match.group(4)
        value = os.environ.get(name)
        if value not in (None, ""):
            return value
        if match.group(2) is not None:
            return match.group(3)
        raise ConfigError(f"{where}: environment variable {name} is not set (or use ${{{name}:-default}})")
    return _ENV.sub(sub, text)


# ---------------------------------------------------------------------------------------------
# labels
# ---------------------------------------------------------------------------------------------

def format_value(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def short_names(keys: list[str]) -> dict[str, str]:
    """Last component of each dotted key, unless two keys share it (then the full key)."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last)}


def point_label(point: dict[str, Any], seed: int | None = None) -> str:
    names = short_names(list(point))
    parts = [f"{names[k]}={format_value(v)}" for k, v in point.items()]
    if seed is not None:
        parts.append(f"seed={seed}")
    return " ".join(parts)


# ---------------------------------------------------------------------------------------------
# the spec
# ---------------------------------------------------------------------------------------------

@dataclass
class Dimension:
    key: str
    kind: str                          # grid | choice | uniform | loguniform
    values: list[Any] = field(default_factory=list)   # grid / choice, as written ("none" stays "none")
    low: float = 0.0                   # uniform / loguniform
    high: float = 0.0

    def sampled(self, random_search: bool) -> bool:
        return self.kind in ("uniform", "loguniform") or (self.kind == "choice" and random_search)

    def domain(self, random_search: bool) -> Any:
        """This key as Tune's search-space object."""
        from ray import tune

        if not self.sampled(random_search):
            return tune.grid_search(list(self.values))
        if self.kind == "choice":
            return tune.choice(list(self.values))
        return (tune.uniform if self.kind == "uniform" else tune.loguniform)(self.low, self.high)

    def describe(self, random_search: bool) -> str:
        tune_name = "grid_search" if not self.sampled(random_search) else self.kind
        if self.kind in ("grid", "choice"):
            return f"{self.kind} [{', '.join(format_value(v) for v in self.values)}] (tune.{tune_name})"
        return f"{self.kind} [{format_value(self.low)}, {format_value(self.high)}] (tune.{tune_name})"


@dataclass
class Asha:
    max_t: int
    grace_period: int = 1
    reduction_factor: float = 3.0


@dataclass
class SweepSpec:
    path: Path
    raw: dict
    name: str
    base: str
    overrides: list[str]
    cli_overrides: list[str]
    base_tree: dict                    # base file + overrides + CLI overrides, paths made absolute
    dimensions: list[Dimension]
    seeds: list[int]
    trials: list[tuple[dict[str, Any], int]] = field(default_factory=list)   # (point, seed), Tune's order
    metric: str = "val_seg_type"
    mode: str = "max"
    asha: Asha | None = None
    num_samples: int | None = None     # random search
    search_seed: int = 0
    workers: int = 0
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    max_concurrent_trials: int | None = None
    max_failures: int = 0
    storage: Path = field(default_factory=default_storage)
    experiment: str = "ppl-avvp"
    tracking_uri: str = ""
    variants: dict[str, dict] = field(default_factory=dict)   # name -> override tree (tune/tables.py)
    tables: list[Table] = field(default_factory=list)

    @property
    def random_search(self) -> bool:
        return self.num_samples is not None

    @property
    def swept_keys(self) -> list[str]:
        return [d.key for d in self.dimensions]

    @property
    def experiment_dir(self) -> Path:
        return self.storage / self.name

    @property
    def points(self) -> list[dict[str, Any]]:
        """Every (sample, grid combination) once: the trials of the first seed."""
        return [point for point, seed in self.trials if seed == self.seeds[0]]

    @property
    def num_trials(self) -> int:
        return len(self.trials)

    def param_space(self) -> dict[str, Any]:
        """Tune's param_space: each swept key (dotted, as in the file) as a search-space object, plus the seeds."""
        from ray import tune

        space = {d.key: d.domain(self.random_search) for d in self.dimensions}
        space["seed"] = tune.grid_search(list(self.seeds))
        return space

    def search_algorithm(self, max_concurrent: int = 0):
        """Tune's BasicVariantGenerator as the sweep runs it: sampled keys drawn once per sample and kept
        over its grid combinations and seeds (constant_grid_search), reproducible from search.random.seed."""
        from ray.tune.search import BasicVariantGenerator

        return BasicVariantGenerator(constant_grid_search=True, random_state=self.search_seed,
                                     max_concurrent=max_concurrent)

    def fingerprint(self) -> str:
        """What decides the trials: changing it makes --resume refuse (other keys may change)."""
        trials = sorted(json.dumps([point, seed], sort_keys=True, default=str) for point, seed in self.trials)
        decided = {"base_tree": self.base_tree, "trials": trials}
        if self.variants:
            decided["variants"] = self.variants
        blob = json.dumps(decided, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def payload(self, parent_run_id: str) -> dict[str, Any]:
        """Plain data the trainable needs (travels through Ray's object store)."""
        return {"name": self.name, "base_tree": self.base_tree, "experiment": self.experiment,
                "tracking_uri": self.tracking_uri, "parent_run_id": parent_run_id,
                "workers": self.workers, "cpus_per_worker": self.cpus_per_worker,
                "experiment_dir": str(self.experiment_dir), "swept_keys": self.swept_keys,
                "variants": self.variants}


def tune_trials(spec: SweepSpec) -> list[tuple[dict[str, Any], int]]:
    """The (point, seed) trials Tune will run, in its order, from Tune's own variant generation: what
    ``spec.search_algorithm()`` does, num_samples passes with one generator seeded by search_seed."""
    import numpy as np
    from ray.tune.search.variant_generator import generate_variants

    param_space, random_state = spec.param_space(), np.random.default_rng(spec.search_seed)
    trials = []
    for _ in range(spec.num_samples or 1):
        for _, resolved in generate_variants({"config": param_space}, constant_grid_search=True,
                                             random_state=random_state):
            config = resolved["config"]
            trials.append(({key: config[key] for key in spec.swept_keys}, int(config["seed"])))
    return trials


def trial_tree(payload: dict[str, Any], point: dict[str, Any], seed: int, output_dir: str | Path,
               run_name: str) -> dict:
    """The config tree of one trial: base + point + seed + what the sweep manages."""
    tree = copy.deepcopy(payload["base_tree"])
    for key, value in point.items():
        if key == VARIANT_KEY:
            apply_variant(tree, payload.get("variants") or {}, value)
        else:
            set_dotted(tree, key, value)
    set_dotted(tree, "seed", int(seed))
    set_dotted(tree, "output_dir", str(output_dir))
    set_dotted(tree, "tracking.mlflow", True)
    set_dotted(tree, "tracking.experiment", payload["experiment"])
    set_dotted(tree, "tracking.tracking_uri", payload["tracking_uri"])
    set_dotted(tree, "tracking.parent_run_id", payload["parent_run_id"])
    set_dotted(tree, "tracking.run_name", run_name)
    set_dotted(tree, "distributed.num_workers", int(payload["workers"]))
    set_dotted(tree, "distributed.cpus_per_worker", float(payload["cpus_per_worker"]))
    return with_absolute_paths(tree)


def trial_run_name(sweep_name: str, point: dict[str, Any], seed: int) -> str:
    return f"{sweep_name}: {point_label(point, seed)}"


# ---------------------------------------------------------------------------------------------
# parsing
# ---------------------------------------------------------------------------------------------

def _where(path: Path, key: str) -> str:
    return f"{path}: {key}"


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _int(value: Any, where: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{where}: expected an integer >= {minimum}, got {value!r}")
    return value


def _mapping(value: Any, where: str, allowed: tuple[str, ...]) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping, got {value!r}")
    for key in value:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"{where}: unknown key '{key}'{hint}; allowed: {', '.join(allowed)}")
    return value


def _dimension(path: Path, key: Any, spec: Any) -> Dimension:
    where = _where(path, f"space.{key}")
    if not isinstance(key, str) or not key:
        raise ConfigError(f"{path}: space: keys must be dotted config keys, got {key!r}")
    if key in SPACE_FORBIDDEN:
        raise ConfigError(f"{where}: cannot be swept ({SPACE_FORBIDDEN[key]})")
    if isinstance(spec, list):
        spec = {"grid": spec}
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
        raise ConfigError(f"{where}: expected one of {{grid: [...]}}, {{choice: [...]}}, "
                          f"{{uniform: [lo, hi]}}, {{loguniform: [lo, hi]}}, got {spec!r}")
    kind, values = next(iter(spec.items()))
    if kind in ("grid", "choice"):
        if not isinstance(values, list):
            raise ConfigError(f"{where}: {kind}: expected a list of values, got {values!r}")
        if not values:
            raise ConfigError(f"{where}: {kind} is empty")
        if any(isinstance(v, (dict, list)) for v in values):
            raise ConfigError(f"{where}: {kind}: values must be scalars, got {values!r}")
        return Dimension(key, kind, values=list(values))
    if not (isinstance(values, list) and len(values) == 2 and all(_number(v) for v in values)):
        raise ConfigError(f"{where}: {kind}: expected [low, high] numbers, got {values!r}")
    low, high = float(values[0]), float(values[1])
    if not low < high:
        raise ConfigError(f"{where}: {kind}: low must be < high, got [{values[0]}, {values[1]}]")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"{where}: loguniform: bounds must be > 0, got [{values[0]}, {values[1]}]")
    return Dimension(key, kind, low=low, high=high)


def _seeds(path: Path, value: Any, default: int) -> list[int]:
    where = _where(path, "seeds")
    if value is None:
        return [default]
    if isinstance(value, int) and not isinstance(value, bool):
        return list(range(_int(value, where, 1)))
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{where}: expected a count >= 1 or a non-empty list of integers, got {value!r}")
    seeds = [_int(v, where, 0) for v in value]
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"{where}: seeds repeat: {value!r}")
    return seeds


def _overrides(path: Path, value: Any, where: str) -> tuple[list[str], dict]:
    """key=value list (or mapping) -> (as strings, as a tree)."""
    if value is None:
        return [], {}
    if isinstance(value, dict):
        tree: dict = {}
        for key, item in value.items():
            set_dotted(tree, str(key), expand_env(item, where) if isinstance(item, str) else item)
        items = [f"{k}={format_value(v)}" for k, v in value.items()]
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        items = [expand_env(v, where) for v in value]
        tree = parse_overrides(items)
    else:
        raise ConfigError(f"{where}: expected a list of key=value strings, got {value!r}")
    for key in flatten_tree(tree):
        if key in OVERRIDE_FORBIDDEN:
            raise ConfigError(f"{where}: {key} is set by the sweep ({SPACE_FORBIDDEN[key]})")
    return items, tree


def _resolve_base(path: Path, base: Any) -> str:
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{path}: base: expected a training config file or preset name (ppl, base, han)")
    base = expand_env(base, f"{path}: base")
    candidate = Path(base)
    if candidate.is_absolute():
        return str(candidate)
    for root in (path.parent, Path.cwd()):
        if (root / candidate).is_file():
            return str((root / candidate).resolve())
    return base                                     # a preset name (read_yaml reports what is missing)


def _asha(path: Path, value: Any, default_max_t: int) -> Asha | None:
    where = _where(path, "scheduler")
    if value in (None, "fifo", "none"):
        return None
    if value == "asha":
        value = {"asha": {}}
    sched = _mapping(value, where, ("asha", "fifo"))
    if "fifo" in sched:
        if len(sched) > 1:
            raise ConfigError(f"{where}: name one scheduler")
        return None
    opts = _mapping(sched.get("asha") or {}, f"{where}.asha", ("max_t", "grace_period", "reduction_factor"))
    max_t = _int(opts.get("max_t", default_max_t), f"{where}.asha.max_t", 1)
    grace = _int(opts.get("grace_period", 1), f"{where}.asha.grace_period", 1)
    if grace > max_t:
        raise ConfigError(f"{where}.asha.grace_period: must be <= max_t ({max_t}), got {grace}")
    factor = opts.get("reduction_factor", 3)
    if not _number(factor) or factor <= 1:
        raise ConfigError(f"{where}.asha.reduction_factor: expected a number > 1, got {factor!r}")
    return Asha(max_t, grace, float(factor))


def load_sweep(path: str | os.PathLike, cli_overrides: list[str] | None = None, storage: str | None = None,
               name: str | None = None, check_data: bool = True) -> SweepSpec:
    """Read and validate a sweep file; builds and validates every trial's config. Raises ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: sweep file not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    raw = _mapping(raw, str(path), TOP_LEVEL_KEYS)

    # space
    space = raw.get("space")
    variants = parse_variants(path, raw.get("variants"), SPACE_FORBIDDEN)
    tables = parse_tables(path, raw.get("tables"), variants)
    if (space is None or space == {}) and not variants:
        raise ConfigError(f"{path}: space: empty (name at least one config key to sweep, e.g. "
                          f"ppl.tau: {{grid: [0.05, 0.1]}}, or list named settings under variants:)")
    if space is not None and not isinstance(space, dict):
        raise ConfigError(f"{path}: space: expected a mapping of config key -> distribution, got {space!r}")
    if VARIANT_KEY in (space or {}):
        raise ConfigError(f"{path}: space.{VARIANT_KEY}: reserved for the names under variants:")
    dimensions = [Dimension(VARIANT_KEY, "grid", values=list(variants))] if variants else []
    dimensions += [_dimension(path, key, spec) for key, spec in (space or {}).items()]

    # base config + overrides
    base = _resolve_base(path, raw.get("base"))
    try:
        base_file_tree = read_yaml(base)
    except ConfigError as err:
        raise ConfigError(f"{path}: base: {err}") from None
    file_items, file_tree = _overrides(path, raw.get("overrides"), _where(path, "overrides"))
    cli_items, cli_tree = _overrides(path, list(cli_overrides or []), "command-line overrides")
    base_tree = with_absolute_paths(merge_trees(merge_trees(base_file_tree, file_tree), cli_tree))
    try:
        base_cfg = config_from_dict(copy.deepcopy(base_tree))
    except ConfigError as err:
        raise ConfigError(f"{path}: base config + overrides: {err}") from None

    for dim in dimensions:
        if dim.key in flatten_tree(cli_tree):
            raise ConfigError(f"command-line overrides: {dim.key} is swept by {path}; drop the override")

    # search
    search = _mapping(raw.get("search"), _where(path, "search"), ("random", "grid"))
    random_search = "random" in search
    num_samples, search_seed = None, 0
    if random_search:
        opts = _mapping(search["random"] or {}, _where(path, "search.random"), ("num_samples", "seed"))
        num_samples = _int(opts.get("num_samples"), _where(path, "search.random.num_samples"), 1)
        search_seed = _int(opts.get("seed", 0), _where(path, "search.random.seed"), 0)
        if not any(d.sampled(True) for d in dimensions):
            raise ConfigError(f"{path}: search.random: the space has no choice/uniform/loguniform key to "
                              f"sample (grid keys always expand; repeat runs with seeds:)")
    else:
        for dim in dimensions:
            if dim.sampled(False):
                raise ConfigError(f"{_where(path, 'space.' + dim.key)}: {dim.kind} needs "
                                  f"search: {{random: {{num_samples: N}}}}")
    num_points = math.prod(len(d.values) for d in dimensions if not d.sampled(random_search)) * (num_samples or 1)
    if num_points > MAX_POINTS:
        raise ConfigError(f"{path}: space: {num_points} points (more than {MAX_POINTS})")
    seeds = _seeds(path, raw.get("seeds"), base_cfg.seed)

    # tracking, storage, name
    name = name or raw.get("name") or path.stem
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise ConfigError(f"{path}: name: use letters, digits, '.', '_' or '-' (got {name!r})")
    storage_text = storage or raw.get("storage") or str(default_storage())
    if not isinstance(storage_text, str):
        raise ConfigError(f"{path}: storage: expected a folder path, got {storage_text!r}")
    storage_path = Path(expand_env(storage_text, _where(path, "storage"))).expanduser()
    storage_path = (Path.cwd() / storage_path).resolve() if not storage_path.is_absolute() else storage_path
    experiment = raw.get("experiment") or base_cfg.tracking.experiment
    if not isinstance(experiment, str):
        raise ConfigError(f"{path}: experiment: expected a name, got {experiment!r}")
    uri = raw.get("tracking_uri") or base_cfg.tracking.tracking_uri
    uri = absolute_uri(expand_env(str(uri), _where(path, "tracking_uri"))) if uri else default_tracking_uri()

    # metric, mode, scheduler, resources
    metric = raw.get("metric", "val_seg_type")
    if not isinstance(metric, str) or not METRIC_PATTERN.match(metric):
        raise ConfigError(f"{path}: metric: expected a per-epoch metric such as val_seg_type, val_evt_event, "
                          f"loss_total or pl_f1, got {metric!r}")
    mode = raw.get("mode", "min" if metric.startswith("loss_") else "max")
    if mode not in ("max", "min"):
        raise ConfigError(f"{path}: mode: expected max or min, got {mode!r}")
    resources = _mapping(raw.get("resources_per_trial"), _where(path, "resources_per_trial"),
                         ("workers", "cpus_per_worker", "gpus_per_worker"))
    workers = _int(resources.get("workers", base_cfg.distributed.num_workers),
                   _where(path, "resources_per_trial.workers"), 0)
    cpus = resources.get("cpus_per_worker", base_cfg.distributed.cpus_per_worker)
    gpus = resources.get("gpus_per_worker", 0)
    if not _number(cpus) or cpus <= 0:
        raise ConfigError(f"{path}: resources_per_trial.cpus_per_worker: expected a number > 0, got {cpus!r}")
    if not _number(gpus) or gpus < 0:
        raise ConfigError(f"{path}: resources_per_trial.gpus_per_worker: expected a number >= 0, got {gpus!r}")
    concurrent = raw.get("max_concurrent_trials")
    if concurrent is not None:
        concurrent = _int(concurrent, _where(path, "max_concurrent_trials"), 1)
    max_failures = _int(raw.get("max_failures", 0), _where(path, "max_failures"), 0)

    spec = SweepSpec(path=path, raw=raw, name=name, base=base, overrides=file_items,
                     cli_overrides=cli_items, base_tree=base_tree, dimensions=dimensions, seeds=seeds,
                     metric=metric, mode=mode, num_samples=num_samples, search_seed=search_seed,
                     workers=workers, cpus_per_worker=float(cpus), gpus_per_worker=float(gpus),
                     max_concurrent_trials=concurrent, max_failures=max_failures, storage=storage_path,
                     experiment=experiment, tracking_uri=uri, variants=variants, tables=tables)
    _validate_dimensions(spec)
    spec.trials = tune_trials(spec)
    max_epochs = _validate_trials(spec)
    spec.asha = _asha(path, raw.get("scheduler"), max_epochs)
    if check_data and not (base_cfg.distributed.ray_address or os.environ.get("RAY_ADDRESS")):
        _check_data(spec)
    return spec


def _build(spec: SweepSpec, point: dict, seed: int):
    payload = spec.payload(parent_run_id="validation")
    return config_from_dict(trial_tree(payload, point, seed, spec.experiment_dir / "validation", "validation"))


def _validate_dimensions(spec: SweepSpec) -> None:
    """One key at a time on the base config (grid/choice values; a range's bounds and middle), so the
    message names the value that is wrong."""
    for dim in spec.dimensions:
        values = dim.values if dim.kind in ("grid", "choice") else [dim.low, dim.high, (dim.low + dim.high) / 2]
        for value in values:
            try:
                _build(spec, {dim.key: value}, spec.seeds[0])
            except ConfigError as err:
                raise ConfigError(f"{spec.path}: space.{dim.key} = {format_value(value)}: {err}") from None


def _validate_trials(spec: SweepSpec) -> int:
    """Every point Tune will run (with the first seed), then each other seed; returns the largest optim.epochs."""
    max_epochs = 1
    for point in spec.points:
        try:
            max_epochs = max(max_epochs, _build(spec, point, spec.seeds[0]).optim.epochs)
        except ConfigError as err:
            raise ConfigError(f"{spec.path}: point {point_label(point)}: {err}") from None
    for seed in spec.seeds[1:]:
        try:
            _build(spec, spec.points[0], seed)
        except ConfigError as err:
            raise ConfigError(f"{spec.path}: seeds: {seed}: {err}") from None
    return max_epochs


def _check_data(spec: SweepSpec) -> None:
    """Data folders must exist (checked once per distinct path, before any trial starts)."""
    payload = spec.payload(parent_run_id="validation")
    seen: set[tuple[str, str]] = set()
    for point in spec.points:
        tree = flatten_tree(trial_tree(payload, point, spec.seeds[0], spec.experiment_dir, "validation"))
        for key in ("data.shards",) if tree.get("data.shards") else ("data.annotations", "data.features"):
            value = tree.get(key)
            if (key, value) in seen:
                continue
            seen.add((key, value))
            if not Path(value).is_dir():
                raise UserError(f"{spec.path}: {key}: folder not found: {value}")
