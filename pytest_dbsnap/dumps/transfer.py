"""What a dump transfer shows while it runs: a percentage on a terminal, the shared progress meter otherwise,
and what a finished transfer reports."""

from __future__ import annotations

import os
import sys
import threading
from dataclasses import dataclass

from pytest_dbsnap.core import progress
from pytest_dbsnap.dumps.meta import DumpMeta


def interactive() -> bool:
    """Progress is for people at a terminal; CI logs and captured output stay quiet."""
    return sys.stderr.isatty() and not os.environ.get("CI")


@dataclass(frozen=True)
class Transfer:
    """What a push or pull did: `moved` is False when the other side already had the same dump."""

    meta: DumpMeta
    moved: bool
    seconds: float
    snapshots: tuple[str, ...] = ()  # cluster snapshots of the dump that moved with it (archive names)


class Percent:
    """Whole percents on one stderr line; s3transfer calls this from several threads at once."""

    def __init__(self, label: str, total: int) -> None:
        self.label = label
        self.total = total
        self.done = 0
        self.shown = -1
        self.lock = threading.Lock()

    def __call__(self, amount: int) -> None:
        with self.lock:
            self.done += amount
            percent = min(100, self.done * 100 // self.total) if self.total else 100
            if percent != self.shown:
                self.shown = percent
                end = "\n" if percent == 100 else ""
                print(f"\rdbsnap: {self.label}: {percent:3d}%", end=end, file=sys.stderr, flush=True)


class Meter:
    """Bytes moved, as the bar of the step in progress; s3transfer calls this from several threads at once."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self.count = progress.meter()
        self.lock = threading.Lock()

    def __call__(self, amount: int) -> None:
        with self.lock:
            self.done += amount
            self.count(self.done, self.total)
