"""Server processes under measurement (`slotlog serve`, the bare app) and the CPU time that
process trees use, read from /proc so a saturated process shows in the report. No slotlog
imports: servers are driven only through their command lines and HTTP.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import httpx

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
# bench/ is not an installed package: child processes find it from the repository root.
ROOT = Path(__file__).resolve().parent.parent


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, **(extra or {})}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True, slots=True)
class Server:
    base_url: str
    process: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.process.pid


def _wait_healthy(base_url: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{base_url} did not become healthy in {timeout}s")


def _stop(proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def running(
    args: Sequence[str], env: Mapping[str, str], *, port: int, timeout: float = 60
) -> Iterator[Server]:
    """Run `python <args>` with `env` added; yield it once /healthz answers; SIGTERM it after."""
    full_env = child_env({"SLOTLOG_LOG_LEVEL": "warning", **env})
    with tempfile.TemporaryFile() as output:
        proc = subprocess.Popen(
            [sys.executable, *args],
            env=full_env,
            cwd=ROOT,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            try:
                _wait_healthy(base, proc, timeout)
            except (RuntimeError, TimeoutError):
                output.seek(0)
                sys.stderr.write(output.read().decode(errors="replace")[-5000:])
                raise
            yield Server(base, proc)
        finally:
            _stop(proc)


@contextmanager
def slotlog(database_url: str, *, workers: int, secret: str, public: str) -> Iterator[Server]:
    """`python -m service serve` on a free port with a bootstrap tenant holding these keys."""
    port = free_port()
    env = {
        "DATABASE_URL": database_url,
        "SLOTLOG_BOOTSTRAP_SECRET_KEY": secret,
        "SLOTLOG_BOOTSTRAP_PUBLIC_KEY": public,
    }
    args = ["-m", "service", "serve", "--port", str(port), "--workers", str(workers)]
    with running(args, env, port=port) as server:
        yield server


@contextmanager
def bare_app(database_url: str) -> Iterator[Server]:
    port = free_port()
    args = ["-m", "bench.bare_app", "--port", str(port)]
    with running(args, {"DATABASE_URL": database_url}, port=port) as server:
        yield server


# ── CPU accounting ───────────────────────────────────────────────────────────


class _Usage(NamedTuple):
    ppid: int
    cpu: float  # seconds on a CPU
    waiting: float  # seconds runnable but waiting for a CPU (0 when unknown)


def _stat(pid: int) -> _Usage | None:
    """The process's CPU use so far, or None if it is gone.

    On-CPU time comes from /proc/PID/schedstat (nanoseconds: a backend serving a short run uses a
    few ms, which /proc/PID/stat's 10-ms ticks would round away), plus the ticks of reaped
    children (cutime, cstime), which keeps the CPU of a PostgreSQL backend that exited during a
    measurement (the postmaster reaps it). schedstat's second field is the time spent runnable
    but waiting for a CPU: the measure of how much the machine's other work got in the way."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    reaped = (int(fields[13]) + int(fields[14])) / _TICKS
    try:
        run_ns, wait_ns, _ = Path(f"/proc/{pid}/schedstat").read_text().split()
        return _Usage(int(fields[1]), int(run_ns) / 1e9 + reaped, int(wait_ns) / 1e9)
    except (OSError, ValueError):
        own = (int(fields[11]) + int(fields[12])) / _TICKS
        return _Usage(int(fields[1]), own + reaped, 0.0)


def tree_usage(root: int) -> tuple[float, float]:
    """(CPU seconds, seconds waiting for a CPU) of `root` and every live descendant so far."""
    if not Path("/proc").is_dir():
        return 0.0, 0.0
    stats: dict[int, _Usage] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and (st := _stat(int(entry.name))) is not None:
            stats[int(entry.name)] = st
    children: dict[int, list[int]] = {}
    for pid, st in stats.items():
        children.setdefault(st.ppid, []).append(pid)
    cpu = waiting = 0.0
    todo = [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            cpu += stats[pid].cpu
            waiting += stats[pid].waiting
        todo += children.get(pid, [])
    return cpu, waiting


def tree_cpu(root: int) -> float:
    """CPU seconds used so far by `root` and every live descendant (0 off Linux)."""
    return tree_usage(root)[0]


def parent_of(pid: int) -> int | None:
    st = _stat(pid)
    return st.ppid if st else None


class CpuMeter:
    """CPU seconds of named process trees between start() and stop(), and the seconds they spent
    runnable but waiting for a CPU, as shares of one core."""

    def __init__(self, roots: Mapping[str, int | None]) -> None:
        self.roots = {k: v for k, v in roots.items() if v is not None}
        self.before: dict[str, tuple[float, float]] = {}
        self.t0 = 0.0
        self.used: dict[str, float] = {}
        self.waited: dict[str, float] = {}
        self.wall = 0.0

    def start(self) -> None:
        self.before = {k: tree_usage(v) for k, v in self.roots.items()}
        self.t0 = time.perf_counter()

    def stop(self, wall: float | None = None) -> dict[str, float]:
        self.wall = wall if wall is not None else time.perf_counter() - self.t0
        after = {k: tree_usage(v) for k, v in self.roots.items()}
        self.used = {k: after[k][0] - self.before[k][0] for k in self.roots}
        self.waited = {k: after[k][1] - self.before[k][1] for k in self.roots}
        return self.shares()

    def per(self, n: int) -> dict[str, float]:
        """Milliseconds of CPU per unit of work (request, event) for each tree."""
        return {k: round(v * 1e3 / n, 3) for k, v in self.used.items()} if n else {}

    def shares(self) -> dict[str, float]:
        """CPU used per tree as a fraction of one core over the wall time (2.0 = both cores)."""
        return {k: round(v / self.wall, 2) if self.wall else 0.0 for k, v in self.used.items()}

    def describe(self) -> str:
        """'server 0.51 (waited 0.20), postgres 1.00 (waited 0.31)': cores used, and cores'
        worth of time spent waiting for a CPU, over the measured time."""
        if not self.wall:
            return ""
        return ", ".join(
            f"{k} {self.used[k] / self.wall:.2f} (waited {self.waited[k] / self.wall:.2f})"
            for k in self.used
        )
