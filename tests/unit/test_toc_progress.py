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


# A real `pg_restore --verbose -j 2` (PostgreSQL 18.6) of a function, a table with data and a sequence: every
# connection (the leader's, then each worker's at a moment of its own) says "executing SELECT ...set_config".
WITH_CONNECTIONS = """\
pg_restore: connecting to database for restore
pg_restore: executing SELECT pg_catalog.set_config('search_path', '', false);
pg_restore: processing item 2573 ENCODING ENCODING
pg_restore: processing item 221 FUNCTION slow_true()
pg_restore: creating FUNCTION "public.slow_true()"
pg_restore: processing item 219 TABLE planets
pg_restore: creating TABLE "public.planets"
pg_restore: processing item 220 SEQUENCE s
pg_restore: creating SEQUENCE "public.s"
pg_restore: entering main parallel loop
pg_restore: launching item 2569 TABLE DATA planets
pg_restore: launching item 2578 SEQUENCE SET s
pg_restore: executing SELECT pg_catalog.set_config('search_path', '', false);
pg_restore: processing data for table "public.planets"
pg_restore: executing SELECT pg_catalog.set_config('search_path', '', false);
""".splitlines(keepends=True)


def test_a_connection_is_neither_an_entry_nor_the_entry_being_restored() -> None:
    progress, seen = follow(7)
    heard: list[str] = []
    progress.hear = heard.append
    for line in WITH_CONNECTIONS:
        assert not progress(line)  # all of it is progress, none of it belongs in a failure's tail
    # Done: the function, the table and the sequence; the table's data is being restored, whichever worker's
    # connection line came last.
    assert seen[-1] == 3
    assert heard[-1].strip() == 'processing data for table "public.planets"'
    assert not any("set_config" in message for message in heard)


def test_serially_the_leaders_connection_is_not_counted_as_the_first_entry() -> None:
    progress, seen = follow(4)
    progress("pg_restore: connecting to database for restore\n")
    progress("pg_restore: executing SELECT pg_catalog.set_config('search_path', '', false);\n")
    progress('pg_restore: creating FUNCTION "public.slow_true()"\n')
    assert seen in ([], [0])  # the function is being created: nothing is done yet
    progress('pg_restore: creating TABLE "public.planets"\n')
    assert seen[-1] == 1
    progress("pg_restore: executing SEQUENCE SET s\n")  # an entry that says "executing": counted
    assert seen[-1] == 2
