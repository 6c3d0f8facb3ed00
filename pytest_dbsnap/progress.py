"""Progress of the slow steps (seeding, pg_restore, a service start): one live status line on a terminal, one
line per finished step with its duration in CI, and the list of steps with durations for the reports.

No pytest here: the plugin (progress_plugin.py) and the CLI give a Reporter its streams. The live line is drawn
by hand with three ANSI sequences (save cursor, erase to the end of the line, restore cursor) after whatever the
current line holds, so pytest's own line and its column bookkeeping stay as they were; rich's Live display
wants to own the console and stdout, which pytest's capture and terminal writer already do.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

from pytest_dbsnap.redact import redact

REFRESH_SECONDS = 0.25
BAR_WIDTH = 20
_SAVE, _RESTORE, _ERASE = "\x1b7", "\x1b8", "\x1b[K"


@dataclass(frozen=True)
class Step:
    """One finished step, for the CI lines and the reports."""

    label: str
    seconds: float
    failed: bool = False

    def line(self) -> str:
        return f"dbsnap: {self.label}: {'failed after ' if self.failed else ''}{self.seconds:.1f} s"


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
        self._lock = threading.RLock()
        self._label: str | None = None
        self._began = 0.0
        self._latest = ""
        self._fraction: float | None = None  # of the step's known total (bytes verified), for the bar
        self._drawn = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- the steps ----------------------------------------------------------------------------------------

    def step(self, label: str) -> None:
        """A new step begins (a progress callback: `prepare_database(..., progress=reporter.step)`)."""
        self.end()
        with self._lock:
            self._label, self._began, self._latest = _oneline(label), time.monotonic(), ""
            self._fraction = None
            self.serial += 1
        global _current
        _current = self
        if self.live is not None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._refresh, name="dbsnap-progress", daemon=True)
            self._thread.start()

    def output(self, line: str) -> None:
        """The latest output line of the program the step runs (shown redacted, cut to the width)."""
        text = _oneline(line)
        if text:
            with self._lock:
                self._latest = text

    def advance(self, done: int, total: int) -> None:
        """How far the step is, where its total is known (bytes of a file): the live line shows a bar."""
        if total > 0:
            with self._lock:
                self._fraction = min(1.0, max(0.0, done / total))

    def end(self, *, failed: bool = False) -> None:
        """The step in progress (if any) is finished: its line is erased and its duration recorded."""
        global _current
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        with self._lock:
            if self._label is None:
                return
            step = Step(self._label, time.monotonic() - self._began, failed)
            self._label = None
            self.serial += 1
            self.steps.append(step)
            self._erase()
        if _current is self:
            _current = None
        if self.finished is not None:
            self.finished(step.line())

    def status(self) -> str:
        """The live line's text: the step, its elapsed time and the program's latest output."""
        with self._lock:
            if self._label is None:
                return ""
            text = f"dbsnap: {self._label} ({time.monotonic() - self._began:.0f} s)"
            if self._fraction is not None:
                filled = round(self._fraction * BAR_WIDTH)
                text += f" [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {self._fraction:.0%}"
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


def _ignore_count(_done: int, _total: int) -> None:
    """A count that no step shows."""


def active() -> bool:
    """Whether a step is in progress (its live line or its CI line will say what happens)."""
    return _current is not None


def meter() -> Callable[[int, int], None]:
    """Where a loop with a known total (the bytes of a dump being verified) reports how far it is: to the step
    in progress as its bar, and nowhere once that step has ended."""
    reporter = _current
    if reporter is None:
        return _ignore_count
    serial = reporter.serial

    def count(done: int, total: int) -> None:
        if reporter.serial == serial:
            reporter.advance(done, total)

    return count


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
