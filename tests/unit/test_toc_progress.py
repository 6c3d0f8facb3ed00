"""pg_restore's bar, fed the lines of a real `pg_restore --verbose -j 2` (PostgreSQL 18, workers' lines
interleaved): it only moves forward, and lines heard after pg_restore exited do not move it back."""

from __future__ import annotations

from pytest_dbsnap.dumps.restore import TocProgress

LINES = """\
pg_restore: processing item 219 TABLE t0
pg_restore: creating TABLE "public.t0"
pg_restore: processing item 220 TABLE t1
pg_restore: creating TABLE "public.t1"
pg_restore: entering main parallel loop
pg_restore: launching item 2699 TABLE DATA t0
pg_restore: launching item 2700 TABLE DATA t1
pg_restore: processing data for table "public.t0"
pg_restore: processing data for table "public.t1"
pg_restore: finished item 2699 TABLE DATA t0
pg_restore: launching item 2493 CONSTRAINT t0 t0_pkey
pg_restore:pg_restore: creating CONSTRAINT "public.t0 t0_pkey"
 finished item 2700 TABLE DATA t1
pg_restore: finished item 2493 CONSTRAINT t0 t0_pkey
pg_restore: finished main parallel loop
""".splitlines(keepends=True)


def follow(total: int) -> tuple[TocProgress, list[int]]:
    seen: list[int] = []
    progress = TocProgress(total)
    progress.count = lambda done, _total, _unit=None: seen.append(done)
    return progress, seen


def test_the_bar_moves_forward_and_keeps_only_progress_out_of_the_tail() -> None:
    progress, seen = follow(6)
    kept = [line for line in LINES if progress(line)]
    assert seen == sorted(seen)
    assert len(set(seen)) == len(seen)  # each count once: no redraw of the same count
    assert seen[-1] <= 6
    # Garbled lines are kept, as any line that is not known progress is: the tail of a failure may need them.
    assert kept == [
        'pg_restore:pg_restore: creating CONSTRAINT "public.t0 t0_pkey"\n',
        " finished item 2700 TABLE DATA t1\n",
    ]


def test_after_pg_restore_exited_late_lines_do_not_move_the_bar_back() -> None:
    progress, seen = follow(6)
    for line in LINES[:6]:
        progress(line)
    progress.finish()
    assert seen[-1] == 6
    for line in LINES[6:]:  # a reader still busy when pg_restore had exited
        progress(line)
    assert seen[-1] == 6
    assert seen == sorted(seen)
