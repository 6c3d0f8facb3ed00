"""The docker provider on a machine without a Docker engine (the client alone does not count), and the
provider choice that falls back to the local cluster.

Only the engine may be faked: `without_docker_engine` leaves this machine as it is when no engine answers
(as here) and fakes that answer only where one does, so these tests mean the same everywhere.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_dbsnap.config.loading import load_settings
from pytest_dbsnap.errors import ConfigError, ServerError
from pytest_dbsnap.postgres import compose
from pytest_dbsnap.postgres.compose import compose_commands, docker_engine_answers, find_compose_command, start_compose
from pytest_dbsnap.stack.servers import choose_provider, start_server

CANARY = "s3cr3t"  # stands for a password: it must never show in a message


@pytest.fixture(scope="module")
def engine_answers() -> bool:
    return docker_engine_answers()


@pytest.fixture
def without_docker_engine(engine_answers: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if engine_answers:
        monkeypatch.setattr(compose, "docker_engine_answers", lambda timeout=5.0, compose_command=None: False)


@pytest.fixture
def compose_file(tmp_path: Path) -> Path:
    path = tmp_path / "docker-compose.dev.yml"
    path.write_text("services:\n  postgres:\n    image: postgres:16\n    ports: ['5432']\n")
    return path


def test_docker_engine_does_not_answer_here(engine_answers: bool) -> None:
    if engine_answers:
        pytest.skip("a Docker engine answers on this machine; this checks machines with the client only")
    assert docker_engine_answers(timeout=5) is False


def test_start_compose_with_a_missing_compose_file_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "docker-compose.dev.yml"
    with pytest.raises(ConfigError) as caught:
        start_compose(missing, "postgres", user="postgres", password=CANARY, timeout=1)
    message = str(caught.value)
    assert str(missing) in message
    assert "compose_file" in message
    assert CANARY not in message


def test_start_compose_without_docker_engine_says_start_docker_or_use_local(
    without_docker_engine: None, compose_file: Path
) -> None:
    with pytest.raises(ServerError) as caught:
        start_compose(compose_file, "postgres", user="postgres", password=CANARY, timeout=1)
    message = str(caught.value)
    # Where no compose command exists at all, that is what the message is about; else the engine.
    assert "Start Docker" in message or "needs a compose command" in message
    assert "--db-provider=local" in message
    assert CANARY not in message


def test_start_server_docker_provider_without_docker_engine_is_a_server_error(
    without_docker_engine: None, compose_file: Path
) -> None:
    settings = load_settings(project_root=compose_file.parent, environ={}, cli={"provider": "docker"})
    with pytest.raises(ServerError, match="--db-provider=local"):
        start_server(settings)


@pytest.mark.parametrize("service", ["postgres", "db"])
def test_compose_commands_start_one_service_bounded_and_remove_volumes(service: str) -> None:
    assert compose_commands(service, 19.2) == (
        ["up", "-d", "--wait", "--wait-timeout", "20", service],
        ["down", "-v", "--remove-orphans"],
    )


def test_choose_provider_dsn_means_external(tmp_path: Path) -> None:
    settings = load_settings(project_root=tmp_path, environ={"DBSNAP_DSN": "postgresql://u@localhost/x"})
    assert choose_provider(settings) == ("external", "a DSN was given by the environment")


def test_choose_provider_database_url_alone_is_not_a_dsn(tmp_path: Path) -> None:
    settings = load_settings(project_root=tmp_path, environ={"DATABASE_URL": "postgresql://u@localhost/x"})
    assert choose_provider(settings) == ("local", "no DSN and no compose file, so the embedded cluster")


def test_choose_provider_dsn_beats_a_compose_file(tmp_path: Path, compose_file: Path) -> None:
    settings = load_settings(project_root=tmp_path, environ={}, cli={"dsn": "host=/tmp"})
    assert choose_provider(settings) == ("external", "a DSN was given by the command line")


def test_choose_provider_compose_file_without_docker_engine_falls_back_to_local(
    without_docker_engine: None, compose_file: Path
) -> None:
    settings = load_settings(project_root=compose_file.parent, environ={})
    provider, reason = choose_provider(settings)
    assert provider == "local"
    assert "no Docker engine answers" in reason
    assert compose_file.name in reason


def test_choose_provider_without_dsn_or_compose_file_is_local(tmp_path: Path) -> None:
    settings = load_settings(project_root=tmp_path, environ={})
    assert choose_provider(settings) == ("local", "no DSN and no compose file, so the embedded cluster")


@pytest.mark.parametrize("provider", ["local", "docker", "external"])
def test_choose_provider_keeps_an_explicit_provider(provider: str, tmp_path: Path, compose_file: Path) -> None:
    settings = load_settings(project_root=tmp_path, environ={"DBSNAP_PROVIDER": provider, "DBSNAP_DSN": "host=/tmp"})
    assert choose_provider(settings) == (provider, "set by the environment")


def test_compose_command_setting_is_split_like_a_shell_command(tmp_path: Path) -> None:
    settings = load_settings(project_root=tmp_path, environ={"DBSNAP_COMPOSE_COMMAND": "podman compose"})
    assert settings.compose_command == ("podman", "compose")
    assert load_settings(project_root=tmp_path, environ={}).compose_command is None


def test_a_compose_command_that_does_not_answer_is_a_config_error_naming_the_setting() -> None:
    with pytest.raises(ConfigError) as caught:
        find_compose_command(("no-such-compose-dbsnap",))
    message = str(caught.value)
    assert "compose_command" in message
    assert "'no-such-compose-dbsnap'" in message
    assert "podman-compose" in message


def test_auto_does_not_pick_docker_when_the_configured_compose_command_is_missing(compose_file: Path) -> None:
    environ = {"DBSNAP_COMPOSE_COMMAND": "no-such-compose-dbsnap"}
    settings = load_settings(project_root=compose_file.parent, environ=environ)
    assert choose_provider(settings)[0] == "local"
