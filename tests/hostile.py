"""Helpers of the hostile-input tests: a pickle that runs code, the one-line error check, tiny run overrides."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from conftest import TINY_MODEL


class RunsCode:
    """Unpickling this calls ``exec``, which writes ``marker``: the proof that a load ran foreign code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('code ran')",)


def plant(path: Path, marker: Path, like=None) -> None:
    """Replace ``path`` with a torch file holding ``like`` (a genuine-looking payload) plus code to run.

    Before planting, the payload is shown to be live: an unrestricted ``torch.load`` of it runs the code.
    """
    payload = {**like, "planted": RunsCode(marker)} if isinstance(like, dict) else {"planted": RunsCode(marker)}
    scratch = path.with_name(path.name + ".scratch")
    torch.save(payload, scratch)
    torch.load(scratch, weights_only=False)                 # we wrote it: loading it unrestricted is our test
    assert marker.exists(), "the planted payload does not run code, so the test would prove nothing"
    marker.unlink()
    os.replace(scratch, path)


def one_line_error(code: int, err: str, *culprits, exit_code: int = 2) -> str:
    """The contract for bad input: the exit code, exactly one line on stderr, naming every culprit."""
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == exit_code, f"exit {code}, stderr: {err[-3000:]}"
    assert len(lines) == 1, f"expected one line, got {len(lines)}:\n{err[-3000:]}"
    assert lines[0].startswith("ppl-avvp ") and "error" in lines[0], lines[0]
    for culprit in culprits:
        assert str(culprit) in lines[0], f"{culprit!r} not named in: {lines[0]}"
    return lines[0]


def run_overrides(out: Path, data: dict[str, Path] | Path, *extra: str, engine: str = "torch") -> list[str]:
    """A tiny in-process run (2 steps, one epoch, no MLflow) of the LLP-layout ``data`` (or shards folder)."""
    source = ([f"data.shards={data}"] if isinstance(data, Path) else
              [f"data.annotations={data['annotations']}", f"data.features={data['features']}"])
    return [*source, f"output_dir={out}", "distributed.num_workers=0", f"distributed.engine={engine}",
            "optim.epochs=1", "data.batch_size=8", "data.limit_train=16", "ppl.warmup_epochs=0",
            "tracking.mlflow=false", *TINY_MODEL, *extra]


def llp_data(root: Path) -> dict[str, Path]:
    return {"annotations": root / "annotations", "features": root / "features"}


def linked_copy(src: Path, dst: Path) -> Path:
    """A copy made of hard links (cheap for feature folders); replace a file by unlinking it first."""
    shutil.copytree(src, dst, copy_function=os.link)
    return dst


def npy_bytes(descr: str, shape: tuple, payload: bytes) -> bytes:
    """An .npy file whose header says ``descr`` and ``shape``, whatever the payload holds."""
    header = repr({"descr": descr, "fortran_order": False, "shape": shape}).encode()
    header += b" " * ((64 - (10 + len(header) + 1) % 64) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + payload


def replace_file(path: Path, data: bytes) -> None:
    """Write ``data`` as a new file at ``path`` (never through a hard link shared with the original)."""
    path.unlink()
    path.write_bytes(data)
