"""The shard folder's format: ``manifest.json`` (counts, sha256, shapes, dtypes, classes, source) and
``keys.json`` (the video ids of each shard, in order), and their readers."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from distributed.common.errors import DataError

FORMAT = "ppl-avvp-shards"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
KEYS_NAME = "keys.json"
FEATURE_FIELDS = ("audio", "visual_2d", "visual_3d")
DENSE_FIELDS = ("dense_audio", "dense_visual")
DTYPES = ("float16", "float32")
DEFAULT_VIDEOS_PER_SHARD = 256


def one_line(err: BaseException) -> str:
    """An exception's message on one line (library messages may span several)."""
    return " ".join(str(err).split()) or type(err).__name__


def load_manifest(shard_dir: str | os.PathLike | dict) -> dict:
    """The manifest of a shard directory (a dict passes through), checked for the keys we use."""
    if isinstance(shard_dir, dict):
        return shard_dir
    path = Path(shard_dir) / MANIFEST_NAME
    if not Path(shard_dir).is_dir():
        raise DataError(f"{shard_dir}: shard directory not found")
    if not path.is_file():
        raise DataError(f"{path}: not found (write shards with `ppl-avvp shard`)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: unreadable manifest ({one_line(err)})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(f"{path}: not a {FORMAT} manifest")
    if manifest.get("version") != FORMAT_VERSION:
        raise DataError(f"{path}: version {manifest.get('version')!r}, this reader reads {FORMAT_VERSION}")
    for key in ("split", "shards", "fields", "num_samples", "classes", "has_dense"):
        if key not in manifest:
            raise DataError(f"{path}: field {key!r} missing")
    shards = manifest["shards"]
    if not shards or any(not isinstance(s, dict) or not {"name", "count", "sha256"} <= set(s)
                         for s in shards):
        raise DataError(f"{path}: field 'shards' must list {{name, count, sha256}} entries")
    if sum(int(s["count"]) for s in shards) != manifest["num_samples"]:
        raise DataError(f"{path}: shard counts do not add up to num_samples={manifest['num_samples']}")
    return manifest


def load_keys(shard_dir: str | os.PathLike, manifest: dict) -> dict[str, list[str]]:
    """``keys.json``: each shard's video ids in order, checked against the manifest (sha256, counts)."""
    path = Path(shard_dir) / manifest.get("keys_file", KEYS_NAME)
    try:
        raw = path.read_bytes()
        if manifest.get("keys_sha256") and hashlib.sha256(raw).hexdigest() != manifest["keys_sha256"]:
            raise DataError(f"{path}: sha256 differs from the manifest")
        keys = json.loads(raw)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: unreadable ({one_line(err)})") from None
    if not isinstance(keys, dict):
        raise DataError(f"{path}: expected an object of shard name -> video ids")
    for entry in manifest["shards"]:
        ids = keys.get(entry["name"])
        if not isinstance(ids, list) or len(ids) != entry["count"] or not all(isinstance(k, str) for k in ids):
            raise DataError(f"{path}: keys of {entry['name']} do not match the manifest count")
    return keys


def check_task(manifest: dict, where: Path, task: str) -> None:
    """A shard set written for another task is refused with one line (LLP manifests carry no ``task``)."""
    found = manifest.get("task", "llp")
    if found != task:
        how = "`ppl-avvp wtal shard`" if task == "wtal" else "`ppl-avvp shard`"
        raise DataError(f"{Path(where) / MANIFEST_NAME}: task is {found!r}, this run reads {task!r} shards "
                        f"(write them with {how})")


def shard_offsets(manifest: dict) -> list[int]:
    """Position of each shard's first sample in the manifest order (shards laid end to end)."""
    offsets, total = [], 0
    for entry in manifest["shards"]:
        offsets.append(total)
        total += int(entry["count"])
    return offsets
