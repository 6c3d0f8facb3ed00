"""Pick a provider (auto: DSN given -> external; compose file and a container engine -> docker; else local)."""

from __future__ import annotations

from collections.abc import Callable

from pytest_dbsnap.config.settings import Settings
from pytest_dbsnap.core import reaper
from pytest_dbsnap.postgres.base import Server


def choose_provider(settings: Settings) -> tuple[str, str]:
    """The provider to use and why, for the report header."""
    if settings.provider != "auto":
        return settings.provider, f"set by {settings.source_of('provider')}"
    if settings.dsn:
        return "external", f"a DSN was given by {settings.source_of('dsn')}"
    from pytest_dbsnap.postgres.compose import compose_ready

    if settings.compose_file.is_file() and compose_ready(settings.compose_command):
        return "docker", f"{settings.compose_file.name} exists and a Docker engine answers"
    if settings.compose_file.is_file():
        return "local", f"no Docker engine answers (for {settings.compose_file.name}), so the embedded cluster"
    return "local", "no DSN and no compose file, so the embedded cluster"


def start_server(settings: Settings, provider: str | None = None) -> Server:
    """A running server for these settings; the caller stops it (it is a context manager)."""
    provider = provider or choose_provider(settings)[0]
    if provider == "external":
        from pytest_dbsnap.errors import ConfigError
        from pytest_dbsnap.postgres.external import connect_external

        if not settings.dsn:
            raise ConfigError(
                f"The external provider needs a DSN: pass {settings.flag_for('dsn')}, set DBSNAP_DSN, or set "
                f"dsn in [tool.dbsnap] (DATABASE_URL is not read, so that the database your app uses is never "
                f"replaced by accident)."
            )
        return connect_external(
            settings.dsn,
            allow_remote=settings.allow_remote,
            binaries=settings,
            timeout=settings.start_timeout,
            allow_remote_flag=settings.flag_for("allow_remote") or "--dbsnap-allow-remote",
            dsn_flag=settings.flag_for("dsn") or "--dbsnap-dsn",
        )
    if provider == "docker":
        from pytest_dbsnap.postgres.compose import start_compose

        return start_compose(
            settings.compose_file,
            settings.compose_service,
            user=settings.compose_user,
            password=settings.compose_password,
            timeout=settings.start_timeout,
            binaries=settings,
            compose_command=settings.compose_command,
        )
    from pytest_dbsnap.postgres.local import start_local_cluster
    from pytest_dbsnap.stack.session import snapshot_source

    return start_local_cluster(
        settings,
        settings.resolved_cache_dir,
        settings.start_timeout,
        warm_key=settings.warm_key,
        warm_owner=settings.project_root,
        snapshot_of=snapshot_source(settings),
    )


def watch_server(server: Server) -> Callable[[], None]:
    """Tell this process's reaper what to clean up should the process die: a local cluster of ours as a whole
    (the postmaster and its folder), else the temporary databases the process makes on the server. Returns the
    call that forgets it, for after a normal stop."""
    from pytest_dbsnap.postgres.databases import drop_temporary_instruction
    from pytest_dbsnap.postgres.local import LocalCluster
    from pytest_dbsnap.postgres.parking import cluster_instructions

    if isinstance(server, LocalCluster):
        folder = server.folder
        if folder is not None:
            return reaper.watch(lambda watchdog: watchdog.register(*cluster_instructions(folder)))
    conninfo = server.conninfo()
    return reaper.watch(lambda watchdog: watchdog.register(drop_temporary_instruction(conninfo, watchdog.owner)))
