"""The progress reporter on its own: steps end one another, output lines are redacted and cut to the width, and
only the step in progress hears the app's output."""

from __future__ import annotations

import io

from pytest_dbsnap.core import progress
from pytest_dbsnap.core.progress import Reporter


def test_steps_end_one_another_and_record_their_durations() -> None:
    lines: list[str] = []
    reporter = Reporter(finished=lines.append)
    reporter.step("seeding dev")
    reporter.step("pg_dump of dev")
    reporter.end(failed=True)
    reporter.end()  # nothing in progress: nothing more recorded
    assert [s.label for s in reporter.steps] == ["seeding dev", "pg_dump of dev"]
    assert lines[0].startswith("dbsnap: seeding dev: ")
    assert lines[0].endswith(" s")
    assert lines[1].startswith("dbsnap: pg_dump of dev: failed after ")


def test_the_live_line_shows_the_latest_output_redacted_cut_to_the_width_and_is_erased() -> None:
    terminal = io.StringIO()
    reporter = Reporter(live=terminal, width=lambda: 60, column=lambda: 20)
    reporter.step("seeding dev")
    seed = progress.listener()
    seed("first line\n")
    seed("connecting to postgresql://app:hunter2secret@127.0.0.1/app " + "x" * 80 + "\n")
    status = reporter.status()
    assert status.startswith("dbsnap: seeding dev (")
    assert "postgresql://app:***@127.0.0.1" in status
    assert "hunter2secret" not in status
    reporter._draw()
    drawn = terminal.getvalue().rsplit("\x1b7", 1)[-1]
    assert len(drawn.split("\x1b[K")[0]) <= 60 - 20
    reporter.end()
    assert terminal.getvalue().endswith("\x1b7\x1b[K\x1b8")
    reporter.step("starting the frontend")
    seed("a line of the seed after its step\n")  # heard by no later step
    assert "a line of the seed" not in reporter.status()
    reporter.end()


def test_a_step_with_a_known_total_shows_a_bar_that_only_its_own_meter_moves() -> None:
    reporter = Reporter()
    reporter.step("verifying the sha256 of x.dump")
    count = progress.meter()
    assert "[" not in reporter.status()  # no total known yet: no bar
    count(50, 200)
    assert reporter.status().endswith("[#####...............] 25%")
    count(200, 200)
    assert reporter.status().endswith("[####################] 100%")
    reporter.step("pg_restore of x")
    count(100, 200)  # the verify's meter no longer moves anything
    assert "[" not in reporter.status()
    reporter.end()


def test_a_transfer_during_a_step_moves_its_bar_instead_of_printing_percents() -> None:
    from pytest_dbsnap.dumps.remote import RemoteStore

    store = RemoteStore("s3://bucket/dumps", show_progress=True)
    reporter = Reporter()
    reporter.step("pulling dev/latest")
    callback = store._callback("pulling x", 400, None)
    assert callback is not None
    callback(100)
    callback(100)
    assert reporter.status().endswith("] 50%")
    reporter.end()


def test_a_part_of_a_step_has_its_own_line_and_the_step_counts_it() -> None:
    lines: list[str] = []
    reporter = Reporter(finished=lines.append)
    reporter.phase = "server"
    reporter.step("starting PostgreSQL (local)")
    with progress.substep("unpacking the cluster snapshot a.tar.zst"):
        assert reporter.status().startswith("dbsnap: unpacking the cluster snapshot a.tar.zst (")
        progress.meter()(3, 4)
        assert reporter.status().endswith("] 75%")
    assert reporter.status().startswith("dbsnap: starting PostgreSQL (local) (")  # the step goes on
    assert "]" not in reporter.status()  # the part's bar went with it
    reporter.end()
    whole, part = reporter.steps  # listed as read: the step, then its part (though the part finished first)
    assert (part.label, part.within, part.phase) == ("unpacking the cluster snapshot a.tar.zst", whole.label, "server")
    assert (whole.within, whole.phase) == (None, "server")
    assert whole.seconds >= part.seconds
    assert lines[0].startswith("dbsnap: starting PostgreSQL (local) > unpacking the cluster snapshot a.tar.zst: ")
    assert lines[1].startswith("dbsnap: starting PostgreSQL (local): ")
    with progress.substep("outside any step"), reporter.substep("also outside"):  # nothing to be part of
        pass
    reporter.step("preparing 'app' from dev")
    with reporter.substep("a part"), reporter.substep("a part of a part"):  # parts do not nest: the inner is not one
        assert reporter.status().startswith("dbsnap: a part (")
    reporter.end()
    assert [s.label for s in reporter.steps[2:]] == ["preparing 'app' from dev", "a part"]


def test_a_failed_part_ends_failed_and_a_step_ended_inside_a_part_ends_both() -> None:
    reporter = Reporter()
    reporter.step("starting PostgreSQL (local)")
    try:
        with progress.substep("unpacking the cluster snapshot a.tar.zst"):
            raise OSError("disk full")
    except OSError:
        pass
    reporter.step("preparing 'app' from dev")
    with progress.substep("pg_restore of x"):
        reporter.end(failed=True)  # the plugin ends the step when the call under it fails
    assert [(s.label, s.failed) for s in reporter.steps] == [
        ("starting PostgreSQL (local)", False),
        ("unpacking the cluster snapshot a.tar.zst", True),
        ("preparing 'app' from dev", True),
        ("pg_restore of x", True),
    ]
    assert not progress.active()


def test_counted_things_show_their_count_and_an_unannounced_step_prints_no_line() -> None:
    lines: list[str] = []
    reporter = Reporter(finished=lines.append)
    reporter.step("pg_restore of x", announce=False)
    progress.meter()(37, 120, "entries")
    assert reporter.status().endswith("[######..............] 37/120 entries")
    reporter.end()
    assert lines == []
    assert [s.label for s in reporter.steps] == ["pg_restore of x"]
