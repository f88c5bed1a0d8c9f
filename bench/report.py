"""What a run produces: sections of figures (each beside its baseline, as a ratio, against its
bar), printed as a rich table and written as JSON. No measuring here.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import msgspec
from rich.console import Console
from rich.table import Table

from bench.environment import Machine, Postgres


class Row(msgspec.Struct, kw_only=True):
    figure: str
    value: float | None
    unit: str = ""
    baseline: float | None = None
    baseline_label: str | None = None
    ratio: float | None = None
    bar: str | None = None
    passed: bool | None = None


class Section(msgspec.Struct, kw_only=True):
    name: str
    title: str
    rows: list[Row] = []
    notes: list[str] = []
    details: dict[str, Any] = {}
    error: str | None = None
    seconds: float = 0.0


class Report(msgspec.Struct, kw_only=True):
    started_at: str
    seconds: float
    quick: bool
    client: str
    code: str
    machine: Machine
    postgres: Postgres
    sections: list[Section]
    notes: list[str] = []


def fmt(value: float | None, unit: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if unit == "ms":
        return f"{value:,.1f} ms"
    if unit == "s":
        return f"{value:,.2f} s"
    if unit == "x":
        return f"{value:.2f}x"
    if unit == "":
        return f"{value:,.0f}"
    return f"{value:,.0f} {unit}"


def _verdict(passed: bool | None) -> str:
    return {True: "[green]pass[/]", False: "[bold red]MISS[/]", None: ""}[passed]


def table(report: Report) -> Table:
    t = Table(title="slotlog benchmarks", show_lines=False, header_style="bold")
    for col, justify in (
        ("scenario", "left"),
        ("figure", "left"),
        ("slotlog", "right"),
        ("baseline", "right"),
        ("ratio", "right"),
        ("bar", "left"),
        ("", "left"),
    ):
        t.add_column(col, justify=justify)  # type: ignore[arg-type]
    for section in report.sections:
        first = True
        if section.error is not None:
            t.add_row(section.title, "[red]not measured[/]", section.error[:80], "", "", "", "")
            t.add_section()
            continue
        for row in section.rows:
            baseline = fmt(row.baseline, row.unit)
            if row.baseline_label and row.baseline is not None:
                baseline = f"{baseline} ({row.baseline_label})"
            t.add_row(
                section.title if first else "",
                row.figure,
                fmt(row.value, row.unit),
                baseline if row.baseline is not None else "",
                f"{row.ratio:.2f}x" if row.ratio is not None else "",
                row.bar or "",
                _verdict(row.passed),
            )
            first = False
        t.add_section()
    return t


def header(report: Report) -> str:
    m, pg = report.machine, report.postgres
    settings = ", ".join(f"{k}={v}" for k, v in pg.settings.items())
    return (
        f"machine: {m.cpus} CPUs, {m.memory_gib} GiB, load average {m.load_average} at start, "
        f"Python {m.python}, {m.platform}\n"
        f"PostgreSQL {pg.version} ({pg.source}), database {pg.database}: {settings}\n"
        f"code: {report.code}\n"
        f"load generator: separate process, client '{report.client}'"
        + (" (--quick: small counts, a smoke test, not a measurement)" if report.quick else "")
        + f"\nThe load generator, the server processes and PostgreSQL share these {m.cpus} "
        "cores (and other users of the machine may too): figures are noisy, read the ratios."
    )


def render(report: Report, console: Console) -> None:
    console.print(header(report))
    console.print(table(report))
    for section in report.sections:
        for note in section.notes:
            console.print(f"[dim]{section.name}:[/] {note}")
    for note in report.notes:
        console.print(note)


def write(report: Report, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(msgspec.json.format(msgspec.json.encode(report), indent=2) + b"\n")
