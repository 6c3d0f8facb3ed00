"""Smoke phases: modules marked `smoke`, ordered, where a failed phase skips the later ones with a reason
instead of letting them fail in a cascade of errors that hide the first cause."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

from pytest_dbsnap.core.progress import Step

_MODULE = re.compile(r"^test_(?P<order>\d+)_(?P<name>\w+)$")


@dataclass
class Phase:
    order: int
    name: str
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    seconds: float = 0.0
    first_failure: str | None = None
    skip_reasons: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        if self.failed:
            return "failed"
        if self.passed:
            return "passed"
        return "skipped" if self.skipped else "not run"


def phase_of(item: pytest.Item) -> tuple[int, str] | None:
    """(order, name) of a smoke item: `@pytest.mark.smoke(phase=...)` or the module name test_<NN>_<name>.py."""
    marker = item.get_closest_marker("smoke")
    if marker is None:
        return None
    module = getattr(item, "module", None)
    stem = module.__name__.rsplit(".", 1)[-1] if module is not None else item.name
    match = _MODULE.match(stem)
    order_marker = item.get_closest_marker("order")
    order = int(match["order"]) if match else 0
    if order_marker is not None and order_marker.args and isinstance(order_marker.args[0], int):
        order = order_marker.args[0]
    name = str(marker.kwargs.get("phase") or (match["name"] if match else stem))
    return order, name


class PhaseBook:
    """What each phase did so far; consulted before every smoke test runs."""

    def __init__(self) -> None:
        self.phases: dict[str, Phase] = {}

    def phase(self, item: pytest.Item) -> Phase | None:
        found = phase_of(item)
        if found is None:
            return None
        order, name = found
        return self.phases.setdefault(name, Phase(order, name))

    def earlier_failure(self, item: pytest.Item) -> Phase | None:
        mine = self.phase(item)
        if mine is None:
            return None
        failed = [p for p in self.phases.values() if p.failed and p.order < mine.order]
        return min(failed, key=lambda p: p.order) if failed else None

    def record(self, item: pytest.Item, report: pytest.TestReport) -> None:
        phase = self.phase(item)
        if phase is None:
            return
        phase.seconds += report.duration
        if report.when == "call" or (report.when == "setup" and not report.passed):
            if report.failed:
                phase.failed += 1
                phase.first_failure = phase.first_failure or item.nodeid
            elif report.skipped:
                phase.skipped += 1
                if isinstance(report.longrepr, tuple):
                    phase.skip_reasons.append(str(report.longrepr[2]))
            else:
                phase.passed += 1
        elif report.when == "teardown" and report.failed:
            phase.failed += 1
            phase.first_failure = phase.first_failure or item.nodeid

    def ordered(self) -> list[Phase]:
        return sorted(self.phases.values(), key=lambda p: (p.order, p.name))

    def table(self, steps: Sequence[Step] = ()) -> list[str]:
        """The phases with their counts and durations; under each, the slow steps its set-up ran (starting the
        server, each part of the database step, a service start) with theirs: where the phase's time went."""
        lines = [f"{'phase':<14} {'status':<8} {'passed':>6} {'failed':>6} {'skipped':>7} {'seconds':>8}"]
        for p in self.ordered():
            lines.append(
                f"{p.order:>2} {p.name:<11} {p.status:<8} {p.passed:>6} {p.failed:>6} {p.skipped:>7} {p.seconds:>8.2f}"
            )
            for step in steps:
                if step.phase == p.name:
                    text = f"{'       ' if step.within else '     '}{step.label}{' (failed)' if step.failed else ''}"
                    lines.append(f"{text[:45]:<45} {step.seconds:>8.2f}")
        return lines


PHASES_KEY = pytest.StashKey[PhaseBook]()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Fail-fast: a test of a phase after a failed one is skipped, naming the phase and test that failed."""
    book = item.config.stash[PHASES_KEY]
    failed = book.earlier_failure(item)
    if failed is not None:
        pytest.skip(f"the {failed.name} phase failed ({failed.first_failure}), so this later phase was not run")
