"""What pytest-dbsnap costs a run that never uses it: `pytest --co` on one trivial test, in a project without
[tool.dbsnap], with the plugin (installed, as the pytest11 entry point loads it) and with `-p no:dbsnap`.

The two commands run in turn (A B A B ...), so a drift of the machine's speed moves both; the ratio is taken pair by
pair and its median printed. pytest-html, pytest-order and every other installed plugin load in both runs, so the
difference is this plugin's alone. Goal (issue 26): at most 1.10x.

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


def measure(reps: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="dbsnap-startup-") as folder:
        project = Path(folder)
        (project / "pyproject.toml").write_text('[project]\nname = "plain"\nversion = "0"\n')
        (project / "test_plain.py").write_text("def test_plain():\n    assert 1 + 1 == 2\n")
        base = [sys.executable, "-m", "pytest", "--co", "-q", "-p", "no:cacheprovider"]
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
    figures = measure(args.reps)
    print("| run | with pytest-dbsnap | with `-p no:dbsnap` | ratio (median of pairs, min-max) |")
    print("|---|---|---|---|")
    print(
        f"| `pytest --co`, one trivial test, no [tool.dbsnap] | {figures['with']:.3f} s | {figures['without']:.3f} s "
        f"| {figures['ratio']:.2f}x ({figures['ratio_min']:.2f}-{figures['ratio_max']:.2f}) |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
