"""Where the masking runs. It starts in this process; with more than one job, once a capture has masked more than
IN_PROCESS_BYTES, the rest goes to worker processes, chunk by chunk and in order, while this process only moves
COPY bytes between the two servers. Masking in Python is work on every value, so it bounds a capture's speed, and
the workers are what let it use more than one core; with the maskers in C (maskers.native_masking) one process is
faster by default.

The workers are `python -m` this module, not multiprocessing's: spawning those re-imports the caller's main
script, which runs it again when a script calls the capture without a `__main__` guard. Each gets the key through
its stdin (never a file or argv), holds at most one chunk at a time (so neither side can block the other on a full
pipe), and dies with this process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import deque
from collections.abc import Iterable, Iterator
from multiprocessing.connection import Connection
from typing import Any

from pytest_dbsnap.core import reaper
from pytest_dbsnap.dumps.capture.copytext import ChunkMasker, FieldMask, to_copy, whole_rows
from pytest_dbsnap.dumps.capture.leaks import LeakSample
from pytest_dbsnap.dumps.capture.maskers import build_masker, native_masking
from pytest_dbsnap.errors import DumpError

IN_PROCESS_BYTES = 16 << 20  # masked here before the workers start: a small capture never pays for their start
CHUNK = 1 << 18  # bytes of rows masked (here or by a worker) and written at a time
# (column index, table.column for the leak check, the rule as the policy wrote it), per table
TableRules = dict[str, list[tuple[int, str, Any]]]


MOST_JOBS = 8  # by default: past that the servers and the command's own reading are the limit, not masking


def default_jobs() -> int:
    """With the maskers in C, 1: masking is then cheaper than moving the rows to a worker and back (on 2 cores a
    300 MB capture took 6.3 s in one process against 6.9 s with two workers); in Python, one worker per core
    this process may use, at most MOST_JOBS (`--jobs` asks for more)."""
    if native_masking():
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(cores, MOST_JOBS)


def build_fields(
    rules: list[tuple[int, str, Any]], key: bytes, sample: LeakSample, memos: dict[str, dict[bytes, bytes]]
) -> list[FieldMask]:
    """The maskers of one table's fields; fields whose rules are equal share one memo (the same outputs)."""
    fields: list[FieldMask] = []
    for index, column, spec in rules:
        masker = build_masker(spec, key)
        memo = memos.setdefault(json.dumps(spec, sort_keys=True), {})
        copied = to_copy(masker.mask, masker.plain)
        fields.append((index, copied, masker.fast, sample.sampler(column, masker), memo, masker.native))
    return fields


class _Worker:
    """One `python -m pytest_dbsnap.dumps.capture.masking` and the two ends of its pipes."""

    def __init__(self, start: tuple[TableRules, bytes, bytes]) -> None:
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", __name__],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                preexec_fn=reaper.child_setup(),  # SIGKILL when this process ends (it holds the key)
            )
        except OSError as exc:
            raise DumpError(
                f"The capture could not start a masking worker ({sys.executable}: {exc}); nothing was stored. "
                f"Run it with --jobs 1 to mask in the command's own process."
            ) from exc
        stdin, stdout = self.process.stdin, self.process.stdout
        assert stdin is not None
        assert stdout is not None
        # The connections own duplicates of the pipes' descriptors (closing one closes its own).
        self.send = Connection(os.dup(stdin.fileno()), readable=False)
        self.receive = Connection(os.dup(stdout.fileno()), writable=False)
        stdin.close()
        stdout.close()
        self.post(start)

    def post(self, message: object) -> None:
        try:
            self.send.send(message)
        except OSError as exc:  # a broken pipe: it ended
            raise self.gone() from exc

    def reply(self) -> Any:
        try:
            return self.receive.recv()
        except (EOFError, OSError) as exc:
            raise self.gone() from exc

    def gone(self) -> DumpError:
        return DumpError(
            f"A masking worker of the capture (pid {self.process.pid}) ended unexpectedly; nothing was stored."
        )

    def end(self, *, kill: bool) -> None:
        """Closing its stdin ends a worker; one that fails the capture is killed first."""
        if kill:
            self.process.kill()
        self.send.close()
        self.receive.close()
        self.process.wait()


class Masking:
    """Masks the rows of the tables in `rules`; use as a context manager (it ends the workers)."""

    def __init__(self, rules: TableRules, key: bytes | None, sample: LeakSample, jobs: int) -> None:
        self.rules = {table: r for table, r in rules.items() if r}
        self.key = key or b""
        self.sample = sample
        self.jobs = jobs
        self.memos: dict[str, dict[bytes, bytes]] = {}
        self.maskers: dict[str, ChunkMasker] = {}
        self.masked_here = 0
        self.workers: list[_Worker] = []

    def __enter__(self) -> Masking:
        return self

    def __exit__(self, exc_type: object, *_rest: object) -> None:
        for worker in self.workers:
            worker.end(kill=exc_type is not None)
        self.workers = []

    def masks(self, table: str) -> bool:
        return table in self.rules

    def mask(self, table: str, blocks: Iterable[bytes | bytearray | memoryview]) -> Iterator[bytes]:
        """The masked COPY text of `table`'s COPY text, in order."""
        busy: deque[_Worker] = deque()  # the workers holding a chunk, oldest first
        for data in whole_rows(blocks, CHUNK):
            if not self._started():
                masker = self.maskers.get(table)
                if masker is None:
                    masker = self.maskers[table] = ChunkMasker(
                        build_fields(self.rules[table], self.key, self.sample, self.memos)
                    )
                self.masked_here += len(data)
                yield masker(data)
                continue
            if len(busy) == len(self.workers):
                worker = busy[0]
                yield self._collect(busy.popleft())
            else:
                worker = next(w for w in self.workers if w not in busy)
            worker.post((table, data))
            busy.append(worker)
        while busy:
            yield self._collect(busy.popleft())

    def _started(self) -> bool:
        if not self.workers and self.jobs > 1 and self.masked_here >= IN_PROCESS_BYTES:
            start = (self.rules, self.key, self.sample.salt)
            for _ in range(self.jobs):
                self.workers.append(_Worker(start))  # one at a time: those started are ended if the next fails
        return bool(self.workers)

    def _collect(self, worker: _Worker) -> bytes:
        reply = worker.reply()
        if reply[0] == "error":
            raise DumpError(f"Masking failed in a worker of the capture; nothing was stored: {reply[1]}")
        _ok, data, hashes = reply
        if hashes:
            self.sample.merge(hashes)
        return bytes(data)


def _serve() -> None:
    """A worker: the start message (rules, key, salt), then (table, rows) until stdin closes."""
    receive = Connection(sys.stdin.buffer.fileno(), writable=False)
    send = Connection(sys.stdout.buffer.fileno(), readable=False)
    rules, key, salt = receive.recv()
    sample = LeakSample(salt=salt)
    memos: dict[str, dict[bytes, bytes]] = {}
    maskers = {table: ChunkMasker(build_fields(r, key, sample, memos)) for table, r in rules.items()}
    while True:
        try:
            table, data = receive.recv()
        except EOFError:
            return
        try:
            send.send(("ok", maskers[table](data), sample.drain()))
        except Exception as exc:  # reported to the parent, which fails the capture with it
            send.send(("error", f"{type(exc).__name__}: {exc}"))


if __name__ == "__main__":
    _serve()
