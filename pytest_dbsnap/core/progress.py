"""Progress of the slow steps (seeding, pg_restore, a service start): one live status line on a terminal, one
line per finished step with its duration in CI, and the list of steps with durations for the reports.

Where a total is known the live line has a bar (bytes hashed or moved, pg_restore's table-of-contents entries),
moved through `meter()` by whoever loops; a part of a step (a snapshot's unpack while the server starts) is a
`substep` with a duration of its own.

No pytest here: the plugin (report.py) and the CLI give a Reporter its streams. The live line is drawn
by hand with three ANSI sequences (save cursor, erase to the end of the line, restore cursor) after whatever the
current line holds, so pytest's own line and its column bookkeeping stay as they were; rich's Live display
wants to own the console and stdout, which pytest's capture and terminal writer already do.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol, TextIO

from pytest_dbsnap.core.redact import redact

REFRESH_SECONDS = 0.25
BAR_WIDTH = 20
_SAVE, _RESTORE, _ERASE = "\x1b7", "\x1b8", "\x1b[K"


@dataclass(frozen=True)
class Step:
    """One finished step, for the CI lines and the reports."""

    label: str
    seconds: float
    failed: bool = False
    phase: str | None = None  # the smoke phase whose set-up ran it (the phase table lists it under that phase)
    within: str | None = None  # the step it is part of (unpacking a snapshot while PostgreSQL starts)

    @property
    def duration(self) -> str:
        return f"{'failed after ' if self.failed else ''}{self.seconds:.1f} s"

    def line(self) -> str:
        name = f"{self.within} > {self.label}" if self.within else self.label
        return f"dbsnap: {name}: {self.duration}"


def interactive(stream: TextIO) -> bool:
    """A live line only for a person at a terminal: CI logs keep every carriage return as a new line."""
    try:
        return stream.isatty() and not os.environ.get("CI")
    except ValueError:  # a closed stream
        return False


def _oneline(text: str) -> str:
    return redact(" ".join(text.replace("\r", "\n").split()))


class Reporter:
    """Steps one after another: `step(label)` ends the step before it and starts the next; `end()` ends the last.

    `live` is where the status line is drawn (None: no live line); `finished` receives each finished step's
    line (None: not shown). `column` says where on its line the terminal's cursor is, so that the live line
    fits behind it; `width` is the terminal's width.
    """

    def __init__(
        self,
        *,
        live: TextIO | None = None,
        finished: Callable[[str], None] | None = None,
        width: Callable[[], int] = lambda: 80,
        column: Callable[[], int] = lambda: 0,
    ) -> None:
        self.live = live
        self.finished = finished
        self.width = width
        self.column = column
        self.steps: list[Step] = []
        self.serial = 0  # counts the steps begun, so that a program's output reaches only its own step
        self.phase: str | None = None  # the smoke phase being set up, recorded with each step (set by the plugin)
        self._lock = threading.RLock()
        self._label: str | None = None
        self._began = 0.0
        self._latest = ""
        self._fraction: float | None = None  # of the step's known total (bytes verified), for the bar
        self._count = ""  # "37/120 entries" where the total is a count of things rather than bytes
        self._announce = True
        self._parent: tuple[str, float, bool] | None = None  # the step a substep interrupts: label, began, announce
        self._first = 0
        self._drawn = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- the steps ----------------------------------------------------------------------------------------

    def step(self, label: str, *, announce: bool = True) -> None:
        """A new step begins (a progress callback: `prepare_database(..., progress=reporter.step)`).

        `announce=False`: no line when it ends (only the live line while it runs, and the reports), for a command
        that prints its own line per step (dbsnap verify's `ok` or `FAILED`).
        """
        self.end()
        self._first = len(self.steps)  # where it goes in the list: before its parts, which finish first
        self._begin(_oneline(label), time.monotonic(), announce)

    def _begin(self, label: str, began: float, announce: bool) -> None:
        with self._lock:
            self._label, self._began, self._latest, self._announce = label, began, "", announce
            self._fraction, self._count = None, ""
            self.serial += 1
        global _current
        _current = self
        if self.live is not None and self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._refresh, name="dbsnap-progress", daemon=True)
            self._thread.start()

    @contextlib.contextmanager
    def substep(self, label: str) -> Iterator[None]:
        """A part of the step in progress worth its own line and duration (unpacking a cluster snapshot while
        PostgreSQL starts); the step goes on when it ends, its own duration still counting the part."""
        with self._lock:
            parent = None if self._label is None or self._parent is not None else self._label
        if parent is None:  # no step in progress, or already in a part (parts do not nest): nothing to record
            yield
            return
        self._parent = (parent, self._began, self._announce)
        self._begin(_oneline(label), time.monotonic(), self._announce)
        failed = True
        try:
            yield
            failed = False
        finally:
            if self._parent is not None:  # else the whole step was ended meanwhile, and the part with it
                within, began, announce = self._parent
                self._parent = None
                self._finish(failed=failed, within=within)
                self._begin(within, began, announce)

    def output(self, line: str) -> None:
        """The latest output line of the program the step runs (shown redacted, cut to the width)."""
        text = _oneline(line)
        if text:
            with self._lock:
                self._latest = text

    def advance(self, done: int, total: int, unit: str | None = None) -> None:
        """How far the step is, where its total is known: the live line shows a bar, and with a `unit` the count
        itself ("37/120 entries" of pg_restore's table of contents) instead of the percentage (bytes)."""
        if total > 0:
            with self._lock:
                self._fraction = min(1.0, max(0.0, done / total))
                self._count = f"{min(done, total)}/{total} {unit}" if unit else ""

    def end(self, *, failed: bool = False) -> None:
        """The step in progress (if any) is finished: its line is erased and its duration recorded."""
        global _current
        if self._parent is not None:  # a substep ends with its step: both are recorded
            within = self._parent[0]
            self._finish(failed=failed, within=within)
            parent, self._parent = self._parent, None
            self._begin(*parent)
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        self._finish(failed=failed)
        if _current is self:
            _current = None

    def _finish(self, *, failed: bool, within: str | None = None) -> None:
        with self._lock:
            if self._label is None:
                return
            step = Step(self._label, time.monotonic() - self._began, failed, self.phase, within)
            announce = self._announce
            self._label = None
            self.serial += 1
            self.steps.insert(len(self.steps) if within else self._first, step)
            self._erase()
        if self.finished is not None and announce:
            self.finished(step.line())

    def status(self) -> str:
        """The live line's text: the step, its elapsed time and the program's latest output."""
        with self._lock:
            if self._label is None:
                return ""
            text = f"dbsnap: {self._label} ({time.monotonic() - self._began:.0f} s)"
            if self._fraction is not None:
                filled = round(self._fraction * BAR_WIDTH)
                text += f" [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {self._count or f'{self._fraction:.0%}'}"
            if self._latest:
                text += f" | {self._latest}"
            return text

    # --- the live line ------------------------------------------------------------------------------------

    def _refresh(self) -> None:
        while True:
            self._draw()
            if self._stop.wait(REFRESH_SECONDS):
                return

    def _draw(self) -> None:
        assert self.live is not None
        with self._lock:
            column = self.column()
            room = self.width() - column - 2
            text = self.status()
            if room < 10 or not text:
                return
            lead = " " if column else ""
            try:
                self.live.write(f"{_SAVE}{lead}{text[:room]}{_ERASE}{_RESTORE}")
                self.live.flush()
            except (OSError, ValueError):  # the terminal went away: the step goes on without its line
                return
            self._drawn = True

    def _erase(self) -> None:
        if self.live is None or not self._drawn:
            return
        try:
            self.live.write(f"{_SAVE}{_ERASE}{_RESTORE}")
            self.live.flush()
        except (OSError, ValueError):
            pass
        self._drawn = False


_current: Reporter | None = None


def _ignore(_line: str) -> None:
    """Output that no step listens to."""


def _ignore_count(done: int, total: int, unit: str | None = None) -> None:
    """A count that no step shows."""


def active() -> bool:
    """Whether a step is in progress (its live line or its CI line will say what happens)."""
    return _current is not None


class Meter(Protocol):
    """How far a loop with a known total is: `count(done, total)` for bytes, `count(done, total, "entries")`."""

    def __call__(self, done: int, total: int, unit: str | None = None) -> None: ...


def meter() -> Meter:
    """Where a loop with a known total (the bytes of a dump being verified) reports how far it is: to the step
    in progress as its bar, and nowhere once that step has ended."""
    reporter = _current
    if reporter is None:
        return _ignore_count
    serial = reporter.serial

    def count(done: int, total: int, unit: str | None = None) -> None:
        if reporter.serial == serial:
            reporter.advance(done, total, unit)

    return count


def substep(label: str) -> contextlib.AbstractContextManager[None]:
    """A part of the step in progress, recorded with its own duration (nothing when no step is in progress)."""
    reporter = _current
    return reporter.substep(label) if reporter is not None else contextlib.nullcontext()


def listener() -> Callable[[str], None]:
    """Where a program started now (migrate, seed, a service) sends its output lines: to the step in progress as
    its latest line, and nowhere once that step has ended (a running backend's log is not the frontend's start)."""
    reporter = _current
    if reporter is None:
        return _ignore
    serial = reporter.serial

    def hear(line: str) -> None:
        if reporter.serial == serial:
            reporter.output(line)

    return hear


def for_stream(stream: TextIO, *, quiet: bool = False) -> Reporter:
    """The CLI's reporter on stderr: a live line on a terminal, a line per finished step otherwise."""
    if quiet:
        return Reporter()
    if interactive(stream):
        import shutil

        return Reporter(live=stream, width=lambda: shutil.get_terminal_size().columns)

    def write(line: str) -> None:
        print(line, file=stream, flush=True)

    return Reporter(finished=write)
