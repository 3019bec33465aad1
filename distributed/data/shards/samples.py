"""One shard's samples: tar iteration, the integrity check against ``keys.json``, decoding; and
``verify_shards``, which runs those checks over every shard of a folder.

The integrity check (:func:`checked_samples`: the sample at position i is keyed ``keys[i]``, the tar
holds exactly the manifest's count) is the one ``ppl-avvp shard verify`` and the training/eval reader
both use, so a shard verify rejects is never trained on. Decoding never unpickles:
``np.load(..., allow_pickle=False)`` and ``json`` only.
"""
from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from webdataset.tariterators import base_plus_ext, tar_file_iterator

from distributed.common.errors import DataError
from distributed.common.fsutil import sha256_file
from distributed.data.shards.manifest import KEYS_NAME, MANIFEST_NAME, load_keys, load_manifest, one_line

_TAR_ERRORS = (tarfile.TarError, OSError, EOFError, ValueError, AssertionError)


class _TarSamples:
    """Samples of one tar, grouped as WebDataset does (consecutive members sharing a key).

    ``current`` names the sample being read when an error happens, for the message.
    """

    def __init__(self, path: Path, data: bytes | None = None):
        self.path, self.data = path, data      # data: a byte range of the tar already read (random access)
        self.current: str | None = None
        self.count = 0

    def open(self):
        return open(self.path, "rb") if self.data is None else io.BytesIO(self.data)

    def __iter__(self) -> Iterator[dict]:
        sample: dict | None = None
        with self.open() as fh:
            for member in tar_file_iterator(fh):
                key, suffix = base_plus_ext(member["fname"])
                if key is None:
                    continue
                suffix = suffix.lower()
                if sample is None or key != sample["__key__"]:
                    if sample is not None:
                        self.count += 1
                        yield sample
                    sample = {"__key__": key}
                    self.current = key
                if suffix in sample:
                    raise DataError(f"shard {self.path}: sample {key!r}: {suffix} appears twice")
                sample[suffix] = member["data"]
        if sample is not None:
            self.count += 1
            self.current = None
            yield sample


def iter_tar_samples(path: Path) -> Iterator[dict]:
    """Raw samples (``__key__`` + field bytes) of one tar; a broken tar is a DataError naming it."""
    reader = _TarSamples(path)
    try:
        yield from reader
    except DataError:
        raise
    except _TAR_ERRORS as err:
        where = f"sample {reader.current!r}" if reader.current else f"sample #{reader.count}"
        raise DataError(f"shard {path}: corrupt or truncated tar at {where} ({one_line(err)})") from None


def checked_samples(path: Path, keys: Sequence[str | None], start: int = 0,
                    stop: int | None = None) -> Iterator[tuple[int, dict]]:
    """``(position, raw sample)`` for positions ``[start, stop)`` of one shard, integrity-checked.

    ``keys`` is the shard's ``keys.json`` list (None entries: key unknown, count only). Every sample
    up to ``stop`` must carry its listed key, the tar must not end before ``stop``, and reading to
    the end (``stop = len(keys)``, the default) also refuses samples beyond the count.
    """
    count = len(keys)
    stop = count if stop is None else stop
    pos = 0
    for sample in iter_tar_samples(path):
        key = sample["__key__"]
        if pos >= count:
            raise DataError(f"shard {path}: sample {key!r} is beyond the manifest's {count} samples")
        if keys[pos] is not None and key != keys[pos]:
            raise DataError(f"shard {path}: sample #{pos} is {key!r}, {KEYS_NAME} says {keys[pos]!r} "
                            f"(renamed or reordered samples; `ppl-avvp shard verify` lists all bad shards)")
        if pos >= start:
            yield pos, sample
        pos += 1
        if pos >= stop and stop < count:
            return
    if pos < stop:
        raise DataError(f"shard {path}: ends after {pos} samples, manifest says {count} (truncated?)")


_NPY_MAGIC = b"\x93NUMPY\x01"
_npy_headers: dict[bytes, tuple[np.dtype, tuple[int, ...], int]] = {}


def _load_npy(data: bytes) -> np.ndarray:
    """``np.load(allow_pickle=False)`` of ``.npy`` bytes, with the header parse cached.

    Every sample of a field has the same header; once ``np.load`` has parsed a header and
    produced a plain C-ordered array, later payloads with byte-identical headers and the right
    length are viewed with ``np.frombuffer`` (same result, no ``ast`` parse per array). Anything
    else goes through ``np.load``.
    """
    if data[:7] == _NPY_MAGIC and len(data) >= 10:
        end = 10 + int.from_bytes(data[8:10], "little")
        hit = _npy_headers.get(data[:end])
        if hit is not None and len(data) - end == hit[2]:
            return np.frombuffer(data, dtype=hit[0], offset=end).reshape(hit[1])
    arr = np.load(io.BytesIO(data), allow_pickle=False)
    if (isinstance(arr, np.ndarray) and data[:7] == _NPY_MAGIC and arr.flags.c_contiguous
            and not arr.dtype.hasobject and len(_npy_headers) < 256):
        end = 10 + int.from_bytes(data[8:10], "little")
        if len(data) - end == arr.nbytes:
            _npy_headers[data[:end]] = (arr.dtype, arr.shape, arr.nbytes)
    return arr


def decode_sample(raw: dict, manifest: dict, path: Path, position: int) -> dict:
    """Check and decode one raw sample; DataError names the shard and the sample key.

    ``split_row`` (the video's row in the split's annotation CSV) comes from the sample's json;
    shards written before it was recorded fall back to ``position``, the sample's place in the
    manifest order (such shards score in manifest order, still the same for every world size).
    """
    key = raw.get("__key__")
    where = f"shard {path}: sample {key!r}"
    out: dict[str, Any] = {"__key__": key, "filename": key, "split_row": position}
    for field, spec in manifest["fields"].items():
        if field not in raw:
            raise DataError(f"{where}: missing {field}")
        if spec.get("type") == "json":
            try:
                meta = json.loads(raw[field].decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as err:
                raise DataError(f"{where}: {field} is not valid JSON ({one_line(err)})") from None
            if not isinstance(meta, dict):
                raise DataError(f"{where}: {field} must be a JSON object")
            out["filename"] = str(meta.get("filename", key))
            row = meta.get("split_row", position)
            if isinstance(row, bool) or not isinstance(row, int) or row < 0:
                raise DataError(f"{where}: {field} split_row {row!r} is not a row number")
            out["split_row"] = row
            if "length" in meta:   # variable-length samples (W-TAL): the snippets of every (None, ...) field
                length = meta["length"]
                if isinstance(length, bool) or not isinstance(length, int) or length < 1:
                    raise DataError(f"{where}: {field} length {length!r} is not a snippet count >= 1")
                out["length"] = length
            continue
        try:
            arr = _load_npy(raw[field])
        except Exception as err:  # noqa: BLE001 - any parse failure of untrusted bytes is bad data
            raise DataError(f"{where}: {field} is not a readable .npy ({one_line(err)})") from None
        if not isinstance(arr, np.ndarray):
            arr.close()
            raise DataError(f"{where}: {field} is an .npz archive, expected .npy")
        if not _shape_fits(arr.shape, spec["shape"]) or str(arr.dtype) != spec["dtype"]:
            raise DataError(f"{where}: {field} is {arr.dtype}{list(arr.shape)}, manifest says "
                            f"{spec['dtype']}{list(spec['shape'])}")
        out[field[:-4]] = arr
    variable = [f for f, spec in manifest["fields"].items() if spec.get("shape", [0])[:1] == [None]]
    for field in variable:
        if len(out[field[:-4]]) != out.get("length"):
            raise DataError(f"{where}: {field} has {len(out[field[:-4]])} rows, its json says length "
                            f"{out.get('length')!r}")
    return out


def _shape_fits(shape: tuple[int, ...], spec: list) -> bool:
    """A decoded shape against the manifest's; ``None`` (null) in the manifest = any size >= 1 (variable length)."""
    return len(shape) == len(spec) and all(d == s if s is not None else d >= 1 for d, s in zip(shape, spec))


def read_sample_at(path: Path, keys: Sequence[str], position: int, start: int, stop: int) -> dict:
    """The raw sample at ``position`` of one shard, read from its byte range ``[start, stop)`` alone.

    Random access for shard sets whose manifest records each sample's byte offsets (uncompressed tars:
    a sample is its members' headers and data, contiguous). Checked like :func:`checked_samples`: one
    sample, keyed ``keys[position]``; a file shorter than ``stop`` is a truncated shard.
    """
    key = keys[position]
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size < stop:
                raise DataError(f"shard {path}: sample #{position} ({key!r}) is bytes [{start}, {stop}) in "
                                f"{MANIFEST_NAME}, the file ends at byte {size} (truncated?)")
            fh.seek(start)
            data = fh.read(stop - start)
    except OSError as err:
        raise DataError(f"shard {path}: unreadable ({one_line(err)})") from None
    found = list(iter_tar_samples_bytes(path, data, position))
    if len(found) != 1 or found[0]["__key__"] != key:
        got = [f["__key__"] for f in found]
        raise DataError(f"shard {path}: bytes [{start}, {stop}) hold sample(s) {got}, {KEYS_NAME} says "
                        f"#{position} is {key!r} (rewritten shard with a stale manifest?)")
    return found[0]


def iter_tar_samples_bytes(path: Path, data: bytes, position: int) -> Iterator[dict]:
    """Samples of an in-memory piece of a tar (a byte range of ``path``); errors name the shard and sample #."""
    reader = _TarSamples(path, data)
    try:
        yield from reader
    except DataError:
        raise
    except _TAR_ERRORS as err:
        raise DataError(f"shard {path}: corrupt sample #{position} ({one_line(err)})") from None


def sha256_mismatch(path: Path, expected: str) -> str | None:
    """How a shard file differs from its manifest sha256 (without the path), or None when it matches."""
    try:
        digest = sha256_file(path)
    except OSError as err:
        return f"unreadable ({one_line(err)})"
    if digest != expected:
        return f"sha256 {digest[:12]}… differs from the manifest's {expected[:12]}…"
    return None


def verify_shards(shard_dir: str | os.PathLike, deep: bool = False) -> list[str]:
    """Problems found (empty list = all good), one line per bad file: sha256, and the integrity
    check (keys and counts) of every shard against the manifest and ``keys.json``.

    ``deep=True`` also decodes every sample and checks fields, shapes and dtypes.
    """
    shard_dir = Path(shard_dir)
    manifest = load_manifest(shard_dir)
    problems: list[str] = []
    keys: dict[str, list[str]] | None = None
    try:
        keys = load_keys(shard_dir, manifest)
    except DataError as err:
        problems.append(str(err))
    position = 0
    for entry in manifest["shards"]:
        path = shard_dir / entry["name"]
        first, position = position, position + int(entry["count"])
        if not path.is_file():
            problems.append(f"{path}: missing")
            continue
        issues: list[str] = []
        mismatch = sha256_mismatch(path, entry["sha256"])
        if mismatch is not None:
            issues.append(mismatch)
        expected = keys[entry["name"]] if keys is not None else [None] * int(entry["count"])
        try:
            for pos, sample in checked_samples(path, expected):
                if deep:
                    decode_sample(sample, manifest, path, first + pos)
        except DataError as err:
            issues.append(str(err).removeprefix(f"shard {path}: "))
        if issues:
            problems.append(f"{path}: " + "; ".join(issues))
    return problems
