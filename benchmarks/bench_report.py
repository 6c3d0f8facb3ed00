"""The benchmark's results: timed samples per row, medians, ratios against the baselines, targets, markdown."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


def progress(message: str) -> None:
    """A progress line on stderr with the time of day (the tables go to stdout)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def median(samples: list[float]) -> float:
    return statistics.median(samples) if samples else float("nan")


def seconds(value: float) -> str:
    """0.34 s as "340 ms", 2.5 as "2.50 s", nan as "-"."""
    if value != value:  # nan
        return "-"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def end_session(child: subprocess.Popen[bytes] | None) -> None:
    """Interrupt a pytest session started in its own process group as Ctrl-C would (its own teardown stops its
    cluster), then kill the group if it has not ended within a minute."""
    if child is None or child.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signal.SIGINT)
    try:
        child.wait(timeout=60)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        child.wait()


def default_out(prefix: str) -> Path:
    """benchmarks/out/<prefix>-<UTC time to the microsecond>-<pid>.md: two runs never write the same file."""
    return (
        Path(__file__).resolve().parent
        / "out"
        / f"{prefix}-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S%fZ}-{os.getpid()}.md"
    )


# Stable row keys: the quick test and RESULTS.md refer to them through their labels below.
SEED = "seed"
DUMP = "dump"
VERIFY = "verify"
PLAIN_1 = "pg_restore_j1"
PLAIN_N = "pg_restore_jn"
COLD = "cold"
CLONE = "clone"
SPARE = "spare"
FRESH = "fresh_db"
FLOOR = "cp_floor"
CLUSTER_COLD = "cluster_cold"
CLUSTER_PRISTINE = "cluster_pristine"
CLUSTER_PARKED = "cluster_parked"
SMOKE_COLD = "smoke_cold"
SMOKE_WARM = "smoke_warm"
RSS_SELF = "rss_self"
RSS_SMOKE = "rss_smoke"


def labels(cores: int) -> dict[str, str]:
    """What each row measures, as printed in the table."""
    return {
        SEED: "seeding through the app (`python -m refapp.seed`)",
        DUMP: "making the dump (`pg_dump -Fc` hashed while streaming, row counts, metadata, install)",
        VERIFY: "sha256 verification alone (`verify_file`)",
        PLAIN_1: "plain `pg_restore` into an empty database",
        PLAIN_N: f"plain `pg_restore -j{cores}` into an empty database",
        COLD: f"dbsnap cold restore (verify + `pg_restore -j{cores}` + row counts + template + swap)",
        CLONE: "dbsnap warm restore: template clone + swap",
        SPARE: "dbsnap warm restore: spare swap",
        FRESH: "`fresh_db` per test: clone the template, then drop the clone",
        FLOOR: "`cp -r` of the database folder (physical floor)",
        CLUSTER_COLD: "local cluster start, cold (initdb into a fresh cache)",
        CLUSTER_PRISTINE: "local cluster start, warm (pristine copy)",
        CLUSTER_PARKED: "local cluster start, warm (parked data folder)",
        SMOKE_COLD: "`pytest -m smoke --skip-frontend`, cold (no dump: generate, no parked cluster)",
        SMOKE_WARM: "`pytest -m smoke --skip-frontend`, warm (dump, template and parked cluster present)",
        RSS_SELF: "peak RSS of the benchmark process (library calls)",
        RSS_SMOKE: "peak RSS of the pytest smoke session (wait4)",
    }


@dataclass
class Row:
    """One line of the table: samples of one measurement at one scale (None: not tied to a scale)."""

    key: str
    scale: str | None
    samples: list[float] = field(default_factory=list)
    unit: str = "s"  # "s" or "MB"
    note: str = ""  # why it was skipped, or how a value was obtained
    estimated: float | None = None  # an extrapolated value instead of samples (seeding at the larger scales)
    target: str = ""
    met: bool | None = None

    @property
    def median(self) -> float | None:
        if self.samples:
            return statistics.median(self.samples)
        return self.estimated


@dataclass
class Report:
    cores: int
    machine: dict[str, str]
    datasets: list[str] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def row(self, key: str, scale: str | None = None) -> Row:
        for row in self.rows:
            if row.key == key and row.scale == scale:
                return row
        row = Row(key, scale)
        self.rows.append(row)
        return row

    def find(self, key: str, scale: str | None = None) -> Row | None:
        return next((row for row in self.rows if row.key == key and row.scale == scale), None)

    def median(self, key: str, scale: str | None = None) -> float | None:
        row = self.find(key, scale)
        return None if row is None else row.median

    def to_json(self) -> dict[str, Any]:
        return {
            "cores": self.cores,
            "machine": self.machine,
            "datasets": self.datasets,
            "notes": self.notes,
            "rows": [{**asdict(row), "median": row.median} for row in self.rows],
        }

    def markdown(self) -> str:
        names = labels(self.cores)
        plain = f"vs `pg_restore -j{self.cores}`"
        lines = [
            "## pytest-dbsnap benchmarks",
            "",
            *(f"- {key}: {value}" for key, value in self.machine.items()),
            "",
            "Datasets:",
            "",
            *(f"- {text}" for text in self.datasets),
            "",
            f"Times are medians of the repetitions (min-max beside them). The ratio columns say how many times "
            f"faster than the baseline a row is (baseline median / row median): {plain} is plain "
            f"`pg_restore -j{self.cores}` at the same scale, `vs seeding` the app's own seed at that scale "
            f"(measured at the smallest scale, extrapolated by row count above it, marked ≈).",
            "",
            f"| Scale | Measurement | Median | Min-max | Reps | {plain} | vs seeding | Target | Met |",
            "|---|---|---:|---:|---:|---:|---:|---|---|",
        ]
        for row in self.rows:
            lines.append(self._line(row, names[row.key]))
        if self.notes:
            lines += ["", "Notes:", "", *(f"- {note}" for note in self.notes)]
        return "\n".join(lines) + "\n"

    def _line(self, row: Row, label: str) -> str:
        scale = row.scale or "-"
        median = row.median
        if median is None:
            value, spread = f"skipped: {row.note}" if row.note else "-", "-"
        elif row.samples:
            value = _value(median, row.unit)
            spread = f"{_value(min(row.samples), row.unit)}-{_value(max(row.samples), row.unit)}"
        else:
            value, spread = f"≈ {_value(median, row.unit)} ({row.note})", "-"
        reps = str(len(row.samples)) if row.samples else "-"
        vs_plain = vs_seed = "-"
        if row.scale is not None and median is not None and row.unit == "s":
            vs_plain = _ratio(self.median(PLAIN_N, row.scale), median)
            seed = self.find(SEED, row.scale)
            if seed is not None and seed.median is not None:
                vs_seed = _ratio(seed.median, median)
                if not seed.samples and vs_seed != "-":
                    vs_seed = f"≈ {vs_seed}"
        met = "-" if row.met is None else ("yes" if row.met else "**no**")
        return f"| {scale} | {label} | {value} | {spread} | {reps} | {vs_plain} | {vs_seed} | {row.target} | {met} |"


def _value(value: float, unit: str) -> str:
    if unit == "MB":
        return f"{value:.0f} MB"
    if value < 0.1:
        return f"{value * 1000:.1f} ms"
    if value < 100:
        return f"{value:.2f} s"
    return f"{value:.0f} s"


def _ratio(baseline: float | None, value: float) -> str:
    if baseline is None or value <= 0:
        return "-"
    ratio = baseline / value
    if ratio >= 100:
        return f"{ratio:,.0f}x"
    if ratio >= 10:
        return f"{ratio:.1f}x"
    return f"{ratio:.2f}x"
