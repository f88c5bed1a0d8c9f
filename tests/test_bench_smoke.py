"""The benchmark suite runs: `python -m bench --quick --only store` against the test session's
PostgreSQL server (in a database of its own, dropped afterwards) exits 0 and writes a report
with the baseline and the scenario measured. No timing is asserted: figures are the bench's job.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_quick_store_benchmark_exits_0_and_writes_a_json_report(
    server_url: str, tmp_path: Path
) -> None:
    output = tmp_path / "latest.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", "store", "--output", str(output)],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": server_url},
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout.decode()[-3000:] + done.stderr.decode()[-3000:]
    report: dict[str, Any] = msgspec.json.decode(output.read_bytes())
    sections = {s["name"]: s for s in report["sections"]}
    assert list(sections) == ["insert", "store"]
    assert all(s["error"] is None for s in sections.values())
    appends = sections["store"]["rows"][0]
    assert appends["value"] > 0 and appends["baseline"] > 0 and appends["ratio"] > 0
    assert report["postgres"]["settings"]["fsync"] in ("on", "off")
