"""Session state shared by the plugin's modules, kept in `config.stash` under typed keys."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from pytest_dbsnap.config.settings import Settings
from pytest_dbsnap.core.progress import Reporter
from pytest_dbsnap.core.reaper import Reaper
from pytest_dbsnap.plugin.smoke import PHASES_KEY

if TYPE_CHECKING:
    from pytest_dbsnap.postgres.base import Server  # noqa: F401 - named in a StashKey below
    from pytest_dbsnap.stack.services import Service
    from pytest_dbsnap.stack.session import DatabaseOutcome  # noqa: F401 - named in a StashKey below

SETTINGS_KEY = pytest.StashKey[Settings]()
PROVIDER_KEY = pytest.StashKey[tuple[str, str]]()
OUTCOME_KEY = pytest.StashKey["DatabaseOutcome"]()
SERVER_KEY = pytest.StashKey["Server"]()
SERVICES_KEY = pytest.StashKey[dict[str, "Service"]]()
REAPER_KEY = pytest.StashKey[Reaper]()
PROGRESS_KEY = pytest.StashKey[Reporter]()  # the slow steps: live line, CI lines, durations
OWN_CHECKS_KEY = pytest.StashKey[int]()  # how many checks of its own the plugin added to the run
__all__ = [
    "OUTCOME_KEY",
    "OWN_CHECKS_KEY",
    "PHASES_KEY",
    "PROGRESS_KEY",
    "PROVIDER_KEY",
    "REAPER_KEY",
    "SERVER_KEY",
    "SERVICES_KEY",
    "SETTINGS_KEY",
    "WORKER_DATABASES_KEY",
    "WORKER_WARNINGS_KEY",
    "provider_choice",
    "worker_id",
]
WORKER_DATABASES_KEY = pytest.StashKey[list[str]]()
WORKER_WARNINGS_KEY = pytest.StashKey[list[str]]()  # the xdist workers' session warnings, each once


def provider_choice(config: pytest.Config) -> tuple[str, str]:
    """The provider and why, decided once per session (it may ask whether a Docker engine answers)."""
    if PROVIDER_KEY not in config.stash:
        from pytest_dbsnap.stack.servers import choose_provider

        config.stash[PROVIDER_KEY] = choose_provider(config.stash[SETTINGS_KEY])
    return config.stash[PROVIDER_KEY]


def worker_id(config: pytest.Config) -> str | None:
    """The pytest-xdist worker id (gw0, gw1...) in a worker process, else None."""
    workerinput = getattr(config, "workerinput", None)
    return str(workerinput["workerid"]) if workerinput else None
