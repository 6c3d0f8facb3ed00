"""Progress of the slow steps: a live status line on a (pseudo-)terminal naming the step and the seed's latest
output (redacted), one line per finished step with its duration under CI, the steps in the summary and the HTML
report, and the CLI's stdout kept clean."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable
from pathlib import Path

import pytest

PROJECT = """\
[tool.dbsnap]
warm_cluster = true
dumps_dir = "dumps"
logs_dir = "logs"
seed_command = "python slow_seed.py"
"""

# A seed that says what it does, prints the password as careless apps do, then waits for the test's go-ahead.
SEED = """\
import os, time
from pathlib import Path
from urllib.parse import unquote, urlsplit

import psycopg

url = os.environ["DATABASE_URL"]
password = unquote(urlsplit(url).password or "")
Path("secret.txt").write_text(password)
with psycopg.connect(url, autocommit=True) as conn:
    conn.execute("CREATE TABLE galaxies (id int)")
    conn.execute("INSERT INTO galaxies SELECT generate_series(1, 7)")
print("DATABASE_URL =", url, flush=True)
print(f"seeding galaxies 7/7 with password {password}", flush=True)
deadline = time.monotonic() + 120
while not Path("go").exists() and time.monotonic() < deadline:
    time.sleep(0.05)
"""

TESTS = """\
def test_rows(dbsnap_db):
    assert dbsnap_db.execute("SELECT count(*) FROM galaxies").fetchone()[0] == 7
"""

STEP_LINE = re.compile(r"^dbsnap: (?P<label>.+): (?P<seconds>\d+\.\d) s$")


@pytest.fixture
def project(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    for name in list(os.environ):
        if name.startswith("DBSNAP_") or name in {"DATABASE_URL", "CI"}:
            monkeypatch.delenv(name)
    cache = tmp_path_factory.getbasetemp() / "pg-cache"
    cache.mkdir(exist_ok=True)
    monkeypatch.setenv("DBSNAP_CACHE_DIR", str(cache))
    pytester.makepyprojecttoml(PROJECT)
    pytester.makepyfile(slow_seed=SEED, test_rows=TESTS)
    return pytester.path


def run_in_pty(
    argv: list[str],
    cwd: Path,
    *,
    when: Callable[[str], bool] | None = None,
    then: Callable[[], None] | None = None,
    stdout_pipe: bool = False,
    timeout: float = 180,
) -> tuple[int, str, str]:
    """Run argv with a pseudo-terminal as its stderr (and stdout unless stdout_pipe); once `when` holds for the
    terminal's text so far, call `then`. Returns the exit code, the terminal's text and the piped stdout."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 200, 0, 0))
    env = {**os.environ, "COLUMNS": "200", "TERM": "xterm"}
    process = subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE if stdout_pipe else slave,
        stderr=slave,
        start_new_session=True,
    )
    os.close(slave)
    seen = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while True:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: every holder of the terminal is gone
                    break
                if not data:
                    break
                seen += data
            elif process.poll() is not None:
                break  # exited, and nothing more came for a moment
            if when is not None and when(seen.decode(errors="replace")):
                when = None
                if then is not None:
                    then()
            assert time.monotonic() < deadline, f"no end within {timeout} s; seen so far:\n{seen.decode()}"
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        out = ""
        if process.stdout is not None:
            with process.stdout:
                out = process.stdout.read().decode()
        process.wait()
        os.close(master)
    return process.returncode, seen.decode(errors="replace"), out


def test_a_slow_seed_shows_a_live_line_with_its_latest_output_redacted_on_a_terminal(project: Path) -> None:
    go = project / "go"
    returncode, shown, _ = run_in_pty(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "test_rows.py"],
        project,
        when=lambda text: "seeding galaxies 7/7" in text,
        then=go.touch,
    )
    assert returncode == 0, shown
    secret = (project / "secret.txt").read_text()
    assert len(secret) >= 16
    # The live line: the step, its elapsed time and the seed's latest line, its password hidden.
    live = re.search(r"\x1b7 ?(dbsnap: seeding dev \(\d+ s\) \| seeding galaxies 7/7 with password \*\*\*)", shown)
    assert live is not None, shown
    assert secret not in shown
    assert "\x1b7\x1b[K\x1b8" in shown  # erased when the step ended
    # Without -v a terminal gets no per-step lines, only the summary's list of where the time went.
    assert not any(STEP_LINE.match(line.strip()) for line in shown.splitlines())
    assert re.search(r"step: seeding dev: \d+\.\d s", shown)
    assert "1 passed" in shown

    # -v: the live line and also a line per finished step with its duration.
    returncode, shown, _ = run_in_pty(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-v", "--regenerate-dump", "test_rows.py"], project
    )
    assert returncode == 0, shown
    assert "\x1b7" in shown
    visible = re.sub(r"\x1b7.*?\x1b8", "", shown)  # what stays on the screen once each live line is erased
    finished = [m["label"] for m in (STEP_LINE.match(line.strip()) for line in visible.splitlines()) if m]
    assert "seeding dev" in finished, shown


def test_under_ci_each_step_is_one_line_with_its_duration_and_no_carriage_return(
    project: Path, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    (project / "go").touch()
    monkeypatch.setenv("CI", "true")
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--html=report.html", "--self-contained-html", timeout=180
    )  # fmt: skip
    result.assert_outcomes(passed=1)
    out = result.stdout.str()
    assert "\r" not in out
    assert "\x1b7" not in out
    steps = [m["label"] for m in map(STEP_LINE.match, out.splitlines()) if m]
    assert "starting PostgreSQL (local)" in steps
    assert "seeding dev" in steps
    assert "pg_dump of dev" in steps
    assert "making the app database 'app'" in steps  # the deferred clone, made when the test asked for it
    assert re.search(r"step: seeding dev: \d+\.\d s", out)
    report = (project / "report.html").read_text()
    assert "Where the session&#x27;s time went" in report or "Where the session's time went" in report
    assert "seeding dev" in report
    secret = (project / "secret.txt").read_text()
    assert secret not in out
    assert secret not in report

    # The CLI: a line per step with its duration on stderr, its answer alone on stdout; --quiet silences it.
    cli = [sys.executable, "-m", "pytest_dbsnap.cli"]
    generated = subprocess.run([*cli, "generate"], cwd=project, capture_output=True, text=True, timeout=180)
    assert generated.returncode == 0, generated.stderr
    assert "\r" not in generated.stderr
    assert any(
        (m := STEP_LINE.match(line)) and m["label"] == "seeding dev" for line in generated.stderr.splitlines()
    ), generated.stderr
    assert generated.stdout.startswith("dev/")
    assert "dbsnap:" not in generated.stdout
    assert secret not in generated.stdout + generated.stderr
    quiet = subprocess.run([*cli, "generate", "--quiet"], cwd=project, capture_output=True, text=True, timeout=180)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == ""

    # On a terminal: the live line on stderr; stdout (here a pipe) holds only the answer, and --json parses.
    monkeypatch.delenv("CI")
    returncode, terminal, answer = run_in_pty([*cli, "generate"], project, stdout_pipe=True)
    assert returncode == 0, terminal
    assert re.search(r"\x1b7dbsnap: seeding dev \(\d+ s\)", terminal), terminal
    assert answer.startswith("dev/")
    assert "\x1b" not in answer
    returncode, terminal, answer = run_in_pty([*cli, "list", "--json"], project, stdout_pipe=True)
    assert returncode == 0, terminal
    assert [dump["environment"] for dump in json.loads(answer)["dev"]] == ["dev"] * 4


# A function the data's CHECK constraint calls: a row waits while the hold file exists (the server itself looks at
# it, so it must be in a folder the server's account can read), so the test catches the restore's live line while
# the table's data is in progress and releases it then; it never waits for the line to be drawn in time.
HELD_ROWS = """
CREATE FUNCTION held() RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    WHILE (pg_stat_file('HOLD', true)).size IS NOT NULL
          AND clock_timestamp() < statement_timestamp() + interval '2 min' LOOP
        PERFORM pg_sleep(0.05);
    END LOOP;
    RETURN true;
END $$;
CREATE TABLE planets (id int PRIMARY KEY, name text CHECK (held()));
INSERT INTO planets VALUES (1, 'mercury'), (2, 'venus'), (3, 'earth'), (4, 'mars');
CREATE INDEX ON planets (name);
"""


def test_the_cli_shows_pg_restores_entries_and_verifys_bytes_on_a_terminal(
    project: Path, hold_folder: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from pytest_dbsnap.postgres import databases
    from pytest_dbsnap.postgres.base import find_pg_tools
    from pytest_dbsnap.postgres.local import LocalCluster

    cli = [sys.executable, "-m", "pytest_dbsnap.cli"]
    cache = tmp_path_factory.getbasetemp() / "pg-cache"
    with LocalCluster(find_pg_tools(None), cache_dir=cache).start() as server:
        with server.connect() as conn:
            databases.create_empty(conn, "planets")
        hold = hold_folder / "hold-restore"
        with server.connect("planets") as conn:
            conn.execute(HELD_ROWS.replace("HOLD", str(hold)))
            conn.commit()
        conninfo, env = server.tool_args("planets")
        archive = project / "planets.dump"
        subprocess.run([server.tools.path("pg_dump"), "-Fc", "-f", str(archive), conninfo], env=env, check=True)
        imported = subprocess.run(
            [*cli, "import", str(archive), "--env", "solar"], cwd=project, capture_output=True, text=True, timeout=120
        )
        assert imported.returncode == 0, imported.stderr

        # The bar counts the archive's entries (function, table, data, primary key, index) as pg_restore goes, and
        # the live line names the entry being restored. The data is held until the line shows it.
        while_held = re.compile(
            r"\x1b7dbsnap: pg_restore of \S+ with 2 job\(s\) \(\d+ s\) \[[#.]{20}\] 2/5 entries "
            r'\| processing data for table "public\.planets"\x1b\[K\x1b8'
        )
        hold.touch()
        returncode, terminal, answer = run_in_pty(
            [*cli, "restore", "--env", "solar", "--dsn", server.dsn("solar"), "--no-spare", "--jobs", "2"],
            project,
            when=lambda text: while_held.search(text) is not None,
            then=hold.unlink,
            stdout_pipe=True,
        )
        assert not hold.exists(), terminal  # released by the line, not by the end of the run
        assert returncode == 0, terminal
        assert answer.startswith("restored solar/"), answer
        assert " by pg_restore in " in answer, answer  # a cold restore: the cluster is new
        visible = re.sub(r"\x1b7.*?\x1b8", "", terminal)
        assert "pg_restore:" not in visible  # --verbose reached only the live line
        with server.connect("solar") as conn:
            assert conn.execute("SELECT count(*) FROM planets").fetchone() == (4,)

    # verify: a live line per file, gone before the file's own line (stdout here), and nothing else on stderr.
    returncode, terminal, answer = run_in_pty([*cli, "verify", "--env", "solar"], project, stdout_pipe=True)
    assert returncode == 0, terminal
    assert "\x1b7dbsnap: verifying solar/" in terminal
    assert re.sub(r"\x1b7.*?\x1b8", "", terminal).strip() == ""
    assert answer.startswith("ok      solar/")
