"""One typed, validated config object per run: YAML file + ``key=value`` overrides.

``load_config(path, overrides)`` is the one config loader. Unknown keys and bad values raise
ConfigError naming the dotted key; the resolved config is logged whole (``to_dict``/``flatten``).
"""
from __future__ import annotations

import copy
import dataclasses
import datetime
import difflib
import os
import re
import reprlib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from distributed.common.errors import ConfigError
from model.config import NetworkConfig, PPLConfig, check_compatible

DEFAULT_CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


@dataclass
class DataConfig:
    """Where the data is. Either an LLP-layout folder pair (annotations + features) or shards."""

    annotations: str = ""                 # folder with AVVP_*.csv (LLP layout)
    features: str = ""                    # folder with vggish/ res152/ r2plus1d_18/
    shards: str = ""                      # folder with train/ val/ test/ shard sets (ppl-avvp shard);
                                          # W-TAL: train/ test/ (ppl-avvp wtal shard)
    batch_size: int = 16                  # per worker
    eval_batch_size: int = 64
    loader_workers: int = 0               # per training worker (shards only)
    resample: bool = False                # shards: resample with a fixed epoch length
    skip_bad_samples: bool = False        # shards: skip (count, log) instead of failing
    verify_shards: bool = True            # shards: check each shard's sha256 against the manifest
    limit_train: int = 0                  # 0 = all videos (useful for smoke tests)
    # W-TAL (model.streams=rgb_flow; THUMOS14 layout, docs/tal.md)
    train_snippets: int = 320             # snippets drawn per training video (CO2-Net's 320); 0 = whole, padded
    protocol: str = "A"                   # THUMOS14 scoring: A = W-TALC/CO2-Net/DELU (212), B = BaS-Net (210)


@dataclass
class OptimConfig:
    lr: float = 3e-4                      # HAN: Adam 3e-4, StepLR(10, 0.1)
    weight_decay: float = 0.0
    epochs: int = 12
    lr_step_epochs: int = 10
    lr_gamma: float = 0.1
    grad_clip: float = 0.0                # 0 = off
    fused: bool = True                    # torch's fused AdamW: one kernel per step for all parameters (CPU, CUDA)


@dataclass
class DistributedConfig:
    engine: Literal["deepspeed", "torch"] = "deepspeed"
    num_workers: int = 1                  # Ray Train workers (0 = run in this process, no Ray)
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    zero_stage: int = 0
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    deepspeed_config: str = ""            # optional DeepSpeed JSON; merged under our keys
    max_failures: int = 0                 # Ray Train FailureConfig
    ray_address: str = ""                 # "" = local instance on 127.0.0.1 (or the job's cluster)
    checkpoint_every_steps: int = 0       # 0 = once per epoch
    check_bank_sync: bool = False         # debug: assert the bank is bitwise equal on all ranks each step


@dataclass
class TrackingConfig:
    mlflow: bool = True
    tracking_uri: str = ""                # "" = $MLFLOW_TRACKING_URI or sqlite:///<cwd>/runs/mlflow.db
    experiment: str = "ppl-avvp"
    run_name: str = ""
    parent_run_id: str = ""               # set by sweeps


@dataclass
class RunConfig:
    name: str = "ppl"
    seed: int = 0
    deterministic: bool = False           # bitwise-reproducible kernels, single-threaded ops
    output_dir: str = "runs/ppl"
    data: DataConfig = field(default_factory=DataConfig)
    model: NetworkConfig = field(default_factory=NetworkConfig)
    ppl: PPLConfig = field(default_factory=PPLConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def validate(self) -> "RunConfig":
        try:
            self.model.validate("model")
            self.ppl.validate("ppl")
            check_compatible(self.model, self.ppl)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        d, o, dist = self.data, self.optim, self.distributed
        for prefix, section in (("data", d), ("optim", o), ("distributed", dist)):
            for key, value in vars(section).items():
                _require(not isinstance(value, float) or float("-inf") < value < float("inf"),
                         f"{prefix}.{key}", f"must be a finite number, got {value!r}")
        _require(isinstance(self.seed, int) and 0 <= self.seed < 2**63, "seed", "must be an integer in [0, 2**63)")
        _require(d.batch_size >= 1, "data.batch_size", "must be >= 1")
        _require(d.eval_batch_size >= 1, "data.eval_batch_size", "must be >= 1")
        _require(d.loader_workers >= 0, "data.loader_workers", "must be >= 0")
        _require(d.limit_train >= 0, "data.limit_train", "must be >= 0")
        _require(isinstance(d.train_snippets, int) and d.train_snippets >= 0, "data.train_snippets",
                 "must be an integer >= 0 (0 = whole videos, padded)")
        _require(d.protocol in ("A", "B"), "data.protocol", f"must be A or B (docs/tal.md), got {d.protocol!r}")
        _require(not (self.is_wtal and d.shards and d.limit_train), "data.limit_train",
                 "W-TAL shards (data.shards) are read whole; write shards of fewer videos instead")
        _require(o.lr > 0, "optim.lr", "must be > 0")
        _require(o.weight_decay >= 0, "optim.weight_decay", "must be >= 0")
        _require(o.lr * o.weight_decay < 1, "optim.weight_decay",
                 f"optim.lr * optim.weight_decay must be < 1 (AdamW would flip the weights' sign every step)")
        _require(o.epochs >= 1, "optim.epochs", "must be >= 1")
        _require(o.lr_step_epochs >= 1, "optim.lr_step_epochs", "must be >= 1")
        _require(0 < o.lr_gamma <= 1, "optim.lr_gamma", "must be in (0, 1]")
        _require(o.grad_clip >= 0, "optim.grad_clip", "must be >= 0")
        _require(dist.num_workers >= 0, "distributed.num_workers", "must be >= 0")
        _require(dist.cpus_per_worker > 0, "distributed.cpus_per_worker", "must be > 0")
        _require(dist.zero_stage in (0, 1, 2), "distributed.zero_stage",
                 "must be 0, 1 or 2 (ZeRO-3 partitions the weights the EMA encoder reads)")
        _require(dist.max_failures >= 0, "distributed.max_failures", "must be >= 0")
        _require(dist.checkpoint_every_steps >= 0, "distributed.checkpoint_every_steps", "must be >= 0")
        _require(dist.precision != "fp16" or dist.use_gpu, "distributed.precision",
                 "fp16 needs GPUs (use fp32 or bf16 on CPU)")
        _require(dist.precision == "fp32" or dist.engine == "deepspeed", "distributed.precision",
                 "bf16/fp16 need engine=deepspeed")
        _require(dist.engine == "deepspeed" or dist.zero_stage == 0, "distributed.zero_stage",
                 "ZeRO needs engine=deepspeed")
        _require(bool(d.shards) or (bool(d.annotations) and bool(d.features)), "data",
                 "set data.shards, or both data.annotations and data.features")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def flatten(self) -> dict[str, Any]:
        """Dotted keys -> values, for MLflow params."""
        return flatten_tree(self.to_dict())

    @property
    def world_size(self) -> int:
        return max(1, self.distributed.num_workers)

    @property
    def is_wtal(self) -> bool:
        """A W-TAL run (RGB + flow, variable-length videos, mAP): its data, in-loop evaluation and end differ."""
        return self.model.streams == "rgb_flow"


def _require(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {msg}")


def flatten_tree(tree: dict, prefix: str = "") -> dict[str, Any]:
    """Nested sections -> {dotted key: value}, the inverse of set_dotted."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten_tree(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 80
_SHORT.maxlist = _SHORT.maxdict = 6
_SHORT.maxlevel = 3


def _show(value: Any) -> str:
    """A value as it goes into an error line: short, whatever its size (YAML aliases can nest deeply)."""
    return " ".join(_SHORT.repr(value).split())


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check a YAML value against a dataclass field's type (ints widen to floats; 'none' is None)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in options:
                return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{key}: invalid value {_show(value)}")
    if origin is Literal:
        choices = typing.get_args(annotation)
        if value not in choices:
            raise ConfigError(f"{key}: must be one of {', '.join(map(str, choices))}, got {_show(value)}")
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is float:
        if isinstance(value, str) and _DECIMAL.fullmatch(value.strip()):
            value = float(value)          # YAML 1.1 reads 1e-3 and 3e-4 (no dot) as strings
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                return float(value)
            except OverflowError:
                raise ConfigError(f"{key}: must be a finite number, got an integer of {len(str(value))} digits") from None
    elif annotation is str:
        if isinstance(value, (datetime.date, datetime.time)):
            return value.isoformat()      # name: 2024-01-01 is a date to YAML
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    else:
        return value
    raise ConfigError(f"{key}: expected {annotation.__name__}, got {_show(value)}")


_DECIMAL = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _build(cls, tree: dict, prefix: str):
    if not isinstance(tree, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {_show(tree)}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in tree.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown config key {_show(f'{prefix}{key}')}{hint}")
        annotation = hints[key]
        if dataclasses.is_dataclass(annotation):
            kwargs[key] = _build(annotation, value, f"{prefix}{key}.")
        else:
            kwargs[key] = _coerce(value, annotation, f"{prefix}{key}")
    return cls(**kwargs)


# config values that are paths: resolved against the driver's cwd before they travel (Ray Train workers
# and Tune trials run in folders of their own) and compared as absolute paths (run fingerprints)
PATH_KEYS = ("data.annotations", "data.features", "data.shards", "distributed.deepspeed_config")


def with_absolute_paths(tree: dict, base: Path | None = None) -> dict:
    """A copy of a config tree whose PATH_KEYS values are absolute (resolved against ``base`` or cwd)."""
    out = copy.deepcopy(tree)
    base = base or Path.cwd()
    flat = flatten_tree(out)
    for key in PATH_KEYS:
        value = flat.get(key)
        if isinstance(value, str) and value:
            set_dotted(out, key, str((base / value).resolve()))
    if isinstance(out.get("output_dir"), str) and out["output_dir"]:
        out["output_dir"] = str((base / out["output_dir"]).resolve())
    return out


def set_dotted(tree: dict, dotted: str, value: Any) -> None:
    """tree['a']['b'] = value for 'a.b', creating sections; a non-section on the way is a ConfigError."""
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{dotted}: '{part}' is not a config section")
        node = child
    node[parts[-1]] = value


def parse_overrides(overrides: list[str] | None) -> dict:
    tree: dict = {}
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {_show(item)}: expected key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except (yaml.YAMLError, ValueError, RecursionError):   # ValueError: 2024-13-01 looks like a date to YAML
            value = raw
        set_dotted(tree, key.strip(), value)
    return tree


def merge_trees(base: dict, extra: dict) -> dict:
    """Nested dicts: ``extra`` wins key by key; neither input is modified."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_trees(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        candidate = DEFAULT_CONFIG_DIR / f"{path}.yaml" if path.suffix == "" else None
        if candidate is not None and candidate.is_file():
            path = candidate
        else:
            raise ConfigError(f"{path}: config file not found (built-in presets: "
                              f"{', '.join(sorted(p.stem for p in DEFAULT_CONFIG_DIR.glob('*.yaml')))})")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read it ({err.strerror})") from None
    try:
        tree = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    except (ValueError, RecursionError) as err:   # a date YAML cannot build (2024-13-01), nesting too deep
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(err).split()) or type(err).__name__})") from None
    tree = {} if tree is None else tree
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return tree


def config_from_dict(tree: dict) -> RunConfig:
    return _build(RunConfig, tree, "").validate()


def model_config_from_dict(tree: Any) -> NetworkConfig:
    """A ``model`` section alone (e.g. a checkpoint's) -> validated NetworkConfig, keys named as in a run config."""
    network = _build(NetworkConfig, tree, "model.")
    try:
        network.validate("model")
    except ValueError as err:
        raise ConfigError(str(err)) from None
    return network


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """YAML file (or a built-in preset name such as ``ppl`` or ``base``) + overrides -> validated RunConfig."""
    tree = read_yaml(path) if path else {}
    return config_from_dict(merge_trees(tree, parse_overrides(overrides)))


def save_config(config: RunConfig, path: str | Path) -> None:
    """Written beside and renamed into place: a crash never leaves half a config.yaml."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    os.replace(tmp, path)
