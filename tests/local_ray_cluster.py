"""A real local Ray cluster for tests: `ray start --head` on loopback with its own temp dir, ports and auth token,
the machine-wide Ray lock, the jobs CLI helpers, and a stop that kills exactly that cluster's processes."""
from __future__ import annotations

import contextlib
import fcntl
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------

LOCK_PATH = os.environ.get("PPL_RAY_LOCK", "/tmp/ppl-ray.lock")
LOCK_WAIT_S = 600


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _inherits_lock(path: str) -> bool:
    """True when this process was started under `flock PATH ...` (the lock is already ours)."""
    target = os.path.realpath(path)
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{fd}") == target:
                return True
    return False


@contextlib.contextmanager
def ray_machine_lock():
    """Hold the machine-wide Ray lock (the `flock /tmp/ppl-ray.lock` convention) for a cluster's lifetime."""
    if _inherits_lock(LOCK_PATH):
        yield
        return
    fd = os.open(LOCK_PATH, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.skip(f"another Ray instance held {LOCK_PATH} for {LOCK_WAIT_S} s")
                time.sleep(1)
        yield
    finally:
        os.close(fd)               # releases the lock


def _processes() -> dict[int, tuple[int, str]]:
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            out[int(entry)] = (ppid, cmdline)
    return out


def _ours(cmd: str, temp_dir: str, client_port: int) -> bool:
    return temp_dir in cmd or ("ray.util.client.server" in cmd and f"--port={client_port} " in cmd)


def stop_cluster(temp_dir: str, client_port: int, timeout: float = 15.0) -> None:
    """Stop exactly the cluster started with --temp-dir=temp_dir: its daemons (their command lines name
    the temp dir; the Ray Client server names its port) and everything they spawned (workers, job
    drivers), by pid. `ray stop` would also kill any other Ray instance on the machine."""
    procs = _processes()
    tree = {pid for pid, (_, cmd) in procs.items() if _ours(cmd, temp_dir, client_port) and pid != os.getpid()}
    grew = True
    while grew:
        children = {pid for pid, (ppid, _) in procs.items() if ppid in tree} - tree
        tree |= children
        grew = bool(children)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in tree:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() and
                                                  "zombie" not in _state(pid) for pid in tree):
            time.sleep(0.2)


def _state(pid: int) -> str:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("State:"):
                return line
    return "zombie"


@contextlib.contextmanager
def local_cluster():
    """`ray start --head` on loopback with its own short temp dir and ports; yields (dashboard URL, env)."""
    venv_bin = Path(sys.executable).parent
    temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")          # AF_UNIX socket paths must stay short
    gcs_port, dashboard_port, client_port, agent_port = _free_port(), _free_port(), _free_port(), _free_port()
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env.update({
        # token auth on both sides with a token of this cluster's own, passed in the environment: nothing is
        # read from or written to ~/.ray (a fresh HOME has no auth_token; a used one must not matter)
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(16),
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",                    # every component on 127.0.0.1
        "PATH": f"{venv_bin}{os.pathsep}{env.get('PATH', '')}",    # `python` of the job = this venv
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
        "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions")),
    })
    start = [str(venv_bin / "ray"), "start", "--head", "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
             f"--port={gcs_port}", f"--dashboard-port={dashboard_port}", f"--ray-client-server-port={client_port}",
             f"--dashboard-agent-listen-port={agent_port}",   # the default 52365 clashes with any other Ray here
             "--num-cpus=2", "--num-gpus=0", f"--temp-dir={temp_dir}", "--disable-usage-stats"]
    with ray_machine_lock():
        try:
            proc = subprocess.run(start, env=env, capture_output=True, text=True, timeout=120)
            assert proc.returncode == 0, proc.stdout + proc.stderr
            assert "Local node IP: 127.0.0.1" in re.sub(r"\x1b\[[0-9;]*m", "", proc.stdout + proc.stderr)
            address = f"http://127.0.0.1:{dashboard_port}"
            _wait_for_job_agent(str(venv_bin / "ray"), address, env)
            yield address, env
        finally:
            stop_cluster(temp_dir, client_port)
            shutil.rmtree(temp_dir, ignore_errors=True)


def _wait_for_job_agent(ray: str, address: str, env: dict, timeout: float = 90) -> None:
    """`ray start` returns before the head's job agent registers ("No available agent to submit job")."""
    deadline = time.monotonic() + timeout
    while True:
        proc = subprocess.run([ray, "job", "list", "--address", address], env=env, capture_output=True, text=True,
                              timeout=60)
        if proc.returncode == 0 or time.monotonic() > deadline:
            return
        time.sleep(2)


def _job_status(ray: str, address: str, job_id: str, env: dict) -> str:
    """`ray job status` as one word: PENDING, RUNNING, SUCCEEDED, FAILED or STOPPED."""
    proc = subprocess.run([ray, "job", "status", job_id, "--address", address], env=env,
                          capture_output=True, text=True, timeout=60)
    text = proc.stdout + proc.stderr
    done = re.search(rf"Job '{re.escape(job_id)}' (succeeded|failed|stopped)", text)
    running = re.search(r"Status for job '[^']+': (\w+)", text)
    return done.group(1).upper() if done else running.group(1) if running else text


def _wait_for_job(ray: str, address: str, job_id: str, env: dict, timeout: float = 300) -> str:
    deadline = time.monotonic() + timeout
    while True:
        status = _job_status(ray, address, job_id, env)
        if status in ("SUCCEEDED", "FAILED", "STOPPED") or time.monotonic() > deadline:
            return status
        time.sleep(2)
