"""Fault drills for `dbsnap push` and `dbsnap pull`: killed with -9 while the dump itself is on the wire. The S3
server is moto's, behind a small WSGI wrapper that holds every request for a dump file while the project's
hold-remote file exists, so the drill knows the transfer is under way when it kills."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from drills import (
    DBSNAP,
    Drilled,
    assert_green,
    drill_runs,
    generate_dump,
    kill_at,
    leftover_files,
    reachable_folder,
    run_environ,
    wait_until,
    write_project,
)

from pytest_dbsnap.dumps.store import DumpStore
from pytest_dbsnap.postgres.base import free_port

pytestmark = pytest.mark.faults

BUCKET = "drills"
HOLDING_S3 = """\
import sys, time
from pathlib import Path

from moto.server import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import make_server

port, hold, held = int(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
s3 = DomainDispatcherApplication(create_backend_app)


def holding(environ, start_response):
    if environ["PATH_INFO"].endswith(".dump") and hold.exists():
        held.write_text(environ["REQUEST_METHOD"])
        while hold.exists():
            time.sleep(0.05)
    return s3(environ, start_response)


make_server("127.0.0.1", port, holding, threaded=True).serve_forever()
"""
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "drill-key-id",
    "AWS_SECRET_ACCESS_KEY": "drill-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


@pytest.fixture
def drilled() -> Iterator[Drilled]:
    with drill_runs() as runs:
        yield runs


@pytest.fixture(scope="module")
def pg_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = tmp_path_factory.getbasetemp() / "pg-cache"  # shared with the other server tests
    cache.mkdir(exist_ok=True)
    return cache


@pytest.fixture
def project() -> Iterator[Path]:
    with reachable_folder() as folder:
        yield write_project(folder / "project")


@pytest.fixture
def s3_endpoint(project: Path) -> Iterator[str]:
    """The holding S3 server for this project, with an empty bucket; stopped by its handle at the end."""
    port = free_port()
    script = project / "holding_s3.py"
    script.write_text(HOLDING_S3)
    argv = [sys.executable, str(script), str(port), str(project / "hold-remote"), str(project / "remote.held")]
    with (project / "s3.log").open("wb") as log:
        server = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: server.poll() is not None or answers(endpoint), 60, "the S3 server's start")
        assert server.poll() is None, (project / "s3.log").read_text()
        client(endpoint).create_bucket(Bucket=BUCKET)
        yield endpoint
    finally:
        server.kill()
        server.wait()


def answers(endpoint: str) -> bool:
    try:
        return httpx.get(f"{endpoint}/moto-api/", timeout=1).status_code < 500
    except httpx.HTTPError:
        return False


def client(endpoint: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    )


def remote_environ(cache: Path, endpoint: str, project: Path) -> dict[str, str]:
    env = {k: v for k, v in run_environ(cache).items() if not k.startswith("AWS_")}
    return {
        **env,
        **CREDENTIALS,
        "AWS_CONFIG_FILE": str(project / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(project / "no-aws-credentials"),
        "DBSNAP_REMOTE": f"s3://{BUCKET}/team",
        "DBSNAP_REMOTE_ENDPOINT_URL": endpoint,
    }


def remote_keys(endpoint: str) -> list[str]:
    listing = client(endpoint).list_objects_v2(Bucket=BUCKET)
    return sorted(str(item["Key"]) for item in listing.get("Contents", []))


def test_cli_killed_during_push(project: Path, pg_cache: Path, s3_endpoint: str, drilled: Drilled) -> None:
    env = remote_environ(pg_cache, s3_endpoint, project)
    generate_dump(project, env)

    kill_at(project, env, drilled, [DBSNAP, "push"], hold="remote", reached=lambda _run: held(project))

    # Readers find a dump by its metadata, which is sent only after the dump: none of it shows.
    assert not [key for key in remote_keys(s3_endpoint) if key.endswith(".json") or key.endswith("latest")]
    assert_green(project, env, drilled, [DBSNAP, "push"])
    meta = DumpStore(project / "dumps").latest("dev")
    assert meta is not None
    assert f"team/dev/{meta.name}.json" in remote_keys(s3_endpoint)


def test_cli_killed_during_pull(project: Path, pg_cache: Path, s3_endpoint: str, drilled: Drilled) -> None:
    env = remote_environ(pg_cache, s3_endpoint, project)
    generate_dump(project, env)
    pushed = subprocess.run([DBSNAP, "push"], cwd=project, env=env, capture_output=True, text=True, timeout=120)
    assert pushed.returncode == 0, pushed.stderr
    meta = DumpStore(project / "dumps").latest("dev")
    assert meta is not None
    shutil.rmtree(project / "dumps")  # a runner that has no dump yet

    def downloading(_run: subprocess.Popen[bytes]) -> bool:
        return held(project) and bool(leftover_files(project / "dumps"))

    kill_at(project, env, drilled, [DBSNAP, "pull"], hold="remote", reached=downloading)

    assert DumpStore(project / "dumps").latest("dev") is None
    assert_green(project, env, drilled, [DBSNAP, "pull"])
    pulled = DumpStore(project / "dumps").latest("dev")
    assert pulled is not None
    assert pulled.sha256 == meta.sha256


def held(project: Path) -> bool:
    return (project / "remote.held").exists()
