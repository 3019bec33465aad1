"""Where extracted features go and how: the video list, the 11-character ids, one ``.npy`` per video and
backbone written atomically (a hidden temp file in the same folder, then ``os.replace``), resume by
skipping videos whose every output exists, and the failures file.
"""

from __future__ import annotations

import io
import json
import os
import re
import uuid
from pathlib import Path

import numpy as np

from distributed.common.errors import UserError
from distributed.common.fsutil import pid_alive

VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".flv", ".m4v", ".mpg", ".mpeg")
FAILURES_NAME = "failures.jsonl"
ID_CHARS = 11  # LLP names files <11-character YouTube id>_<start>_<end>; features are named by the id
_TEMP = re.compile(r"^\.(?P<final>.+)\.tmp-(?P<pid>\d+)-[0-9a-f]{8}$")


def list_videos(source: str | Path, id_chars: int = ID_CHARS) -> list[tuple[str, Path]]:
    """``--videos``: a folder (its video files, sorted) or a text file of paths (one a line, relative to it).
    Returns (id, path) pairs; two videos with the same id are an error naming both."""
    source = Path(source)
    if source.is_dir():
        paths = sorted(p for p in source.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
        if not paths:
            raise UserError(f"--videos {source}: no video files ({', '.join(VIDEO_SUFFIXES)}) in this folder")
    elif source.is_file():
        try:
            lines = source.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise UserError(f"--videos {source}: cannot be read as a text list ({type(err).__name__})") from None
        paths = []
        for number, line in enumerate(lines, 1):
            if line.strip() and not line.lstrip().startswith("#"):
                path = Path(line.strip())
                paths.append(path if path.is_absolute() else source.parent / path)
        if not paths:
            raise UserError(f"--videos {source}: the list names no videos")
    else:
        raise UserError(f"--videos {source}: no such folder or list file")
    seen: dict[str, Path] = {}
    out = []
    for path in paths:
        vid = path.stem[:id_chars] if id_chars > 0 else path.stem
        if not vid or vid.startswith(".") or "/" in vid:
            raise UserError(f"{path}: cannot be named by its first {id_chars} characters ({vid!r})")
        if vid in seen:
            raise UserError(f"{path}: id {vid!r} is also the id of {seen[vid]} (use --id-chars 0 for whole names)")
        seen[vid] = path
        out.append((vid, path))
    return out


def feature_file(out: Path, backbone: str, vid: str) -> Path:
    return out / backbone / f"{vid}.npy"


def is_done(out: Path, vid: str, backbones: list[str]) -> bool:
    """A video is done when every backbone's file is there (each appeared whole, by rename)."""
    return all(feature_file(out, name, vid).is_file() for name in backbones)


def write_npy_atomically(path: Path, array: np.ndarray) -> None:
    """Write to ``.<name>.tmp-<pid>-<random>`` beside ``path``, fsync, then rename over ``path``."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, "wb") as fh:
            fh.write(buf.getbuffer())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def prepare_out(out: Path, backbones: list[str]) -> list[Path]:
    """Create the output folders; remove temp files left by dead writers (a killed job); return them."""
    removed = []
    for name in backbones:
        folder = out / name
        if folder.exists() and not folder.is_dir():
            raise UserError(f"--out {out}: {folder} exists and is not a directory")
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserError(f"--out {out}: cannot create {folder} ({' '.join(str(err).split())})") from None
        for path in folder.iterdir():
            match = _TEMP.match(path.name)
            if match and path.is_file() and not pid_alive(int(match.group("pid"))):
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def write_failures(out: Path, failures: list[dict]) -> Path:
    """``failures.jsonl``: one ``{"id", "path", "reason"}`` line per video this run could not extract,
    replaced whole at the end of each run (a resumed run retries them)."""
    path = out / FAILURES_NAME
    tmp = out / f".{FAILURES_NAME}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.write_text("".join(json.dumps(f, sort_keys=True) + "\n" for f in failures))
    os.replace(tmp, path)
    return path


def to_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def from_bytes(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)
