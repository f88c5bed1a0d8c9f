"""Real server processes for end-to-end tests: `python -m service serve` under uvicorn."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import IO

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_healthy(base_url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
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


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 20) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            kill_group(proc)


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the server and all its worker processes at once (a crash)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


#: uvicorn's words when another process took the port between free_port() and its bind.
_PORT_TAKEN = "address already in use"


@contextmanager
def serve(
    env: Mapping[str, str], *, workers: int = 1, port: int | None = None
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Run `slotlog serve` with `env` added to this environment; yield (base URL, process).
    Without a `port`, a free one; if another process takes it before the server binds it (the
    port is free again once free_port() returns), the server starts again on another."""
    for attempt in range(3):
        chosen = port or free_port()
        proc, output = _start(env, workers, chosen)
        base = f"http://127.0.0.1:{chosen}"
        try:
            try:
                wait_healthy(base, proc)
            except (RuntimeError, TimeoutError):
                output.seek(0)
                said = output.read().decode(errors="replace")
                if port is None and attempt < 2 and _PORT_TAKEN in said.lower():
                    continue
                sys.stderr.write(said[-5000:])
                raise
            yield base, proc
            return
        finally:
            stop(proc)
            output.close()


def _start(
    env: Mapping[str, str], workers: int, port: int
) -> tuple[subprocess.Popen[bytes], IO[bytes]]:
    full_env = {**os.environ, "SLOTLOG_LOG_LEVEL": "warning", **env}
    output = tempfile.TemporaryFile()  # noqa: SIM115 - outlives this frame, closed by serve
    proc = subprocess.Popen(
        [sys.executable, "-m", "service", "serve", "--port", str(port), "--workers", str(workers)],
        env=full_env,
        stdout=output,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return proc, output
