"""Checkpoints that resume exactly: engine (weights + optimizer, via DeepSpeed or torch), momentum encoder,
prototype bank, epoch/step (the data position), per-rank RNG state, and the run's history.

Everything is written by us and read back with ``torch.load(weights_only=True)``. Local checkpoints
are written into a temporary folder and renamed into place, so a crash never leaves half of one.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from model.ppl import PPL

STATE_FILE = "ppl_state.pt"
BEST_MODEL_FILE = "best_model.pt"     # weights of the best validation epoch (for evaluate/predict)
FINAL_MODEL_FILE = "final_model.pt"   # weights after the last step


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


def load_training_state(directory: Path, engine, method: PPL, rank: int) -> dict[str, Any]:
    engine.load(directory)
    state = torch.load(directory / STATE_FILE, map_location="cpu", weights_only=True)
    method.momentum.load_state_dict(state["momentum"])
    method.bank.load_state_dict(state["bank"])
    rng_file = directory / f"rng_rank{rank}.pt"
    if rng_file.exists():
        set_rng_state(torch.load(rng_file, weights_only=True))
    return state["progress"]


def latest_local_checkpoint(root: Path) -> Path | None:
    candidates = sorted(p for p in root.glob("step-*") if (p / STATE_FILE).exists())
    return candidates[-1] if candidates else None


def commit_local(tmp: Path, final: Path) -> None:
    """Atomic publish of a finished checkpoint folder."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def new_tmp_dir(parent: Path) -> Path:
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=".tmp-", dir=parent))


def save_model(path: Path, method: PPL, online_state: dict, config: dict, extra: dict[str, Any]) -> None:
    """The inference artifact: config, online weights, momentum weights, bank. Atomic."""
    payload = {"config": config, "network": online_state, "momentum": method.momentum.state_dict(),
               "bank": method.bank.state_dict(), **extra}
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_model(path: str | Path) -> dict[str, Any]:
    from distributed.common.errors import DataError
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is a user error here
        raise DataError(f"{path}: not a ppl-avvp model checkpoint ({type(err).__name__})") from None
    for key in ("config", "network"):
        if key not in payload:
            raise DataError(f"{path}: not a ppl-avvp model checkpoint (missing '{key}')")
    return payload
