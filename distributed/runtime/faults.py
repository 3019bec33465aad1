"""Fault injection for tests (never a config key): kill one worker process once, at a given global step."""
from __future__ import annotations

import os
from pathlib import Path


def maybe_inject_failure(loop_config: dict, rank: int, global_step: int) -> None:
    """``loop_config["fail_once"] = {"rank": r, "step": s, "marker": path}``: rank r exits at step s, once."""
    fault = loop_config.get("fail_once")
    if not fault or rank != fault["rank"] or global_step != fault["step"]:
        return
    marker = Path(fault["marker"])
    if marker.exists():
        return
    marker.write_text(f"killed rank {rank} at step {global_step}\n")
    os._exit(1)
