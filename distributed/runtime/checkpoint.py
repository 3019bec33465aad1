"""Checkpoints that resume exactly, and only the run they belong to.

A training checkpoint folder holds the engine (weights + optimizer, via DeepSpeed or torch), the momentum
encoder, prototype bank and epoch/step (``ppl_state.pt``), per-rank RNG state, and ``run.json``: the run's
fingerprint. The inference artifacts (``best_model.pt``, ``final_model.pt``) hold config + weights.

Resume is a promise about the same run. The fingerprint is the resolved config minus ``NEUTRAL_KEYS``: the
keys that say where and how a run executes, not what it computes (names, output folder, tracking, Ray
resources, failure retries, checkpoint interval, eval batch size, shard sha256 checks, GPU or CPU) and
``optim.epochs``, which a resumed run may extend. Everything else (seed, data as absolute paths, model,
pseudo-labels, optimizer, engine, workers, ZeRO stage, precision) changes what is trained, so a checkpoint
whose fingerprint differs is refused before any of its tensor files is opened, naming the keys that differ.

Every file is read with ``torch.load(weights_only=True)``: tensors, containers and plain values only (plus,
for DeepSpeed's own files, the few plain types it pickles; see ``engine.py``). A tampered file that would
run code or build other objects when unpickled is refused with one line naming it; so is a file whose
contents do not fit the model (missing sections, unknown keys, other shapes).
"""
from __future__ import annotations

import enum
import json
import os
import pickle
import re
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distributed.common.config import PATH_KEYS
from distributed.common.errors import DataError, UserError
from distributed.common.fsutil import make_temp_sibling, remove_stale_temp_siblings
from model.ppl import PPL

STATE_FILE = "ppl_state.pt"
RUN_FILE = "run.json"                 # the run's fingerprint (JSON: read before any tensor file)
BEST_MODEL_FILE = "best_model.pt"     # weights of the best validation epoch (for evaluate/predict)
FINAL_MODEL_FILE = "final_model.pt"   # weights after the last step
RUN_FORMAT = 1

# dotted config keys (a trailing "." = a whole section) that do not change what a run computes
NEUTRAL_KEYS = ("name", "output_dir", "optim.epochs", "optim.fused", "data.eval_batch_size", "data.verify_shards",
                "distributed.use_gpu", "distributed.cpus_per_worker", "distributed.max_failures",
                "distributed.ray_address", "distributed.checkpoint_every_steps", "distributed.check_bank_sync",
                "tracking.")


class ResumeError(UserError):
    """A checkpoint that exists but must not be continued by this run."""


# ---------------------------------------------------------------------------------------------
# safe reading
# ---------------------------------------------------------------------------------------------

def one_line(err: BaseException, limit: int = 240) -> str:
    """An exception as one short line (torch's messages span many)."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _refusal(err: BaseException) -> str:
    text = str(err)
    culprit = re.search(r"GLOBAL ([\w.]+)", text)
    if culprit:
        return (f"unpickling it would call {culprit.group(1)}, which is not an allowed checkpoint type "
                f"(a tampered or foreign file)")
    unpickler = re.search(r"WeightsUnpickler error: ([^\n]+)", text)
    return f"not a checkpoint file ({one_line(unpickler.group(1) if unpickler else err)})"


def _enum_member_lookup(enums: tuple[type[enum.Enum], ...]):
    """What the unpickler may call in place of ``getattr``. Python 3.11.0-3.11.4 (Debian 12's python3 is 3.11.2)
    pickle an enum member as ``getattr(EnumClass, "name")`` (DeepSpeed's ZeRO-1/2 optimizer files hold one).
    Allowing ``getattr`` itself would let a file reach any attribute of any object on the stack; this looks up
    exactly a member of one of the allowed ``enums`` and refuses everything else."""
    def lookup(owner, name):
        if owner not in enums or not isinstance(name, str) or name not in owner.__members__:
            shown = owner.__name__ if isinstance(owner, type) else type(owner).__name__
            raise pickle.UnpicklingError(f"getattr({shown}, {name!r}) is not an allowed enum member")
        return owner[name]
    return lookup


def safe_load(path: str | os.PathLike, map_location: Any = "cpu", allowed: Iterable[type] = ()) -> Any:
    """``torch.load(weights_only=True)``; ``allowed`` extends torch's allow-list for this call only (an allowed
    enum's members also load as older Pythons pickle them, through ``getattr``). A missing, corrupt or tampered
    file is a one-line DataError naming it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: checkpoint file missing")
    allowed = list(allowed)
    enums = tuple(t for t in allowed if isinstance(t, type) and issubclass(t, enum.Enum))
    extra = [(_enum_member_lookup(enums), "builtins.getattr")] if enums else []
    try:
        with torch.serialization.safe_globals(allowed + extra):
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - whatever a hostile file makes torch raise, it is refused
        raise DataError(f"{path}: refused: {_refusal(err)}") from None


def _sections(payload: Any, where: Path | str, names: Iterable[str]) -> dict:
    if not isinstance(payload, dict):
        raise DataError(f"{where}: expected a dict of sections, found {type(payload).__name__}")
    missing = [name for name in names if name not in payload]
    if missing:
        raise DataError(f"{where}: missing section(s) {', '.join(map(repr, missing))}")
    return payload


def load_module_state(module: nn.Module, state: Any, where: str) -> None:
    """``module.load_state_dict(state)``, with the first mismatch named in one line (keys, shapes)."""
    if not isinstance(state, dict) or not all(isinstance(k, str) and (torch.is_tensor(v) or k.endswith("_extra_state"))
                                              for k, v in state.items()):
        raise DataError(f"{where}: expected a state dict of tensors")
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unknown = [k for k in state if k not in expected]
    reshaped = [k for k in expected if k in state and torch.is_tensor(expected[k])
                and (not torch.is_tensor(state[k]) or state[k].shape != expected[k].shape)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s), e.g. {missing[0]!r}")
    if unknown:
        problems.append(f"{len(unknown)} unknown key(s), e.g. {unknown[0]!r}")
    if reshaped:
        k = reshaped[0]
        got = tuple(state[k].shape) if torch.is_tensor(state[k]) else type(state[k]).__name__
        problems.append(f"{k!r} has shape {got}, the model's is {tuple(expected[k].shape)}")
    if problems:
        raise DataError(f"{where}: does not fit the model ({'; '.join(problems)})")
    try:
        module.load_state_dict(state)
    except (RuntimeError, ValueError, KeyError, TypeError) as err:   # e.g. an _extra_state the module rejects
        raise DataError(f"{where}: does not fit the model ({one_line(err)})") from None


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: Any, where: str) -> None:
    """``optimizer.load_state_dict(state)`` after checking groups and per-parameter shapes (torch checks
    neither shapes nor types and fails at the next step instead)."""
    if not isinstance(state, dict) or not isinstance(state.get("state"), dict) \
            or not isinstance(state.get("param_groups"), list):
        raise DataError(f"{where}: expected an optimizer state dict (state, param_groups)")
    groups = optimizer.param_groups
    saved = state["param_groups"]
    if len(saved) != len(groups) or any(not isinstance(g, dict) or len(g.get("params", ())) != len(mine["params"])
                                        for g, mine in zip(saved, groups)):
        raise DataError(f"{where}: parameter groups do not fit the model's optimizer")
    params = [p for group in groups for p in group["params"]]
    ids = [i for g in saved for i in g["params"]]
    for index, per_param in state["state"].items():
        if index not in ids or not isinstance(per_param, dict):
            raise DataError(f"{where}: state for unknown parameter {index!r}")
        param = params[ids.index(index)]
        for name, value in per_param.items():
            if torch.is_tensor(value) and value.dim() > 0 and value.shape != param.shape:
                raise DataError(f"{where}: {name} of parameter {index} has shape {tuple(value.shape)}, "
                                f"the parameter's is {tuple(param.shape)}")
    try:
        optimizer.load_state_dict(state)
    except (ValueError, KeyError, TypeError, RuntimeError) as err:
        raise DataError(f"{where}: does not fit the model's optimizer ({one_line(err)})") from None


# ---------------------------------------------------------------------------------------------
# run fingerprint
# ---------------------------------------------------------------------------------------------

def _neutral(key: str) -> bool:
    return any(key == n or (n.endswith(".") and key.startswith(n)) for n in NEUTRAL_KEYS)


def run_fingerprint(cfg) -> dict[str, Any]:
    """The config values that change what a run computes (dotted key -> value), see the module doc."""
    return {key: (str(Path(value).resolve()) if key in PATH_KEYS and value else value)
            for key, value in cfg.flatten().items() if not _neutral(key)}


_MISSING = object()


def _show(value: Any) -> str:
    return "(unset)" if value is _MISSING else json.dumps(value)


def check_same_run(directory: Path, fingerprint: dict[str, Any]) -> None:
    """Refuse (one line) a checkpoint folder that another run wrote; reads only its JSON run file."""
    path = directory / RUN_FILE
    if not path.is_file():
        raise ResumeError(f"{directory}: no {RUN_FILE}, so which run wrote this checkpoint is unknown "
                          f"(an older ppl-avvp, or not a checkpoint); choose another output_dir")
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        saved = saved["fingerprint"] if saved.get("format") == RUN_FORMAT else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError, KeyError, TypeError):
        saved = None
    if not isinstance(saved, dict):
        raise DataError(f"{path}: unreadable run file (expected {{\"format\": {RUN_FORMAT}, \"fingerprint\": {{...}}}})")
    differ = sorted(k for k in set(saved) | set(fingerprint) if saved.get(k, _MISSING) != fingerprint.get(k, _MISSING))
    if differ:
        shown = ", ".join(f"{k} {_show(saved.get(k, _MISSING))} -> {_show(fingerprint.get(k, _MISSING))}"
                          for k in differ[:3])
        more = f" and {len(differ) - 3} more" if len(differ) > 3 else ""
        raise ResumeError(f"{directory}: checkpoint of a different run ({shown}{more}); resume with the "
                          f"settings it was written with, or choose another output_dir")


def _write_run_file(directory: Path, fingerprint: dict[str, Any]) -> None:
    (directory / RUN_FILE).write_text(json.dumps({"format": RUN_FORMAT, "fingerprint": fingerprint}, indent=1))


# ---------------------------------------------------------------------------------------------
# training state
# ---------------------------------------------------------------------------------------------

def rng_state() -> dict[str, torch.Tensor]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save_training_state(directory: Path, engine, method: PPL, progress: dict[str, Any], rank: int) -> None:
    """Collective: every rank calls it; each writes its own files into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    engine.save(directory, rank)
    torch.save(rng_state(), directory / f"rng_rank{rank}.pt")
    if rank == 0:
        torch.save({"momentum": method.momentum.state_dict(), "bank": method.bank.state_dict(),
                    "progress": progress}, directory / STATE_FILE)
        _write_run_file(directory, engine.run_fingerprint)


def _check_progress(progress: Any, where: Path) -> dict[str, Any]:
    if not isinstance(progress, dict):
        raise DataError(f"{where}: progress: expected a dict")
    for key in ("epoch", "step", "global_step"):
        value = progress.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise DataError(f"{where}: progress.{key}: expected an integer >= 0, got {value!r}")
    if not isinstance(progress.get("history", []), list):
        raise DataError(f"{where}: progress.history: expected a list")
    return progress


def load_training_state(directory: Path, engine, method: PPL, rank: int) -> dict[str, Any]:
    """Restore engine, momentum encoder, bank and this rank's RNG; returns the saved progress.
    The run file is checked first: a checkpoint of another run is refused before anything is unpickled."""
    check_same_run(directory, engine.run_fingerprint)
    state_path, rng_path = directory / STATE_FILE, directory / f"rng_rank{rank}.pt"
    state = _sections(safe_load(state_path), state_path, ("momentum", "bank", "progress"))
    rng = _sections(safe_load(rng_path), rng_path, ("torch",))
    progress = _check_progress(state["progress"], state_path)
    engine.load(directory)
    load_module_state(method.momentum, state["momentum"], f"{state_path}: momentum")
    load_module_state(method.bank, state["bank"], f"{state_path}: bank")
    try:
        set_rng_state(rng)
    except (RuntimeError, TypeError) as err:
        raise DataError(f"{rng_path}: not an RNG state ({one_line(err)})") from None
    return progress


# ---------------------------------------------------------------------------------------------
# local checkpoint folders
# ---------------------------------------------------------------------------------------------

def latest_local_checkpoint(root: Path) -> Path | None:
    candidates = sorted(p for p in root.glob("step-*") if (p / STATE_FILE).exists())
    return candidates[-1] if candidates else None


def run_checkpoints(output_dir: Path) -> list[Path]:
    """Every checkpoint folder a run left in ``output_dir``: ours (``checkpoints/step-*``, in-process runs)
    and Ray Train's (``ray/<name>/checkpoint_*``, which a new ``fit`` of the same name restores)."""
    ours = sorted(p for p in (output_dir / "checkpoints").glob("step-*") if p.is_dir())
    rays = sorted(p for p in (output_dir / "ray").glob("*/checkpoint_*") if p.is_dir())
    return ours + rays


def commit_local(tmp: Path, final: Path) -> None:
    """Atomic publish of a finished checkpoint folder."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def _remove_unnamed_temporaries(root: Path) -> None:
    """``.tmp-*`` folders of earlier versions, which did not record their writer."""
    for legacy in root.glob(".tmp-*"):
        if legacy.is_dir() and not legacy.is_symlink():
            shutil.rmtree(legacy, ignore_errors=True)


def remove_stale_temporaries(root: Path) -> None:
    """Half-written checkpoint folders under ``root`` left by dead processes (``kill -9``): each names its
    writer (pid, host), so a live writer's folder is never touched."""
    remove_stale_temp_siblings(root / "step")
    _remove_unnamed_temporaries(root)


def new_tmp_dir(parent: Path) -> Path:
    """A hidden folder under ``parent``, named for this process, to write one checkpoint into (dead
    writers' folders are removed first)."""
    _remove_unnamed_temporaries(parent)
    return make_temp_sibling(parent / "step")


# ---------------------------------------------------------------------------------------------
# inference artifact
# ---------------------------------------------------------------------------------------------

def save_model(path: Path, method: PPL, online_state: dict, config: dict, extra: dict[str, Any]) -> None:
    """The inference artifact: config, online weights, momentum weights, bank. Atomic."""
    payload = {"config": config, "network": online_state, "momentum": method.momentum.state_dict(),
               "bank": method.bank.state_dict(), **extra}
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_model(path: str | os.PathLike) -> dict[str, Any]:
    """A model checkpoint's payload (``config`` and ``network`` sections checked), never unpickling code."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a folder, expected a model checkpoint file ({BEST_MODEL_FILE})")
    if not path.is_file():
        raise DataError(f"{path}: checkpoint not found")
    payload = safe_load(path)
    if not isinstance(payload, dict) or not {"config", "network"} <= set(payload):
        missing = "a dict" if not isinstance(payload, dict) else \
            ", ".join(repr(k) for k in ("config", "network") if k not in payload)
        raise DataError(f"{path}: not a ppl-avvp model checkpoint (missing {missing})")
    if not isinstance(payload["config"], dict):
        raise DataError(f"{path}: not a ppl-avvp model checkpoint ('config' is not a mapping)")
    return payload
