"""Publishing a finished output folder atomically (synth, shards): readers never see half of one."""
from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path


def swap_in(tmp: Path, out: Path) -> None:
    """Rename the finished ``tmp`` folder to ``out``; a previous ``out`` is removed only after the swap."""
    old = None
    if out.is_dir():
        if any(out.iterdir()):
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(out, old)
        else:
            out.rmdir()
    os.rename(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
