"""`dbsnap init`: look at an existing project, write a commented [tool.dbsnap] block for what it found into
pyproject.toml, and say what is left to fill. It never replaces a block that is there already."""

from __future__ import annotations

import configparser
import importlib.util
import json
import os
import re
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from pytest_dbsnap.config.loading import load_settings
from pytest_dbsnap.errors import ConfigError
from pytest_dbsnap.postgres.binaries import BinariesChoice
from pytest_dbsnap.postgres.compose_image import compose_major_advice, postgres_images

_COMPOSE_FILES = ("docker-compose.dev.yml", "docker-compose.yml", "docker-compose.yaml", "compose.yaml", "compose.yml")
_JS_CONFIG = (".js", ".ts", ".mjs", ".cjs")


@dataclass
class Detected:
    """What init found, as lines of the block and things the user still has to fill."""

    found: list[str] = field(default_factory=list)  # what was recognised, for the summary
    top: list[str] = field(default_factory=list)  # lines of [tool.dbsnap]
    env: list[str] = field(default_factory=list)  # lines of [tool.dbsnap.env]
    backend: list[str] = field(default_factory=list)  # lines of [tool.dbsnap.backend] (commented when unknown)
    frontend: list[str] = field(default_factory=list)
    todo: list[str] = field(default_factory=list)
    compose_file: Path | None = None  # a compose file with a postgres service


def _toml(value: str) -> str:
    """A TOML basic string (JSON's string syntax is one)."""
    return json.dumps(value)


def _alembic(root: Path, found: Detected) -> bool:
    ini = root / "alembic.ini"
    if not ini.is_file():
        return False
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(ini)
    location = parser.get("alembic", "script_location", fallback="alembic").replace("%(here)s/", "")
    found.found.append(f"Alembic (alembic.ini, migrations in {location}/versions)")
    # A generated env.py reads sqlalchemy.url from alembic.ini: set it to the database being migrated. The
    # dialect names the driver the project has; '%' is doubled for alembic.ini's interpolation.
    driver = "postgresql+psycopg://" if importlib.util.find_spec("psycopg") else "postgresql://"
    code = (
        "import os; from alembic import command; from alembic.config import Config; "
        "config = Config('alembic.ini'); "
        f"url = os.environ['DATABASE_URL'].replace('postgresql://', '{driver}', 1); "
        "config.set_main_option('sqlalchemy.url', url.replace('%', '%%')); "
        "command.upgrade(config, 'head')"
    )
    found.top += [
        "# Alembic: upgrade the database named by DATABASE_URL to head (alembic.ini's sqlalchemy.url is set to it).",
        f"migrate_command = [{_toml('python')}, {_toml('-c')}, {_toml(code)}]",
        'schema_version_query = "SELECT version_num FROM alembic_version"',
        f"fingerprint_inputs = [{_toml(location + '/versions')}]",
    ]
    return True


_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def _requirements(root: Path, *, default: str) -> list[str]:
    """The distribution names a Python project depends on (requirements.txt, else pyproject's
    [project].dependencies), lower-cased; `default` when neither names any."""
    names: list[str] = []
    requirements = root / "requirements.txt"
    if requirements.is_file():
        lines = requirements.read_text(errors="replace").splitlines()
    else:
        try:
            project = tomllib.loads((root / "pyproject.toml").read_text()).get("project", {})
        except (OSError, tomllib.TOMLDecodeError):
            project = {}
        dependencies = project.get("dependencies", []) if isinstance(project, dict) else []
        lines = [line for line in dependencies if isinstance(line, str)]
    for line in lines:
        match = _REQUIREMENT.match(line)
        if match is not None and not line.lstrip().startswith(("#", "-")):
            name = match[1].lower()
            if name not in names:
                names.append(name)
    return names or [default]


def _django(root: Path, found: Detected) -> bool:
    if not (root / "manage.py").is_file():
        return False
    found.found.append("Django (manage.py)")
    found.top += [
        "# Django: the commands get DJANGO_SETTINGS_MODULE=pytest_dbsnap.django_settings, your settings with the",
        "# session's database as DATABASES['default']: settings.py stays as it is (django = false turns this off).",
        'migrate_command = "python manage.py migrate --noinput"',
        'schema_version_query = "SELECT app, name FROM django_migrations ORDER BY app, name"  # hashed',
        'fingerprint_inputs = ["**/migrations/*.py"]',
        "# Migrations that ship inside packages (Django's own, Wagtail's...): a new version makes the dump stale.",
        f"fingerprint_packages = [{', '.join(_toml(name) for name in _requirements(root, default='django'))}]",
    ]
    found.backend += [
        'command = "python manage.py runserver 127.0.0.1:{port} --noreload"',
        'health_url = "{backend_url}/admin/login/"',
    ]
    found.frontend += [
        "# The admin UI is served by the backend: nothing is started, it is checked (and rendered in a browser).",
        'url = "{backend_url}/admin/login/"',
    ]
    return True


def _node(root: Path, found: Detected) -> bool:
    """A package.json: its migration tool or npm scripts; True when a migrate command was found."""
    package = root / "package.json"
    if not package.is_file():
        return False
    try:
        scripts = json.loads(package.read_text()).get("scripts", {}) or {}
    except (json.JSONDecodeError, AttributeError):
        scripts = {}
    text = package.read_text()
    runner = "npx"
    migrate = seed = None
    tool = None
    if (root / "prisma" / "schema.prisma").is_file():
        tool, migrate, seed = "Prisma", f"{runner} prisma migrate deploy", f"{runner} prisma db seed"
        found.top.append('fingerprint_inputs = ["prisma/schema.prisma", "prisma/migrations"]')
    elif any((root / f"knexfile{ext}").is_file() for ext in _JS_CONFIG):
        tool, migrate, seed = "Knex", f"{runner} knex migrate:latest", f"{runner} knex seed:run"
        found.top.append('fingerprint_inputs = ["migrations", "seeds"]')
    elif any((root / f"drizzle.config{ext}").is_file() for ext in _JS_CONFIG):
        tool, migrate = "Drizzle", f"{runner} drizzle-kit migrate"
        found.top.append('fingerprint_inputs = ["drizzle"]')
    elif (root / ".sequelizerc").is_file() or '"sequelize-cli"' in text:
        tool = "Sequelize"
        migrate = f"{runner} sequelize-cli db:migrate --url {{database_url}}"
        seed = f"{runner} sequelize-cli db:seed:all --url {{database_url}}"
        found.top.append('fingerprint_inputs = ["migrations", "seeders"]')
    for name in ("migrate", "db:migrate", "migrate:latest"):
        if migrate is None and name in scripts:
            migrate = f"npm run {name}"
    for name in ("seed", "db:seed"):
        if seed is None and name in scripts:
            seed = f"npm run {name}"
    found.found.append(f"Node (package.json{', ' + tool + ' migrations' if tool else ''})")
    if migrate and not any(line.startswith("migrate_command") for line in found.top):
        found.top.insert(0, f"migrate_command = {_toml(migrate)}   # gets DATABASE_URL")
    if seed:
        found.top.insert(1 if migrate else 0, f"seed_command = {_toml(seed)}")
    start = next((name for name in ("start", "dev", "serve") if name in scripts), None)
    if start is not None:
        found.backend += [
            f'command = "npm run {start}"   # gets PORT and DATABASE_URL',
            'health_url = "{backend_url}/"',
            'requires = ["node", "npm"]',
        ]
        found.todo.append("check that `npm run start` listens on $PORT and set health_url to its health route")
    return migrate is not None  # no migration tool found: the summary asks for migrate_command


def _compose(root: Path, found: Detected) -> bool:
    for name in _COMPOSE_FILES:
        path = root / name
        if not path.is_file():
            continue
        images = postgres_images(path.read_text(errors="replace"))
        if not images:
            continue
        service = images[0].service
        found.compose_file = path
        found.found.append(f"a compose file with PostgreSQL ({name}, service {service!r})")
        found.top += [
            f"# The docker provider runs the {service!r} service of {name} (the default is a local cluster).",
            '# provider = "docker"',
            f"compose_file = {_toml(name)}",
            f"compose_service = {_toml(service)}",
            "# compose_user / compose_password: that service's POSTGRES_USER and POSTGRES_PASSWORD (postgres)",
        ]
        return True
    return False


def detect(root: Path) -> Detected:
    found = Detected()
    found.top.append('database = "app"                      # the database the dump is restored into')
    migrations = [_alembic(root, found), _django(root, found), _node(root, found)]
    _compose(root, found)
    if not any(migrations):
        found.top += [
            '# migrate_command = "..."             # migrates the database named by $DATABASE_URL (or {database_url})',
        ]
        found.todo.append("set migrate_command: the command that brings an empty database to your schema")
    if not any(line.startswith("seed_command") for line in found.top):
        found.top.append(
            'seed_command = "python -c pass"   # TODO: your seed script; this one seeds nothing, the dump is empty'
        )
        found.todo.append("replace seed_command with what fills the database with your development data")
    if not found.backend:
        found.todo.append(
            "describe [tool.dbsnap.backend] (command with {port}, health_url) so it is started and checked"
        )
    found.env += [
        "# Your app's own variables, placeholders allowed: {database_url} {database} {pg_host} {pg_port} {pg_user}",
        "# {pg_password} {port} {backend_url} {frontend_url}. A service's own env wins over this table.",
        '# DB_CONNECTION_STRING = "{database_url}"',
    ]
    return found


def _first_of_each_key(lines: list[str]) -> list[str]:
    """Two detections may both set a key (an Alembic project with a package.json): the first one stays."""
    seen: set[str] = set()
    kept = []
    for line in lines:
        key = re.match(r"^([a-z_]+)\s*=", line)
        if key is not None:
            if key[1] in seen:
                continue
            seen.add(key[1])
        kept.append(line)
    return kept


def render(found: Detected) -> str:
    lines = [
        "# pytest-dbsnap: `pytest -m smoke` restores (or generates) the seeded database, starts the services and",
        "# runs the smoke phases. Written by `dbsnap init`; found: " + ("; ".join(found.found) or "nothing specific"),
        "[tool.dbsnap]",
        *_first_of_each_key(found.top),
        "",
        "[tool.dbsnap.env]",
        *found.env,
        "",
    ]
    if found.backend:
        lines += ["[tool.dbsnap.backend]", *found.backend, ""]
    else:
        lines += [
            "# [tool.dbsnap.backend]",
            '# command = "..."                     # gets PORT and DATABASE_URL; {port} works in the arguments',
            '# health_url = "{backend_url}/health"',
            '# url = "https://staging.example.com"  # instead of command: a backend that runs already',
            "",
        ]
    if found.frontend:
        lines += ["[tool.dbsnap.frontend]", *found.frontend, ""]
    else:
        lines += [
            "# [tool.dbsnap.frontend]",
            '# url = "{backend_url}/"              # a UI the backend serves; or command = "..." to start one',
            "",
        ]
    lines += [
        "# Checks of your data and API, no test code needed:",
        "# [[tool.dbsnap.checks]]",
        '# name = "users"',
        '# sql = "SELECT count(*) FROM users"',
        "# at_least = 1",
        "",
    ]
    return "\n".join(lines)


# What a session writes into the project that is not source: its reports and logs, and cluster snapshots (built
# for one machine's PostgreSQL, CPU and libc; CI caches or `dbsnap push` carry them, not git).
GITIGNORED = ("reports/", "seeds/dumps/**/*.pgdata-*")


def ignore_outputs(root: Path) -> list[str]:
    """Add the lines of GITIGNORED that .gitignore lacks (only in a git work tree); the lines added."""
    if not (root / ".git").exists():
        return []
    gitignore = root / ".gitignore"
    existing = gitignore.read_text() if gitignore.is_file() else ""
    missing = [line for line in GITIGNORED if line not in existing.splitlines()]
    if missing:
        prefix = "" if not existing or existing.endswith("\n") else "\n"
        with gitignore.open("a") as handle:
            handle.write(prefix + "# pytest-dbsnap: reports and machine-specific cluster snapshots\n")
            handle.write("".join(f"{line}\n" for line in missing))
    return missing


def init_project(root: Path, *, dry_run: bool, binaries: BinariesChoice | None = None) -> tuple[str, list[str], Path]:
    """(the block, what is left to fill, the pyproject.toml) after writing the block unless `dry_run`.

    `binaries` is where the sessions' PostgreSQL programs come from (default: the settings of the environment,
    DBSNAP_POSTGRES_BINARIES and DBSNAP_PG_BINDIR, as the block leaves them unset): a compose file's postgres
    image must run their major, or it cannot restore the dumps their pg_dump writes."""
    pyproject = root / "pyproject.toml"
    existing = pyproject.read_text() if pyproject.is_file() else ""
    try:
        tool = tomllib.loads(existing).get("tool", {})
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{pyproject} is not valid TOML ({exc}); fix it before running dbsnap init.") from exc
    if isinstance(tool, dict) and "dbsnap" in tool:
        raise ConfigError(
            f"{pyproject} has a [tool.dbsnap] block already, and dbsnap init never replaces one. Edit it, or "
            f"move it away and run dbsnap init again (dbsnap init --dry-run prints what it would write)."
        )
    found = detect(root)
    if found.compose_file is not None:
        choice = binaries if binaries is not None else load_settings(project_root=root, environ=os.environ)
        advice = compose_major_advice(found.compose_file, choice)
        if advice is not None:
            found.todo.insert(0, advice)
    block = render(found)
    if not dry_run:
        separator = "" if not existing or existing.endswith("\n\n") else ("\n" if existing.endswith("\n") else "\n\n")
        text = existing + separator + block
        tomllib.loads(text)  # what we write must read back
        # Atomically: a crash leaves the old file, never half of the new one.
        fd, temporary = tempfile.mkstemp(dir=root, prefix=".pyproject.", suffix=".tmp")
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, pyproject)
    return block, found.todo, pyproject
