"""The benchmark suite runs: `python -m bench --quick --only store` (and `--only replay`) against
the test session's PostgreSQL server (in a database of its own, dropped afterwards) exits 0 and
writes a report with the baseline and the scenario measured. No timing is asserted: figures are
the bench's job.
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


def _quick(only: str, server_url: str, tmp_path: Path) -> dict[str, Any]:
    output = tmp_path / "latest.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", only, "--output", str(output)],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": server_url},
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout.decode()[-3000:] + done.stderr.decode()[-3000:]
    report: dict[str, Any] = msgspec.json.decode(output.read_bytes())
    return report


@pytest.mark.slow
def test_the_quick_store_benchmark_exits_0_and_writes_a_json_report(
    server_url: str, tmp_path: Path
) -> None:
    report = _quick("store", server_url, tmp_path)
    sections = {s["name"]: s for s in report["sections"]}
    assert list(sections) == ["insert", "store"]
    assert all(s["error"] is None for s in sections.values())
    appends = sections["store"]["rows"][0]
    assert appends["value"] > 0 and appends["baseline"] > 0 and appends["ratio"] > 0
    assert report["postgres"]["settings"]["fsync"] in ("on", "off")


@pytest.mark.slow
def test_the_quick_replay_benchmark_reports_the_cpu_of_the_replay_the_bare_read_and_copy_alone(
    server_url: str, tmp_path: Path
) -> None:
    report = _quick("replay", server_url, tmp_path)
    (section,) = (s for s in report["sections"] if s["name"] == "replay")
    assert section["error"] is None
    rows = {r["figure"]: r for r in section["rows"]}
    rate = rows["events/s into all read models"]
    assert rate["value"] > 0 and rate["baseline"] > 0 and rate["ratio"] > 0
    details = section["details"]
    # The rows the replay wrote, loaded again by COPY alone, with their time and CPU.
    copied = details["copy_alone"]["rows"]
    assert copied > 0 and details["copy_alone"]["seconds"] > 0
    assert rows[f"COPY of its {copied:,} rows alone"]["value"] == details["copy_alone"]["seconds"]
    for measured in ("replay", "bare_read", "copy_alone"):
        assert sum(details["cpu_seconds"][measured].values()) > 0, measured
    assert "the replay's index phase" in " ".join(section["notes"])
    # Three replays, each against the faster bare read around it; the median pair is shown.
    pairs = details["pairs"]
    assert len(pairs) == 3
    assert rate["ratio"] == pytest.approx(sorted(p["ratio"] for p in pairs)[1], abs=0.01)
    for p in pairs:
        assert p["ratio"] == pytest.approx(p["bare_seconds"] / p["replay_seconds"])
