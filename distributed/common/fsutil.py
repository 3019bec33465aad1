"""Publishing a finished output folder atomically (synth, shards): readers never see half of one.

An output ``out`` is built in a hidden sibling ``.<name>.<tag>-<pid>-<host>-<random>`` and renamed
into place. A writer killed with ``kill -9`` leaves its sibling behind; the next writer of the same
``out`` removes the siblings whose process is dead (same host, pid not alive) and never touches a
live one's. ``<host>`` is a hash of the host name: on a shared file system another machine's pid
says nothing about its process, so other hosts' folders are left alone.
"""
from __future__ import annotations

import hashlib
import logging
import contextlib
import os
import re
import shutil
import socket
import uuid
from pathlib import Path

from distributed.common.errors import UserError

log = logging.getLogger(__name__)

HOST_TAG = hashlib.sha256(socket.gethostname().encode("utf-8")).hexdigest()[:8]
# <tag>-<pid>-<host>-<random>; also the names earlier versions wrote without a host (taken as this host):
# shards ".<name>.tmp-<pid>-<random>", synth ".<name>.synth-tmp-<pid>".
_TEMP_SUFFIX = re.compile(r"(?P<tag>tmp|synth-tmp|old)-(?P<pid>\d+)(?:-(?P<host>[0-9a-f]{8})-[0-9a-f]{8}|-[0-9a-f]{8})?")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks (shards are hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def temp_sibling_name(out: Path, tag: str, pid: int) -> Path:
    """Where process ``pid`` of this host builds ``out`` (``tag``: tmp, synth-tmp, old)."""
    return out.parent / f".{out.name}.{tag}-{pid}-{HOST_TAG}-{uuid.uuid4().hex[:8]}"


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host may still be running (unknown counts as alive: never delete its files)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):   # someone else's process / not a pid we can ask about
        return True
    return True


def remove_stale_temp_siblings(out: Path) -> list[Path]:
    """Remove the temporary siblings of ``out`` left by dead processes of this host; return them."""
    prefix = f".{out.name}."
    removed: list[Path] = []
    try:
        siblings = [p for p in out.parent.iterdir() if p.name.startswith(prefix)]
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for path in siblings:
        match = _TEMP_SUFFIX.fullmatch(path.name[len(prefix):])
        if match is None or not path.is_dir() or path.is_symlink():
            continue
        host = match.group("host")
        if (host is not None and host != HOST_TAG) or pid_alive(int(match.group("pid"))):
            continue
        if match.group("tag") == "old" and (host is None or not out.exists()):   # not ours / killed mid-swap:
            continue                                                             # the previous output
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            log.warning("removed %s, left behind by dead process %s", path, match.group("pid"))
            removed.append(path)
    return removed


def check_output_dir(out: Path, *, overwrite: bool, marker: str, kind: str, label: str = "") -> None:
    """Fail with one line unless ``out`` can be (re)placed by a folder of ``kind``.

    ``out`` may be absent or empty; a non-empty one needs ``overwrite`` and must hold ``marker`` (a
    previous output of the same kind, never some other folder). A file at ``out`` or at any folder
    above it is an error too (``--out a_file/x``). ``label`` prefixes the path (e.g. ``--out``).
    """
    where = f"{label} {out}".strip()
    check_output_path(out, label, folder=True)
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise UserError(f"{where}: already exists and is not empty; pass --overwrite to replace it")
        if not (out / marker).is_file():
            raise UserError(f"{where}: refusing to overwrite a non-empty directory that is not {kind} "
                            f"(no {marker})")


def make_temp_sibling(out: Path, tag: str = "tmp") -> Path:
    """Create the folder to build ``out`` in (its parents too), after removing stale ones of dead writers."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"{out}: cannot create its folder ({' '.join(str(err).split())})") from None
    remove_stale_temp_siblings(out)
    tmp = temp_sibling_name(out, tag, os.getpid())
    tmp.mkdir()
    return tmp


@contextlib.contextmanager
def published_atomically(out: Path, tag: str = "tmp"):
    """Build ``out`` in a fresh temporary sibling (yielded); when the block ends it replaces ``out`` in one
    rename, and on any error it is removed, so readers never see half an output."""
    tmp = make_temp_sibling(out, tag)
    try:
        yield tmp
        swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def swap_in(tmp: Path, out: Path) -> None:
    """Rename the finished ``tmp`` folder to ``out``; a previous ``out`` is removed only after the swap."""
    old = None
    if out.is_dir():
        if any(out.iterdir()):
            old = temp_sibling_name(out, "old", os.getpid())
            os.rename(out, old)
        else:
            out.rmdir()
    os.rename(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def check_output_path(path: Path, label: str = "", *, folder: bool) -> None:
    """One line, before any work is done, when ``path`` cannot be written: a file where a folder is wanted
    (``folder``) or the reverse, or a file where one of the folders above it should be (``--out a_file/x``)."""
    where = f"{label} {path}".strip()
    if path.exists() or path.is_symlink():
        if folder and not path.is_dir():
            raise UserError(f"{where}: exists and is not a directory")
        if not folder and path.is_dir():
            raise UserError(f"{where}: is a directory, expected a file name")
    for parent in path.parents:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise UserError(f"{where}: {parent} is a file, not a directory")
            break
