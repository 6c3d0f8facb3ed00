"""docker-compose.dev.yml read as YAML and checked for structure, without a Docker engine or the compose CLI.

Nothing here starts a container: these tests prove the file says what seeds/README.md promises (image, health
check, volumes, read-only mounts, defaults, loopback port, profiles), that its image runs the major of the server
wheel the `server` extra pins, and that it agrees with the plugin's docker provider. tests/docker/ runs it on a
real engine.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from pytest_dbsnap.config.loading import load_settings
from pytest_dbsnap.config.settings import Settings
from pytest_dbsnap.postgres.binaries import WHEEL_DISTRIBUTION
from pytest_dbsnap.postgres.compose import CONTAINER_PORT, compose_commands
from pytest_dbsnap.postgres.compose_image import image_major, postgres_images

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.dev.yml"
SERVICE = "postgres"
# From 18 the official image keeps PGDATA at /var/lib/postgresql/<major>/docker and wants the volume here.
VOLUME_DIR = "/var/lib/postgresql"


def server_extra_major() -> int:
    """The major of the server wheel the `server` extra pins: the PostgreSQL that writes the dumps by default."""
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    (requirement,) = [item for item in extras["server"] if item.startswith(WHEEL_DISTRIBUTION)]
    match = re.fullmatch(rf"{WHEEL_DISTRIBUTION}\s*(?:>=|==|~=)\s*(\d+)(?:\.\d+)*", requirement)
    assert match is not None, requirement
    return int(match[1])


PG_MAJOR = server_extra_major()
INIT_SCRIPT_TARGET = "/docker-entrypoint-initdb.d/10-init-db.sh"
TOP_LEVEL_KEYS = {"name", "services", "networks", "volumes", "configs", "secrets", "include"}
_VARIABLE = re.compile(r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}")


def interpolate(value: str, environ: Mapping[str, str]) -> str:
    """Compose's interpolation for the forms this file uses: ${NAME}, ${NAME:-default} and $$ (a literal $)."""

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, default = match.group("name"), match.group("default")
        found = environ.get(name, "")
        return found if found or default is None else default

    return _VARIABLE.sub(substitute, value)


def mounts(service: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The service's volumes in long form, whichever syntax the file uses."""
    result: list[dict[str, Any]] = []
    for entry in service.get("volumes", []):
        if isinstance(entry, str):
            parts = entry.split(":")
            source, target = parts[0], parts[1]
            kind = "bind" if source.startswith((".", "/", "~")) else "volume"
            result.append(
                {
                    "type": kind,
                    "source": source,
                    "target": target,
                    "read_only": len(parts) > 2 and "ro" in parts[2].split(","),
                }
            )
        else:
            result.append(dict(entry))
    return result


def mount_at(service: Mapping[str, Any], target: str) -> dict[str, Any]:
    found = [mount for mount in mounts(service) if mount["target"] == target]
    assert len(found) == 1, f"expected one mount at {target}, got {found}"
    return found[0]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    with COMPOSE_FILE.open() as handle:
        document = yaml.safe_load(handle)
    assert isinstance(document, dict)
    return document


@pytest.fixture(scope="module")
def postgres(compose: dict[str, Any]) -> dict[str, Any]:
    service = compose["services"][SERVICE]
    assert isinstance(service, dict)
    return service


@pytest.fixture(scope="module")
def postgres_env(postgres: dict[str, Any]) -> dict[str, str]:
    environment = postgres["environment"]
    assert isinstance(environment, dict), "environment as a mapping, so each variable has one obvious place"
    return {str(key): str(value) for key, value in environment.items()}


def test_compose_file_no_engine_has_only_compose_spec_top_level_keys(compose: dict[str, Any]) -> None:
    unknown = {key for key in compose if key not in TOP_LEVEL_KEYS and not key.startswith("x-")}
    assert unknown == set()
    assert "version" not in compose, "the compose spec made `version` obsolete; docker compose warns about it"


def test_compose_file_no_engine_postgres_runs_the_official_image_of_the_targeted_major(
    compose: dict[str, Any], postgres: dict[str, Any]
) -> None:
    # The major of the server wheel: dumps written with the defaults restore on the image's first start.
    assert PG_MAJOR >= 18
    match = re.fullmatch(r"postgres:(\d+)(?:\.\d+)*(?:-[a-z0-9.]+)?", postgres["image"])
    assert match is not None, postgres["image"]
    assert int(match[1]) == PG_MAJOR
    assert "build" not in postgres
    # The stager runs the same image (one pull), and `dbsnap init` reads the file to the same majors.
    assert compose["services"]["dumps"]["image"] == postgres["image"]
    read_by_init = postgres_images(COMPOSE_FILE.read_text())
    assert [(found.service, found.major) for found in read_by_init] == [("dumps", PG_MAJOR), (SERVICE, PG_MAJOR)]
    assert image_major(postgres["image"]) == PG_MAJOR


def test_compose_file_no_engine_healthcheck_uses_pg_isready_over_tcp(postgres: dict[str, Any]) -> None:
    check = postgres["healthcheck"]
    test = check["test"]
    assert test[0] == "CMD-SHELL"
    command = test[1]
    assert command.startswith("pg_isready ")
    # $$ so the container's shell, not compose, expands them: they are the values the server was made with.
    assert '-U "$${POSTGRES_USER}"' in command
    assert '-d "$${POSTGRES_DB}"' in command
    # TCP: the image's init phase runs a socket-only server, which must not count as healthy.
    assert "-h 127.0.0.1" in command
    for key in ("interval", "timeout", "retries", "start_period"):
        assert key in check, key
    assert isinstance(check["retries"], int)
    assert check["retries"] > 0


def test_compose_file_no_engine_data_lives_in_a_declared_named_volume(
    compose: dict[str, Any], postgres: dict[str, Any], postgres_env: dict[str, str]
) -> None:
    data = mount_at(postgres, VOLUME_DIR)
    assert data["type"] == "volume"
    assert data["source"] in compose["volumes"], "named volumes must be declared at the top level"
    # The 18 image refuses a volume at the old place (an "unused mount/volume"), and only its default PGDATA
    # (/var/lib/postgresql/18/docker, inside the volume) lets it recognise data of another layout.
    assert all(mount["target"] != f"{VOLUME_DIR}/data" for mount in mounts(postgres))
    assert "PGDATA" not in postgres_env


def test_compose_file_no_engine_mounts_init_script_read_only_into_initdb_dir(postgres: dict[str, Any]) -> None:
    script = mount_at(postgres, INIT_SCRIPT_TARGET)
    assert script["type"] == "bind"
    assert script["read_only"] is True
    assert script["source"] == "./seeds/scripts/init-db.sh"
    host_path = REPO / script["source"]
    assert host_path.is_file(), "a missing host path would be mounted as an empty folder (short syntax)"
    assert os.access(host_path, os.X_OK), "the image sources non-executable .sh files instead of running them"
    assert INIT_SCRIPT_TARGET.endswith(".sh")


def test_compose_file_no_engine_mounts_the_dump_store_read_only_where_the_script_looks(
    compose: dict[str, Any], postgres: dict[str, Any], postgres_env: dict[str, str]
) -> None:
    # The server reads a private copy that the one-shot `dumps` service stages into a volume as root, so
    # 0600 dumps work whoever owns them (root included) without loosening their permissions.
    target = postgres_env["DBSNAP_DUMPS_DIR"]
    staged = mount_at(postgres, target)
    assert staged["type"] == "volume"
    assert staged["read_only"] is True
    assert staged["source"] in compose["volumes"]
    assert postgres["depends_on"]["dumps"]["condition"] == "service_completed_successfully"
    stager = compose["services"]["dumps"]
    assert mount_at(stager, target)["source"] == staged["source"]
    assert stager["entrypoint"][-2:] == ["stage", target]
    source_dir = {key: str(value) for key, value in stager["environment"].items()}["DBSNAP_DUMPS_DIR"]
    store = mount_at(stager, source_dir)
    assert store["type"] == "bind"
    assert store["read_only"] is True
    assert store["source"] == "./seeds/dumps"
    assert (REPO / store["source"]).is_dir()
    settings = load_settings(project_root=REPO, pyproject=REPO / "pyproject.toml", environ={})
    assert settings.dumps_dir == (REPO / store["source"]).resolve(), "the plugin's store is the mounted one"


def test_compose_file_no_engine_every_bind_mount_and_build_input_exists(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for mount in mounts(service):
            if mount["type"] == "bind":
                assert (REPO / mount["source"]).exists(), f"{name}: {mount['source']}"
        build = service.get("build")
        if isinstance(build, dict):
            context = REPO / build.get("context", ".")
            assert context.is_dir(), name
            for line in build.get("dockerfile_inline", "").splitlines():
                if line.startswith("COPY "):
                    for source in line.split()[1:-1]:
                        assert (context / source).exists(), f"{name}: COPY {source}"


def test_compose_file_no_engine_environment_variables_have_dev_defaults(postgres_env: dict[str, str]) -> None:
    defaults = {"POSTGRES_USER": "postgres", "POSTGRES_PASSWORD": "postgres", "POSTGRES_DB": "app", "DBSNAP_ENV": "dev"}
    for variable, default in defaults.items():
        assert postgres_env[variable] == f"${{{variable}:-{default}}}", variable
    assert postgres_env["DBSNAP_DUMPS_DIR"] == "/dumps"


def test_compose_file_no_engine_defaults_match_what_the_plugin_connects_with(postgres_env: dict[str, str]) -> None:
    resolved = {key: interpolate(value, {}) for key, value in postgres_env.items()}
    defaults = Settings(project_root=REPO)
    assert resolved["POSTGRES_USER"] == defaults.compose_user
    assert resolved["POSTGRES_PASSWORD"] == defaults.compose_password
    assert resolved["POSTGRES_DB"] == defaults.database
    assert resolved["DBSNAP_ENV"] == defaults.env


@pytest.mark.parametrize(
    ("environ", "expected_env", "expected_port"),
    [
        ({}, "dev", "127.0.0.1:5432:5432"),
        ({"DBSNAP_ENV": "staging", "POSTGRES_PORT": "6543"}, "staging", "127.0.0.1:6543:5432"),
        ({"DBSNAP_ENV": "", "POSTGRES_PORT": ""}, "dev", "127.0.0.1:5432:5432"),  # :- also covers empty values
    ],
)
def test_compose_file_no_engine_interpolates_environment_and_port(
    postgres: dict[str, Any],
    postgres_env: dict[str, str],
    environ: dict[str, str],
    expected_env: str,
    expected_port: str,
) -> None:
    assert interpolate(postgres_env["DBSNAP_ENV"], environ) == expected_env
    assert [interpolate(port, environ) for port in postgres["ports"]] == [expected_port]


def test_compose_file_no_engine_publishes_ports_on_loopback_only(compose: dict[str, Any]) -> None:
    published = 0
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert isinstance(port, str), f"{name}: use the 'HOST_IP:HOST:CONTAINER' string form"
            host_ip, _host_port, container_port = interpolate(port, {}).split(":")
            assert host_ip == "127.0.0.1", f"{name} publishes {port} beyond this machine"
            published += 1
            if name == SERVICE:
                assert int(container_port) == CONTAINER_PORT
    assert published >= 1


def test_compose_file_no_engine_app_services_sit_behind_the_app_profile(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert "profiles" not in services[SERVICE], "postgres must start with a plain `docker compose up`"
    others = {name: service for name, service in services.items() if name not in {SERVICE, "dumps"}}
    assert set(others) >= {"backend", "frontend"}
    for name, service in others.items():
        assert "app" in service["profiles"], name
    assert services["backend"]["depends_on"][SERVICE]["condition"] == "service_healthy"
    assert "backend" in services["frontend"]["depends_on"]
    backend_env = services["backend"]["environment"]
    assert {"DATABASE_URL", "PORT"} <= set(backend_env)
    assert {"BACKEND_URL", "PORT"} <= set(services["frontend"]["environment"])
    url = interpolate(backend_env["DATABASE_URL"], {})
    assert url == "postgresql://postgres:postgres@127.0.0.1:5432/app"


def test_compose_file_no_engine_postgres_has_no_restart_policy(postgres: dict[str, Any]) -> None:
    # A restart after a failed init would skip the init script and serve an empty database.
    assert postgres.get("restart", "no") == "no"


def test_compose_file_no_engine_matches_the_plugin_docker_provider(compose: dict[str, Any]) -> None:
    settings = load_settings(project_root=REPO, pyproject=REPO / "pyproject.toml", environ={})
    assert settings.compose_file == COMPOSE_FILE
    assert settings.compose_service == SERVICE
    assert settings.compose_service in compose["services"]
    up, down = compose_commands(settings.compose_service, settings.start_timeout)
    assert up[:3] == ["up", "-d", "--wait"]
    assert up[-1] == SERVICE
    assert down[:2] == ["down", "-v"]
