"""`slotlog serve` with no DATABASE_URL: embedded PostgreSQL, health, clean stop, data reused."""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path

import httpx
import pytest

from tests import processes
from tests.processes import serve


def postgres_processes_using(directory: Path) -> list[int]:
    """PIDs of running postgres processes whose command line names `directory`."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "postgres" in cmdline and str(directory) in cmdline:
            found.append(int(proc.name))
    return found


def wait_until_gone(directory: Path, timeout: float = 15) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := postgres_processes_using(directory)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_embedded_serve_answers_stops_cleanly_and_reuses_its_data(
    tmp_path: Path, sig: signal.Signals
) -> None:
    data = tmp_path / "data"
    env = {"SLOTLOG_DATA_DIR": str(data), "DATABASE_URL": ""}  # the child's only
    with serve(env) as (base, proc):
        assert httpx.get(f"{base}/healthz").json() == {"status": "ok"}
        ready = httpx.get(f"{base}/readyz")
        assert ready.status_code == 200
        assert ready.headers["x-request-id"]
        assert postgres_processes_using(data), "the embedded server should be running"
        proc.send_signal(sig)
        assert proc.wait(30) == 0
    assert wait_until_gone(data) == [], "a postgres process was left behind"
    first_pg_version = (data / "PG_VERSION").read_text()

    with serve(env) as (base, proc):
        assert httpx.get(f"{base}/healthz").status_code == 200
        assert (data / "PG_VERSION").read_text() == first_pg_version
    assert wait_until_gone(data) == []


@pytest.mark.slow
def test_a_port_taken_before_the_server_binds_it_is_given_up_for_another(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # free_port() lets its port go before the server binds it: another process may take it.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy, free = taken.getsockname()[1], processes.free_port()
        ports = iter([busy, free])
        monkeypatch.setattr(processes, "free_port", lambda: next(ports))
        with processes.serve({"DATABASE_URL": database_url}) as (base, _):
            assert base == f"http://127.0.0.1:{free}"
            assert httpx.get(f"{base}/healthz").status_code == 200
