"""Run the real `slotlog` command line (`python -m service ...`) against a test database."""

from __future__ import annotations

import os
import subprocess
import sys


def slotlog(
    database_url: str, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run `slotlog ARGS` with DATABASE_URL set; returns the finished process (never raises on a
    non-zero exit: tests assert on it)."""
    env = {**os.environ, "DATABASE_URL": database_url, "SLOTLOG_LOG_LEVEL": "warning"}
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
