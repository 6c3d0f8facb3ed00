"""One frozen Settings object per session or CLI call, built once (config/loading.py) and passed down. The
layers below the stack take plain values or small Protocols, never this object."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pytest_dbsnap.config.checks import CheckSpec
from pytest_dbsnap.config.options import OPTIONS_BY_KEY
from pytest_dbsnap.config.parsers import DiskBudget
from pytest_dbsnap.config.placeholders import Command


@dataclass(frozen=True)
class ServiceSettings:
    """How to start one app service ([tool.dbsnap.backend] or [tool.dbsnap.frontend])."""

    name: str
    command: Command | None  # None: not started; `url` is a service that runs already (or is served by another)
    cwd: Path
    env: Mapping[str, str] = field(default_factory=dict)
    port: int | None = None  # None: pick a free port at start
    health_url: str = "http://127.0.0.1:{port}/"
    expected_status: int = 200
    start_timeout: float = 30.0
    prepare: tuple[Command, ...] = ()
    url: str | None = None  # None: http://127.0.0.1:{port}; placeholders allowed
    requires: tuple[str, ...] = ()  # programs the environment phase checks for (node, npm...)
    # The frontend's browser checks (frontend table only): whether to run them, which Chromium, what to wait for.
    browser: str = "auto"
    browser_path: Path | None = None  # None: chromium, chromium-browser, google-chrome... on PATH
    render_selector: str | None = None  # None: the page's load event is enough
    # What the app's own page is known to do, so that the checks stay on for everything else.
    allowed_console_errors: tuple[str, ...] = ()  # regular expressions, searched in each console error
    ignored_axe_rules: tuple[str, ...] = ()  # axe-core rule ids, e.g. "color-contrast"


@dataclass(frozen=True)
class Settings:
    """Everything a session or a CLI call needs to know, resolved once."""

    project_root: Path
    provider: str = "auto"
    dsn: str | None = None
    database: str = "app"
    env: str = "dev"
    dumps_dir: Path = Path("seeds/dumps")
    pg_bindir: Path | None = None
    postgres_binaries: str = "auto"
    cache_dir: Path | None = None
    compose_file: Path = Path("docker-compose.dev.yml")
    compose_service: str = "postgres"
    compose_user: str = "postgres"
    compose_password: str = "postgres"  # noqa: S105 - the compose file's development default, not a secret
    compose_command: tuple[str, ...] | None = None
    allow_remote: bool = False
    replace_database: bool = False
    migrate_command: Command | None = None
    seed_command: Command | None = None
    schema_version_query: str | None = None
    fingerprint_inputs: tuple[str, ...] = ()
    fingerprint_packages: tuple[str, ...] = ()
    django: bool = True
    verify: bool = True
    restore_jobs: int | None = None
    skip_dump_restore: bool = False
    regenerate_dump: bool = False
    skip_frontend: bool = False
    logs_dir: Path = Path("reports/logs")
    required_tools: tuple[str, ...] = ()
    warm_cluster: bool = True
    cluster_snapshot: bool = True
    fresh_db_pool: int = 1
    disk_budget: DiskBudget | None = None
    start_timeout: float = 30.0
    remote: str | None = None
    remote_endpoint_url: str | None = None
    push_dump: bool = False
    builtin_checks: bool = True
    skip_checks: tuple[str, ...] = ()
    backend: ServiceSettings | None = None
    frontend: ServiceSettings | None = None
    app_env: Mapping[str, str] = field(default_factory=dict)  # [tool.dbsnap.env]: for commands and services
    checks: tuple[CheckSpec, ...] = ()  # [[tool.dbsnap.checks]]
    has_table: bool = False  # [tool.dbsnap] exists: a smoke run then gets the built-in checks
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)
    flags: Mapping[str, str] = field(default_factory=dict, compare=False)  # the caller's own flag names (CLI)
    database_url_ignored: bool = field(default=False, compare=False)  # DATABASE_URL was set; it never picks a server

    def flag_for(self, key: str) -> str | None:
        """The flag that sets `key` where these settings were built (the CLI's names differ from pytest's)."""
        return self.flags.get(key) or OPTIONS_BY_KEY[key].flag

    @property
    def jobs(self) -> int:
        return self.restore_jobs or os.cpu_count() or 1

    @property
    def resolved_cache_dir(self) -> Path:
        if self.cache_dir is not None:
            return self.cache_dir
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        return Path(base) / "pytest-dbsnap"

    @property
    def warm_key(self) -> str | None:
        """Parked clusters are per project, so two projects never drop each other's templates."""
        if not self.warm_cluster:
            return None
        return hashlib.sha256(str(self.project_root.resolve()).encode()).hexdigest()[:10]

    def source_of(self, key: str) -> str:
        return self.sources.get(key, "default")

    @property
    def configured(self) -> bool:
        """A [tool.dbsnap] table or any dbsnap option: otherwise the plugin stays idle until a fixture is used."""
        return self.has_table or bool(self.sources)
