"""Backbone weights from local files only: checked against the published sha256, read without unpickling.

Nothing is downloaded at run time. A missing or wrong file is one ``UserError`` line naming it.
``--random-init --seed N`` builds the same random weights on every worker (tests, benchmarks).
A ``--weights-manifest`` JSON ``{"<backbone>": {"file": "...", "sha256": "<hex>"}}`` names other files
(a checkpoint of one's own, a re-upload) with their full sha256.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from distributed.common.errors import UserError
from distributed.common.fsutil import sha256_file
from distributed.extract.backbones import Backbone, WeightsFile


def read_manifest(path: str | Path | None) -> dict[str, WeightsFile]:
    """``--weights-manifest``: backbone name -> the file to load and its sha256 (full or a prefix of >= 8)."""
    if path is None:
        return {}
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"--weights-manifest {path}: cannot be read as JSON ({' '.join(str(err).split())})") from None
    if not isinstance(data, dict):
        raise UserError(f"--weights-manifest {path}: expected an object of backbone name -> {{file, sha256}}")
    out = {}
    for name, entry in data.items():
        if not (isinstance(entry, dict) and isinstance(entry.get("file"), str)
                and isinstance(entry.get("sha256"), str) and len(entry["sha256"]) >= 8):
            raise UserError(f"--weights-manifest {path}: {name!r} needs \"file\" and \"sha256\" (>= 8 hex digits)")
        out[name] = WeightsFile(entry["file"], entry["sha256"].lower(), "")
    return out


def find_weights(backbone: Backbone, weights_dir: Path, manifest: dict[str, WeightsFile]) -> tuple[Path, str]:
    """The file to load for ``backbone`` and the sha256 (prefix) it must have."""
    if backbone.name in manifest:
        entry = manifest[backbone.name]
        path = Path(entry.filename) if Path(entry.filename).is_absolute() else weights_dir / entry.filename
        if not path.is_file():
            raise UserError(f"{path}: weights file for {backbone.name} not found (named in --weights-manifest)")
        return path, entry.sha256
    for entry in backbone.weights:
        if (weights_dir / entry.filename).is_file():
            if not entry.sha256:
                raise UserError(f"{weights_dir / entry.filename}: no published sha256 is known for {backbone.name}; "
                                f"name the file and its sha256 in --weights-manifest")
            return weights_dir / entry.filename, entry.sha256
    first = backbone.weights[0]
    raise UserError(f"{weights_dir / first.filename}: weights file for {backbone.name} not found "
                    f"(download it once from {first.url} into --weights-dir)")


def load_state(path: Path, sha256: str) -> dict[str, torch.Tensor]:
    """sha256 check, then ``torch.load(weights_only=True)``: a file we cannot trust is never unpickled."""
    digest = sha256_file(path)
    if not digest.startswith(sha256):
        raise UserError(f"{path}: sha256 {digest[:16]}... is not the published file's ({sha256[:16]}...)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is one line
        reason = " ".join(str(err).split())[:200]
        raise UserError(f"{path}: not a tensor-only torch file ({type(err).__name__}: {reason})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise UserError(f"{path}: expected a state dict, found {type(state).__name__}")
    return state


def load_into(model: nn.Module, state: dict, path: Path, backbone: Backbone) -> None:
    """Load ``state`` into the architecture; a head we replaced by Identity (fc) is ignored, and for CLIP and
    CLAP (whole-model files) the text tower, its projection and the logit scales. Anything else missing, extra
    or of the wrong shape is one line naming the file (CLAP's fused model: its fusion layers are extra)."""
    own = model.state_dict()
    ignored = ("fc.", "text_model.", "text_projection.", "logit_scale")
    extra = [k for k in state if k not in own and not k.startswith(ignored)]
    missing = [k for k in own if k not in state]
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if extra or missing or wrong:
        what = (f"{len(missing)} missing (e.g. {missing[0]})" if missing else
                f"{len(wrong)} of the wrong shape (e.g. {wrong[0]})" if wrong else f"{len(extra)} unexpected (e.g. {extra[0]})")
        raise UserError(f"{path}: not {backbone.name} weights: {what}")
    model.load_state_dict({k: state[k] for k in own}, strict=True)


def build_model(backbone: Backbone, weights_dir: str | Path | None, *, random_init: bool, seed: int = 0,
                manifest: dict[str, WeightsFile] | None = None) -> nn.Module:
    """The backbone's architecture in eval mode with its weights (or seeded random ones)."""
    torch.manual_seed(seed)
    model = backbone.build()
    if not random_init:
        if weights_dir is None:
            raise UserError("--weights-dir: required unless --random-init is given")
        weights_dir = Path(weights_dir)
        path, sha = find_weights(backbone, weights_dir, manifest or {})
        load_into(model, load_state(path, sha), path, backbone)
    return model.eval()


def check_weights(backbones: list[Backbone], weights_dir: str | Path | None,
                  manifest: dict[str, WeightsFile]) -> dict[str, str]:
    """Before any work: every needed file exists and has the right hash; returns name -> file path."""
    if weights_dir is None:
        raise UserError("--weights-dir: required unless --random-init is given")
    found = {}
    for backbone in backbones:
        path, sha = find_weights(backbone, Path(weights_dir), manifest)
        digest = sha256_file(path)
        if not digest.startswith(sha):
            raise UserError(f"{path}: sha256 {digest[:16]}... is not the published file's ({sha[:16]}...)")
        found[backbone.name] = str(path)
    return found
