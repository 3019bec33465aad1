"""What a user sees while a run trains: one line per epoch and, on a terminal, a progress bar.

In-process runs print directly. Under Ray Train, rank 0 appends the same events to
``<output_dir>/progress.jsonl`` and the driver follows that file (the run folder is shared by all
nodes anyway), so the lines reach the user without Ray's per-worker prefixes; each worker's own
output (DeepSpeed, torch and Ray chatter) goes to ``<output_dir>/logs/rank<r>.log``.
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

PROGRESS_FILE = "progress.jsonl"


def real_stdout():
    """The process's real stdout (Ray Train patches print() into its logger)."""
    return sys.__stdout__ or sys.stdout


def redirect_output_to(log_file: Path) -> None:
    """Send this process's stdout and stderr (file descriptors 1 and 2) to ``log_file``."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        if stream is not None:
            stream.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


class Console:
    """Rank 0's progress output: direct (in-process) or through the progress file (Ray Train)."""

    def __init__(self, output_dir: Path, through_file: bool):
        self.path = output_dir / PROGRESS_FILE if through_file else None
        self.bar = None
        self._last_batch_event = 0.0

    def _append(self, event: dict) -> None:
        with open(self.path, "a") as fh:
            fh.write(json.dumps(event) + "\n")

    def batch(self, epoch: int, done: int, total: int) -> None:
        if self.path is not None:
            now = time.monotonic()
            if now - self._last_batch_event >= 1.0 or done == total:
                self._last_batch_event = now
                self._append({"epoch": epoch, "done": done, "total": total})
            return
        self.bar = _update_bar(self.bar, epoch, done, total)

    def line(self, text: str) -> None:
        if self.path is not None:
            self._append({"line": text})
            return
        self.bar = _close_bar(self.bar)
        stream = real_stdout()
        stream.write(text + "\n")
        stream.flush()

    def close(self) -> None:
        self.bar = _close_bar(self.bar)


def _update_bar(bar, epoch: int, done: int, total: int):
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    if bar is None or bar.total != total or getattr(bar, "epoch", None) != epoch:
        _close_bar(bar)
        bar = tqdm(total=total, unit="batch", leave=False, desc=f"epoch {epoch}")
        bar.epoch = epoch
    bar.update(done - bar.n)
    return bar


def _close_bar(bar):
    if bar is not None:
        bar.close()
    return None


class ProgressFollower(threading.Thread):
    """Driver side: print the epoch lines (and draw the bar) that rank 0 appends to the progress file."""

    def __init__(self, output_dir: Path, poll_s: float = 0.5):
        super().__init__(daemon=True)
        self.path = output_dir / PROGRESS_FILE
        self.poll_s = poll_s
        self.stopped = threading.Event()
        self.bar = None
        self._offset = 0

    def _drain(self) -> None:
        if not self.path.is_file():
            return
        with open(self.path) as fh:
            fh.seek(self._offset)
            while True:
                line = fh.readline()
                if not line.endswith("\n"):
                    break
                self._offset = fh.tell()
                event = json.loads(line)
                if "line" in event:
                    self.bar = _close_bar(self.bar)
                    stream = real_stdout()
                    stream.write(event["line"] + "\n")
                    stream.flush()
                else:
                    self.bar = _update_bar(self.bar, event["epoch"], event["done"], event["total"])

    def run(self) -> None:
        while not self.stopped.wait(self.poll_s):
            self._drain()

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=5)
        self._drain()
        self.bar = _close_bar(self.bar)
