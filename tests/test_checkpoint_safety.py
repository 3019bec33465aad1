"""Every place a checkpoint is read, with a planted pickle that would run code (it writes a marker file):
the torch engine, DeepSpeed at ZeRO 0/1/2 (model and optimizer-partition files), ppl_state.pt, the RNG
file, and best_model.pt in evaluate and predict. Nothing runs; the user gets one line naming the file and
exit 2; the refused run is not later accepted. Genuine checkpoints of every engine still resume, and
contents that do not fit the model are one line too."""
from __future__ import annotations

import enum
import json
import pickle
import shutil
import zipfile
from pathlib import Path

import pytest
import torch

from distributed.cli import main as cli
from distributed.runtime.checkpoint import (BEST_MODEL_FILE, RUN_FILE, STATE_FILE, latest_local_checkpoint,
                                            safe_load)
from hostile import llp_data, one_line_error, plant, run_overrides

ENGINES = {"torch": ("torch", 0), "zero0": ("deepspeed", 0), "zero1": ("deepspeed", 1), "zero2": ("deepspeed", 2)}
MODEL_STATES = "deepspeed/state/mp_rank_00_model_states.pt"
OPTIM_STATES = "deepspeed/state/zero_pp_rank_0_mp_rank_00_optim_states.pt"


def engine_overrides(out: Path, data, kind: str, *extra: str) -> list[str]:
    engine, stage = ENGINES[kind]
    return run_overrides(out, data, f"distributed.zero_stage={stage}", *extra, engine=engine)


@pytest.fixture(scope="module")
def runs(tiny_llp, tmp_path_factory) -> dict[str, Path]:
    """One finished one-epoch run per engine / ZeRO stage (trained lazily, once)."""
    root, done = tmp_path_factory.mktemp("ckpt_runs"), {}

    def get(kind: str) -> Path:
        if kind not in done:
            out = root / kind
            assert cli(["train", "--no-mlflow", *engine_overrides(out, llp_data(tiny_llp), kind)]) == 0
            done[kind] = out
        return done[kind]
    return get


def copy_run(runs, kind: str, tmp_path: Path) -> tuple[Path, Path]:
    out = tmp_path / kind
    shutil.copytree(runs(kind), out)
    return out, latest_local_checkpoint(out / "checkpoints")


def resume(out: Path, tiny_llp, kind: str, *extra: str) -> list[str]:
    return ["train", "--no-mlflow", "--resume", *engine_overrides(out, llp_data(tiny_llp), kind, *extra)]


def genuine(path: Path):
    from distributed.runtime.engine import deepspeed_safe_globals

    return safe_load(path, allowed=deepspeed_safe_globals() if "deepspeed" in path.parts else ())


@pytest.mark.parametrize("kind, name", [
    ("torch", "engine.pt"),
    ("zero0", MODEL_STATES),
    ("zero1", MODEL_STATES), ("zero1", OPTIM_STATES),
    ("zero2", MODEL_STATES), ("zero2", OPTIM_STATES),
    ("torch", STATE_FILE), ("zero1", STATE_FILE),
    ("torch", "rng_rank0.pt"),
])
def test_planted_pickle_in_a_training_checkpoint_never_runs(runs, tiny_llp, tmp_path, capsys, kind, name):
    out, checkpoint = copy_run(runs, kind, tmp_path)
    target, marker = checkpoint / name, tmp_path / "pwned"
    plant(target, marker, like=genuine(target))
    for _ in range(2):                                        # refused, and still refused on the next try
        code = cli(resume(out, tiny_llp, kind, "optim.epochs=2"))
        one_line_error(code, capsys.readouterr().err, target, "refused", "would call exec")
        assert not marker.exists(), "the planted pickle ran"
    assert not (out / "results.json").exists()                # no result claims the refused run finished


@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_planted_pickle_as_best_model_never_runs(runs, tiny_llp, tmp_path, capsys, command):
    model, marker = tmp_path / BEST_MODEL_FILE, tmp_path / "pwned"
    shutil.copy(runs("torch") / BEST_MODEL_FILE, model)
    plant(model, marker, like=safe_load(model))
    data = llp_data(tiny_llp)
    args = ["--checkpoint", model, "--features", data["features"], "--annotations", data["annotations"]]
    args += ["--out", tmp_path / "pred"] if command == "predict" else ["--json", tmp_path / "scores.json"]
    code = cli([command, *map(str, args)])
    one_line_error(code, capsys.readouterr().err, model, "would call exec")
    assert not marker.exists(), "the planted pickle ran"
    assert not (tmp_path / "scores.json").exists() and not (tmp_path / "pred" / "events.json").exists()


@pytest.mark.parametrize("kind", ["torch", "zero0", "zero1", "zero2"])
def test_genuine_checkpoint_of_every_engine_resumes_under_the_allow_list(runs, tiny_llp, tmp_path, capsys, kind):
    out, _ = copy_run(runs, kind, tmp_path)
    assert cli(resume(out, tiny_llp, kind, "optim.epochs=2")) == 0, capsys.readouterr().err[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert [h["epoch"] for h in results["history"]] == [1, 2]


class _EnumsAsGetattr(pickle.Pickler):
    """Pickles enum members as Python 3.11.0-3.11.4 do (Debian 12's python3 is 3.11.2): ``getattr(Enum, name)``."""

    def reducer_override(self, obj):
        return (getattr, (type(obj), obj.name)) if isinstance(obj, enum.Enum) else NotImplemented


class _OldPython311Pickle:   # a pickle_module for torch.save
    Pickler = _EnumsAsGetattr
    Unpickler = pickle.Unpickler


def _save_as_old_python(payload, path: Path) -> None:
    torch.save(payload, path, pickle_module=_OldPython311Pickle)
    assert b"getattr" in _pickled_bytes(path), "the rewrite did not pickle an enum through getattr"


def _pickled_bytes(path: Path) -> bytes:
    with zipfile.ZipFile(path) as archive:
        return archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))


@pytest.mark.parametrize("kind", ["zero1", "zero2"])
def test_zero_optimizer_checkpoint_written_by_python_3_11_2_resumes(runs, tiny_llp, tmp_path, capsys, kind):
    """ZeRO-1/2 optimizer files hold a ZeroStageEnum member, which older 3.11 patches pickle via getattr."""
    out, checkpoint = copy_run(runs, kind, tmp_path)
    _save_as_old_python(genuine(checkpoint / OPTIM_STATES), checkpoint / OPTIM_STATES)
    assert cli(resume(out, tiny_llp, kind, "optim.epochs=2")) == 0, capsys.readouterr().err[-3000:]
    assert [h["epoch"] for h in json.loads((out / "results.json").read_text())["history"]] == [1, 2]


class _Getattr:
    def __init__(self, owner, name):
        self.owner, self.name = owner, name

    def __reduce__(self):
        return getattr, (self.owner, self.name)


@pytest.mark.parametrize("owner, name", [("ZeroStageEnum", "__class__"), ("ZeroStageEnum", "_missing_"),
                                         ("LossScaler", "update_scale"), ("tensor", "numpy")])
def test_getattr_in_a_checkpoint_reaches_only_enum_members(runs, tiny_llp, tmp_path, capsys, owner, name):
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum

    out, checkpoint = copy_run(runs, "zero1", tmp_path)
    target = checkpoint / OPTIM_STATES
    owners = {"ZeroStageEnum": ZeroStageEnum, "LossScaler": LossScaler, "tensor": torch.zeros(1)}
    torch.save({**genuine(target), "planted": _Getattr(owners[owner], name)}, target)
    code = cli(resume(out, tiny_llp, "zero1", "optim.epochs=2"))
    one_line_error(code, capsys.readouterr().err, target, "refused")
    assert not (out / "results.json").exists()


def _rewrite(path: Path, change) -> None:
    payload = genuine(path)
    change(payload)
    torch.save(payload, path)


@pytest.mark.parametrize("kind, name, change, culprit", [
    ("torch", "engine.pt", lambda p: p.pop("optimizer"), "expected sections 'module' and 'optimizer'"),
    ("torch", "engine.pt", lambda p: p["module"].update({k: torch.zeros(3) for k in list(p["module"])[:1]}),
     "has shape (3,)"),
    ("torch", "engine.pt", lambda p: p["module"].update(bogus=torch.zeros(1)), "unknown key(s), e.g. 'bogus'"),
    ("torch", "engine.pt", lambda p: p["optimizer"]["state"][0].update(exp_avg=torch.zeros(2)), "exp_avg"),
    ("torch", STATE_FILE, lambda p: p.pop("bank"), "missing section(s) 'bank'"),
    ("torch", STATE_FILE, lambda p: p["progress"].update(epoch="one"), "progress.epoch"),
    ("torch", STATE_FILE, lambda p: p["bank"].pop("prototypes"), "missing key(s), e.g. 'prototypes'"),
    ("torch", "rng_rank0.pt", lambda p: p.update(torch=torch.zeros(5, dtype=torch.uint8)), "not an RNG state"),
    ("zero0", MODEL_STATES, lambda p: p["module"].update({k: torch.zeros(3) for k in list(p["module"])[:1]}),
     "does not fit this model and config"),
])
def test_checkpoint_contents_that_do_not_fit_are_one_line(runs, tiny_llp, tmp_path, capsys, kind, name, change,
                                                          culprit):
    out, checkpoint = copy_run(runs, kind, tmp_path)
    _rewrite(checkpoint / name, change)
    code = cli(resume(out, tiny_llp, kind, "optim.epochs=2"))
    one_line_error(code, capsys.readouterr().err, checkpoint, culprit)


@pytest.mark.parametrize("damage, culprit", [
    (lambda f: f.unlink(), f"no {RUN_FILE}"),
    (lambda f: f.write_text("{not json"), "unreadable run file"),
    (lambda f: f.write_text('{"format": 1, "fingerprint": []}'), "unreadable run file"),
])
def test_checkpoint_without_a_readable_run_file_is_refused(runs, tiny_llp, tmp_path, capsys, damage, culprit):
    out, checkpoint = copy_run(runs, "torch", tmp_path)
    damage(checkpoint / RUN_FILE)
    code = cli(resume(out, tiny_llp, "torch", "optim.epochs=2"))
    one_line_error(code, capsys.readouterr().err, checkpoint, culprit)


@pytest.mark.parametrize("change, culprit", [
    (lambda p: p.pop("network"), "missing 'network'"),
    (lambda p: p["network"].update({k: torch.zeros(2, 2) for k in list(p["network"])[:1]}), "has shape (2, 2)"),
    (lambda p: p["config"]["model"].update(bogus=1), "unknown config key 'model.bogus'"),
    (lambda p: p["config"]["model"].update(model_dim=32), "does not fit the model"),
    (lambda p: p["config"].pop("model"), "no 'model' section"),
])
def test_model_checkpoint_that_does_not_fit_is_one_line(runs, tiny_llp, tmp_path, capsys, change, culprit):
    model = tmp_path / BEST_MODEL_FILE
    payload = safe_load(runs("torch") / BEST_MODEL_FILE)
    change(payload)
    torch.save(payload, model)
    data = llp_data(tiny_llp)
    code = cli(["evaluate", "--checkpoint", str(model), "--features", str(data["features"]),
                "--annotations", str(data["annotations"]), "--json", str(tmp_path / "scores.json")])
    one_line_error(code, capsys.readouterr().err, model, culprit)
    assert not (tmp_path / "scores.json").exists()


@pytest.mark.parametrize("make, culprit", [
    (lambda p: p.write_bytes(b"PK\x03\x04 not really a zip"), "refused"),
    (lambda p: p.mkdir(), "is a folder"),
    (lambda p: None, "checkpoint not found"),
])
def test_unreadable_model_checkpoint_is_one_line(tiny_llp, tmp_path, capsys, make, culprit):
    model = tmp_path / BEST_MODEL_FILE
    make(model)
    data = llp_data(tiny_llp)
    code = cli(["predict", "--checkpoint", str(model), "--features", str(data["features"]),
                "--out", str(tmp_path / "pred")])
    one_line_error(code, capsys.readouterr().err, model, culprit)
