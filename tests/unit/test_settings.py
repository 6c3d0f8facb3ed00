"""Settings: one value per key from pyproject < ini < environment < command line, and clear errors."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from pytest_dbsnap.config.loading import cli_values, find_pyproject, load_settings
from pytest_dbsnap.config.options import OPTIONS
from pytest_dbsnap.config.settings import ServiceSettings, Settings
from pytest_dbsnap.errors import ConfigError

LoadFrom = Callable[..., Settings]


@pytest.fixture
def load(tmp_path: Path) -> LoadFrom:
    """load_settings for a project in tmp_path whose pyproject.toml holds `pyproject` (when given)."""

    def load_from(
        pyproject: str | None = None,
        *,
        ini: Mapping[str, object | None] | None = None,
        environ: Mapping[str, str] | None = None,
        cli: Mapping[str, object | None] | None = None,
    ) -> Settings:
        path = None
        if pyproject is not None:
            path = tmp_path / "pyproject.toml"
            path.write_text(pyproject)
        return load_settings(project_root=tmp_path, pyproject=path, ini=ini, environ=environ or {}, cli=cli)

    return load_from


# --- precedence ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("layers", "expected_env", "expected_source"),
    [
        ((), "dev", "default"),
        (("pyproject",), "from-pyproject", "[tool.dbsnap] in"),
        (("pyproject", "ini"), "from-ini", "the pytest ini file"),
        (("pyproject", "ini", "environ"), "from-environ", "the environment"),
        (("pyproject", "ini", "environ", "cli"), "from-cli", "the command line"),
        (("pyproject", "cli"), "from-cli", "the command line"),
        (("ini", "environ"), "from-environ", "the environment"),
    ],
)
def test_each_source_beats_the_ones_below_it(
    load: LoadFrom, layers: tuple[str, ...], expected_env: str, expected_source: str
) -> None:
    settings = load(
        '[tool.dbsnap]\nenv = "from-pyproject"\n' if "pyproject" in layers else None,
        ini={"env": "from-ini"} if "ini" in layers else None,
        environ={"DBSNAP_ENV": "from-environ"} if "environ" in layers else None,
        cli={"env": "from-cli"} if "cli" in layers else None,
    )
    assert settings.env == expected_env
    assert settings.source_of("env").startswith(expected_source)


def test_command_line_false_beats_environment_true(load: LoadFrom) -> None:
    # --no-dump-verify stores False; a truthiness merge (`cli or env`) would lose it.
    settings = load(environ={"DBSNAP_VERIFY": "true"}, cli={"verify": False})
    assert settings.verify is False
    assert settings.source_of("verify") == "the command line"


def test_environment_false_beats_pyproject_true(load: LoadFrom) -> None:
    settings = load("[tool.dbsnap]\nallow_remote = true\n", environ={"DBSNAP_ALLOW_REMOTE": "false"})
    assert settings.allow_remote is False
    assert settings.source_of("allow_remote") == "the environment"


def test_ini_false_beats_pyproject_true(load: LoadFrom) -> None:
    settings = load("[tool.dbsnap]\nskip_frontend = true\n", ini={"skip_frontend": "off"})
    assert settings.skip_frontend is False


def test_none_means_not_given_at_every_layer(load: LoadFrom) -> None:
    settings = load('[tool.dbsnap]\nenv = "staging"\n', ini={"env": None}, cli={"env": None})
    assert settings.env == "staging"
    assert settings.source_of("env").startswith("[tool.dbsnap] in")


def test_values_are_typed(load: LoadFrom) -> None:
    settings = load(
        '[tool.dbsnap]\nseed_command = ["python", "-m", "app.seed"]\nrestore_jobs = 3\n',
        environ={"DBSNAP_MIGRATE_COMMAND": "alembic upgrade 'head'", "DBSNAP_START_TIMEOUT": "2.5"},
        ini={"fingerprint_inputs": "migrations/**/*.py, seeds/*.py\napp/models.py"},
    )
    assert settings.seed_command == ("python", "-m", "app.seed")
    # A string is kept as written: placeholders are filled first, and it is split afterwards.
    assert settings.migrate_command == "alembic upgrade 'head'"
    assert settings.restore_jobs == 3
    assert settings.jobs == 3
    assert settings.start_timeout == 2.5
    assert settings.fingerprint_inputs == ("migrations/**/*.py", "seeds/*.py", "app/models.py")


# --- DATABASE_URL -------------------------------------------------------------------------------------------


def test_database_url_never_gives_the_dsn(load: LoadFrom) -> None:
    """DATABASE_URL usually names a developer's own database, which a restore would replace."""
    settings = load(environ={"DATABASE_URL": "postgresql://app@localhost/app"})
    assert settings.dsn is None
    assert settings.source_of("dsn") == "default"
    assert settings.database_url_ignored
    assert not load(environ={}).database_url_ignored


@pytest.mark.parametrize(
    ("pyproject", "environ", "cli", "expected"),
    [
        (None, {"DBSNAP_DSN": "host=/run/dbsnap"}, None, "host=/run/dbsnap"),
        ('[tool.dbsnap]\ndsn = "host=/run/pyproject"\n', {}, None, "host=/run/pyproject"),
        (None, {}, {"dsn": "host=/run/cli"}, "host=/run/cli"),
    ],
    ids=["DBSNAP_DSN", "pyproject", "cli"],
)
def test_database_url_is_ignored_when_dsn_is_given(
    load: LoadFrom,
    pyproject: str | None,
    environ: dict[str, str],
    cli: dict[str, object | None] | None,
    expected: str,
) -> None:
    settings = load(pyproject, environ={**environ, "DATABASE_URL": "postgresql://other@localhost/x"}, cli=cli)
    assert settings.dsn == expected
    assert "DATABASE_URL" not in settings.source_of("dsn")


# --- lists ---------------------------------------------------------------------------------------------------


def test_a_string_where_pyproject_needs_a_list_is_refused_naming_the_list_form(load: LoadFrom) -> None:
    with pytest.raises(ConfigError) as raised:
        load('[tool.dbsnap]\nfingerprint_inputs = "migrations"\n')
    message = str(raised.value)
    assert "Setting 'fingerprint_inputs' from [tool.dbsnap] in" in message
    assert "expected a list of strings: fingerprint_inputs = ['migrations']" in message
    with pytest.raises(ConfigError, match=r"'backend.requires'.*requires = \['node'\]"):
        load('[tool.dbsnap.backend]\ncommand = "serve"\nrequires = "node"\n')


def test_the_environment_keeps_the_comma_separated_form(load: LoadFrom) -> None:
    settings = load('[tool.dbsnap]\nfingerprint_inputs = ["a"]\n', environ={"DBSNAP_FINGERPRINT_INPUTS": "b, c"})
    assert settings.fingerprint_inputs == ("b", "c")


# --- validation errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pyproject", "environ", "cli", "fragments"),
    [
        pytest.param(
            '[tool.dbsnap]\nprovidr = "local"\n',
            {},
            None,
            ["providr", "unknown key", "accepted keys", "provider, dsn"],
            id="unknown-key",
        ),
        pytest.param(
            '[tool.dbsnap.backend]\ncommand = "serve"\nhealth = "/health"\n',
            {},
            None,
            ["[tool.dbsnap.backend]", "health", "unknown key", "accepted keys", "health_url"],
            id="unknown-backend-key",
        ),
        pytest.param(
            None,
            {"DBSNAP_ALLOW_REMOTE": "maybe"},
            None,
            ["'allow_remote'", "DBSNAP_ALLOW_REMOTE", "'maybe'", "expected true or false"],
            id="bad-bool",
        ),
        pytest.param(
            '[tool.dbsnap]\nprovider = "kubernetes"\n',
            {},
            None,
            ["'provider'", "[tool.dbsnap]", "'kubernetes'", "auto, local, docker, external"],
            id="bad-provider",
        ),
        pytest.param(
            None,
            {},
            {"env": "a b"},
            ["'env'", "'a b'", "letters, digits"],
            id="bad-env-name",
        ),
        pytest.param(
            '[tool.dbsnap.backend]\ncommand = "serve"\nport = 70000\n',
            {},
            None,
            ["'backend.port'", "70000", '"auto" or a port number from 1 to 65535'],
            id="bad-port",
        ),
        pytest.param(
            '[tool.dbsnap.backend]\ncommand = "serve"\nport = false\n',
            {},
            None,
            ["'backend.port'", "False", '"auto" or a port number from 1 to 65535'],
            id="bool-port",
        ),
        pytest.param(
            "[tool.dbsnap]\nseed_command = 5\n",
            {},
            None,
            ["'seed_command'", "5", "a string", "list of strings"],
            id="bad-command-type",
        ),
        pytest.param(
            '[tool.dbsnap.frontend]\ncommand = ["npm", 3]\n',
            {},
            None,
            ["'frontend.command'", "['npm', 3]", "list of strings"],
            id="bad-service-command-type",
        ),
        pytest.param(
            None,
            {"DBSNAP_START_TIMEOUT": "nan"},
            None,
            ["'start_timeout'", "DBSNAP_START_TIMEOUT", "'nan'", "number of seconds above 0"],
            id="nan-timeout",
        ),
        pytest.param(
            None,
            {},
            {"restore_jobs": "0"},
            ["'restore_jobs'", "'0'", "whole number of 1 or more"],
            id="zero-jobs",
        ),
        pytest.param(
            '[tool.dbsnap.frontend]\ncwd = "web"\n',
            {},
            None,
            ["[tool.dbsnap.frontend]", "neither a command nor a url", 'command = "..."', 'url = "..."'],
            id="service-without-command",
        ),
    ],
)
def test_bad_configuration_is_a_config_error_naming_key_value_and_what_is_accepted(
    load: LoadFrom,
    pyproject: str | None,
    environ: dict[str, str],
    cli: dict[str, object | None] | None,
    fragments: list[str],
) -> None:
    with pytest.raises(ConfigError) as caught:
        load(pyproject, environ=environ, cli=cli)
    message = str(caught.value)
    for fragment in fragments:
        assert fragment in message
    assert "\n" not in message


def test_bad_value_names_the_ini_option(load: LoadFrom) -> None:
    with pytest.raises(ConfigError, match=r"the ini option dbsnap_verify has the value 'sometimes'"):
        load(ini={"verify": "sometimes"})


def test_invalid_toml_is_a_config_error_naming_file_and_place(load: LoadFrom, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load('[tool.dbsnap]\nprovider = "local\n')
    message = str(caught.value)
    assert str(tmp_path / "pyproject.toml") in message
    assert "not valid TOML" in message
    assert "line 2" in message


def test_non_table_service_is_a_config_error(load: LoadFrom) -> None:
    with pytest.raises(ConfigError, match=r"\[tool\.dbsnap\.backend\] in .* must be a table"):
        load('[tool.dbsnap]\nbackend = "uvicorn app:app"\n')


@pytest.mark.parametrize(
    ("pyproject", "environ", "secret"),
    [
        ('[tool.dbsnap]\ndsn = ["postgresql://u:s3cr3t@db/x"]\n', {}, "s3cr3t"),
        ("[tool.dbsnap]\ncompose_password = 987654321\n", {}, "987654321"),
        ('[tool.dbsnap.backend]\ncommand = "serve"\nenv = "PGPASSWORD=s3cr3t"\n', {}, "s3cr3t"),
        (None, {"DBSNAP_SEED_COMMAND": "psql 'postgresql://u:s3cr3t@db/x"}, "s3cr3t"),
    ],
    ids=["dsn", "compose_password", "service-env", "command-with-url"],
)
def test_a_password_in_a_bad_value_is_never_echoed(
    load: LoadFrom, pyproject: str | None, environ: dict[str, str], secret: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load(pyproject, environ=environ)
    assert secret not in str(caught.value)
    assert "***" in str(caught.value)


# --- paths, services, sources -------------------------------------------------------------------------------


def test_relative_paths_resolve_against_the_project_root(
    load: LoadFrom, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the current folder must not matter
    settings = load(
        '[tool.dbsnap]\ndumps_dir = "data/dumps"\ncompose_file = "dc.yml"\nlogs_dir = "out/logs"\n',
        environ={"DBSNAP_CACHE_DIR": "cache"},
        cli={"pg_bindir": "pg/bin"},
    )
    root = tmp_path.resolve()
    assert settings.dumps_dir == root / "data" / "dumps"
    assert settings.compose_file == root / "dc.yml"
    assert settings.logs_dir == root / "out" / "logs"
    assert settings.cache_dir == root / "cache"
    assert settings.resolved_cache_dir == root / "cache"
    assert settings.pg_bindir == root / "pg" / "bin"


def test_default_paths_are_under_the_project_root_and_absolute_paths_stay(load: LoadFrom, tmp_path: Path) -> None:
    absolute = tmp_path / "abs-dumps"
    settings = load(f"[tool.dbsnap]\ndumps_dir = '{absolute}'\n")
    assert settings.dumps_dir == absolute.resolve()
    assert settings.logs_dir == (tmp_path / "reports" / "logs").resolve()
    assert settings.compose_file == (tmp_path / "docker-compose.dev.yml").resolve()
    assert settings.pg_bindir is None


def test_services_are_parsed_with_cwd_relative_to_the_project(load: LoadFrom, tmp_path: Path) -> None:
    settings = load(
        "[tool.dbsnap.backend]\n"
        'command = "uvicorn app:app --port {port}"\n'
        'cwd = "backend"\n'
        'env = { APP_MODE = "test", WORKERS = 2 }\n'
        'port = "auto"\n'
        'prepare = ["npm ci", ["npm", "run", "build"]]\n'
        "[tool.dbsnap.frontend]\n"
        'command = ["npm", "run", "dev"]\n'
        "port = 5173\n"
    )
    assert settings.backend == ServiceSettings(
        name="backend",
        command="uvicorn app:app --port {port}",  # kept as written: filled first, split afterwards
        cwd=(tmp_path / "backend").resolve(),
        env={"APP_MODE": "test", "WORKERS": "2"},
        port=None,
        prepare=("npm ci", ("npm", "run", "build")),
    )
    assert settings.frontend is not None
    assert settings.frontend.port == 5173
    assert settings.frontend.cwd == tmp_path.resolve()


def test_source_of_reports_where_each_value_came_from(load: LoadFrom, tmp_path: Path) -> None:
    settings = load(
        '[tool.dbsnap]\ndatabase = "shop"\n',
        ini={"provider": "local"},
        environ={"DBSNAP_ENV": "staging"},
        cli={"skip_frontend": True},
    )
    assert settings.source_of("database") == f"[tool.dbsnap] in {tmp_path / 'pyproject.toml'}"
    assert settings.source_of("provider") == "the pytest ini file"
    assert settings.source_of("env") == "the environment"
    assert settings.source_of("skip_frontend") == "the command line"
    assert settings.source_of("verify") == "default"


def test_find_pyproject_walks_upwards_to_the_nearest(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'outer'\n")
    deep = tmp_path / "pkg" / "src" / "mod"
    deep.mkdir(parents=True)
    assert find_pyproject(deep) == tmp_path / "pyproject.toml"
    (tmp_path / "pkg" / "pyproject.toml").write_text("[project]\nname = 'inner'\n")
    assert find_pyproject(deep) == tmp_path / "pkg" / "pyproject.toml"
    assert find_pyproject(tmp_path) == tmp_path / "pyproject.toml"


def test_find_pyproject_ignores_a_folder_named_pyproject_toml(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "sub" / "pyproject.toml").mkdir(parents=True)
    assert find_pyproject(tmp_path / "sub") == tmp_path / "pyproject.toml"


def test_cli_values_keep_flags_not_given_as_none() -> None:
    namespace = argparse.Namespace(dbsnap_env="ci", dbsnap_verify=False, dbsnap_provider=None)
    values = cli_values(namespace)
    assert values["env"] == "ci"
    assert values["verify"] is False
    assert values["provider"] is None
    assert set(values) == {option.key for option in OPTIONS}
    assert cli_values(namespace, keys=["env"]) == {"env": "ci"}


def test_every_option_has_one_name_per_source() -> None:
    for option in OPTIONS:
        assert option.ini_name == f"dbsnap_{option.key}"
        assert option.env_name == f"DBSNAP_{option.key.upper()}"
        assert option.key in Settings.__dataclass_fields__
    flags = [option.flag for option in OPTIONS if option.flag]
    assert len(flags) == len(set(flags))
