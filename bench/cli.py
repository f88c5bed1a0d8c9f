"""`python -m bench [--quick] [--only NAME[,NAME]] [--client raw|httpx] [--output PATH]`: run the
benchmark suite on a fresh database, print the table, write the JSON (bench/results/latest.json).

Order: the baselines the chosen scenarios need, then the scenarios in SPEC §6 order. A scenario
that fails is reported as not measured (and the exit status is 1); missed bars are reported, not
treated as failures: a benchmark measures, the table judges.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console

from bench import (
    baselines,
    environment,
    scenario_history,
    scenario_http,
    scenario_replay,
    scenario_store,
)
from bench.context import FULL, QUICK, Bench
from bench.processes import ROOT
from bench.report import Report, Section, render, write

Scenario = Callable[[Bench], Awaitable[Section]]

# name: (baselines it is compared with, the scenario)
SCENARIOS: dict[str, tuple[tuple[str, ...], Scenario]] = {
    "store": (("insert",), scenario_store.run),
    "holds": (("endpoint",), scenario_http.holds),
    "one-slot": ((), scenario_http.one_slot),
    "seats": ((), scenario_http.seats),
    "history": ((), scenario_history.history),
    "availability": (("endpoint",), scenario_history.availability),
    "replay": ((), scenario_replay.run),
}
BASELINES = ("insert", "endpoint")
DEFAULT_OUTPUT = ROOT / "bench" / "results" / "latest.json"


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke test")
    parser.add_argument(
        "--only",
        help="comma-separated: " + ", ".join([*BASELINES, *SCENARIOS]),
    )
    parser.add_argument(
        "--client",
        choices=("raw", "httpx"),
        default="raw",
        help="the load generator's HTTP client (default raw)",
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    names = [n.strip() for n in (args.only or "").split(",") if n.strip()]
    unknown = [n for n in names if n not in SCENARIOS and n not in BASELINES]
    if unknown:
        parser.error(f"unknown scenario {', '.join(unknown)}")
    args.names = names or [*BASELINES, *SCENARIOS]
    return args


async def run(args: argparse.Namespace, console: Console) -> tuple[Report, bool]:
    started, wall = datetime.now(UTC), time.perf_counter()
    machine = environment.machine()
    chosen = [n for n in SCENARIOS if n in args.names]
    needed = [b for b in BASELINES if b in args.names or any(b in SCENARIOS[n][0] for n in chosen)]
    sections: list[Section] = []
    failed = False
    async with (
        environment.server() as (admin, source),
        environment.fresh_database(admin) as (url, database),
    ):
        postgres = await environment.describe(url, source, database)
        bench = Bench(
            url=url,
            postgres=postgres,
            scale=QUICK if args.quick else FULL,
            client=args.client,
            console=console,
            quick=args.quick,
        )
        for name in needed:
            section, ok = await _guarded(name, _baseline(name), bench, console)
            sections.append(section)
            failed |= not ok
        for name in chosen:
            section, ok = await _guarded(name, SCENARIOS[name][1], bench, console)
            sections.append(section)
            failed |= not ok
    report = Report(
        started_at=started.isoformat(),
        seconds=round(time.perf_counter() - wall, 1),
        quick=args.quick,
        client=args.client,
        code=code_version(),
        machine=machine,
        postgres=postgres,
        sections=sections,
        notes=[
            "every scenario starts on fresh planner statistics (ANALYZE before it and after "
            "each bulk seed), so its plans do not depend on when autovacuum last ran; a bulk "
            "seed is also vacuumed and checkpointed, so that rows seeded at once are at rest "
            "as a log's older rows are",
            f"run took {time.perf_counter() - wall:.0f} s",
        ],
    )
    return report, not failed


def code_version() -> str:
    """The commit measured, and whether tracked files differed from it (servers run the tree)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.split("\n")
    except OSError:
        return "unknown"
    changed = [line[3:] for line in dirty if line.strip()]
    return head + (f" + uncommitted changes to {', '.join(changed)}" if changed else "")


def _baseline(name: str) -> Scenario:
    async def measure(bench: Bench) -> Section:
        [section] = await baselines.ensure(bench, name)
        return section

    return measure


async def _guarded(
    name: str, scenario: Scenario, bench: Bench, console: Console
) -> tuple[Section, bool]:
    started = time.perf_counter()
    try:
        await bench.analyze()
        section = await scenario(bench)
    except Exception as exc:
        console.print(f"[red]{name} failed[/]")
        console.print(traceback.format_exc())
        return Section(name=name, title=name, error=f"{type(exc).__name__}: {exc}"), False
    section.seconds = round(time.perf_counter() - started, 1)
    return section, True


def main(argv: Sequence[str] | None = None) -> None:
    args = parse(argv)
    console = Console(width=None if sys.stdout.isatty() else 160)
    report, ok = asyncio.run(run(args, console))
    render(report, console)
    write(report, args.output)
    console.print(f"written to {args.output}")
    sys.exit(0 if ok else 1)
