"""What pytest-dbsnap costs a run that never uses it, with the plugin (installed, as the pytest11 entry point loads
it) and with `-p no:dbsnap`:
  unconfigured  `pytest --co -q` on one trivial test, in a project without [tool.dbsnap] (goal, issue 26: 1.10x)
  configured    `pytest` on one trivial unit test, in a project with [tool.dbsnap] and a docker-compose.dev.yml:
                its report header names the provider (asking whether a Docker engine answers) and the PostgreSQL
                programs, and nothing else of the database is loaded (issue 28: psycopg only on first use)

The two commands of a row run in turn (A B A B ...), so a drift of the machine's speed moves both; the ratio is
taken pair by pair and its median printed. pytest-html, pytest-order and every other installed plugin load in both
runs, so the difference is this plugin's alone.

    .venv/bin/python benchmarks/startup_bench.py --reps 15
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _time(argv: list[str], cwd: Path) -> float:
    began = time.perf_counter()
    subprocess.run(argv, cwd=cwd, check=True, capture_output=True, stdin=subprocess.DEVNULL)
    return time.perf_counter() - began


COMPOSE = """\
services:
  postgres:
    image: postgres:15
    environment:
      POSTGRES_PASSWORD: postgres
"""


def measure(reps: int, *, configured: bool) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="dbsnap-startup-") as folder:
        project = Path(folder)
        pyproject = '[project]\nname = "plain"\nversion = "0"\n'
        if configured:
            pyproject += '\n[tool.dbsnap]\ndatabase = "app"\n'
            (project / "docker-compose.dev.yml").write_text(COMPOSE)
        (project / "pyproject.toml").write_text(pyproject)
        (project / "test_plain.py").write_text("def test_plain():\n    assert 1 + 1 == 2\n")
        base = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider"]
        base += [] if configured else ["--co", "-q"]
        with_plugin, without, ratios = [], [], []
        for run in range(reps + 1):
            a = _time(base, project)
            b = _time([*base, "-p", "no:dbsnap"], project)
            if run == 0:
                continue  # the first pair warms the file cache
            with_plugin.append(a)
            without.append(b)
            ratios.append(a / b)
    return {
        "with": statistics.median(with_plugin),
        "without": statistics.median(without),
        "ratio": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=15, help="pairs of runs (default 15)")
    args = parser.parse_args()
    print("| run | with pytest-dbsnap | with `-p no:dbsnap` | ratio (median of pairs, min-max) |")
    print("|---|---|---|---|")
    for configured, label in (
        (False, "`pytest --co`, one trivial test, no [tool.dbsnap]"),
        (True, "`pytest`, one trivial unit test, [tool.dbsnap] and a compose file (header shown)"),
    ):
        figures = measure(args.reps, configured=configured)
        print(
            f"| {label} | {figures['with']:.3f} s | {figures['without']:.3f} s "
            f"| {figures['ratio']:.2f}x ({figures['ratio_min']:.2f}-{figures['ratio_max']:.2f}) |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
