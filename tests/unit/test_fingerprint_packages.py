"""fingerprint_packages: a package's installed version is an input of the fingerprint, so upgrading a package
whose migrations live inside it (Wagtail's) makes the dump stale. The package here is real: a .dist-info on
sys.path, upgraded the way pip does it (the old folder removed, the new one written)."""

from __future__ import annotations

import importlib
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from pytest_dbsnap.config.loading import load_settings
from pytest_dbsnap.config.settings import Settings
from pytest_dbsnap.dumps.fingerprint import NOT_INSTALLED, compute_fingerprint, package_version
from pytest_dbsnap.dumps.meta import DumpMeta
from pytest_dbsnap.stack.session import staleness


def _install(site: Path, version: str) -> None:
    """What pip leaves behind for a distribution: its .dist-info folder with METADATA (old versions removed)."""
    for old in site.glob("tiny_dbsnap_pkg-*.dist-info"):
        shutil.rmtree(old)
    info = site / f"tiny_dbsnap_pkg-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: tiny-dbsnap-pkg\nVersion: {version}\n")
    importlib.invalidate_caches()  # a new process would see the new folder; this one caches path listings


def _settings(tmp_path: Path, packages: str) -> Settings:
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(f"[tool.dbsnap]\nfingerprint_packages = {packages}\n")
    return load_settings(project_root=tmp_path, pyproject=pyproject, ini={}, environ={}, cli={})


def _meta_for(settings: Settings) -> DumpMeta:
    fingerprint, inputs = compute_fingerprint(settings)
    return DumpMeta(
        name="20261202T090000Z-nogit-00000000",
        environment="dev",
        database="app",
        created_at="2026-12-02T09:00:00Z",
        sha256="0" * 64,
        size_bytes=1,
        pg_dump_version="15.0",
        server_version="15.0",
        fingerprint=fingerprint,
        fingerprint_inputs=inputs,
    )


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    folder = tmp_path / "site-packages"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    yield folder
    importlib.invalidate_caches()


def test_an_upgrade_makes_the_dump_stale_and_a_downgrade_current_again(tmp_path: Path, site: Path) -> None:
    _install(site, "1.0")
    settings = _settings(tmp_path, '["Tiny_DBsnap.pkg"]')
    assert package_version("tiny-dbsnap-pkg") == "1.0"
    meta = _meta_for(settings)
    assert staleness(settings, meta) is None
    _install(site, "1.1")
    assert staleness(settings, meta) == "stale: package:tiny-dbsnap-pkg changed"
    _install(site, "1.0")
    assert staleness(settings, meta) is None


def test_a_package_not_installed_is_recorded_and_installing_it_makes_the_dump_stale(tmp_path: Path, site: Path) -> None:
    settings = _settings(tmp_path, '["tiny-dbsnap-pkg"]')
    assert package_version("tiny-dbsnap-pkg") == NOT_INSTALLED
    meta = _meta_for(settings)
    assert "package:tiny-dbsnap-pkg" in meta.fingerprint_inputs
    _install(site, "1.0")
    assert staleness(settings, meta) == "stale: package:tiny-dbsnap-pkg changed"


def test_without_the_setting_the_fingerprint_is_what_it_was(tmp_path: Path, site: Path) -> None:
    """Existing dumps stay current: an empty list adds no input."""
    _install(site, "1.0")
    with_packages = _settings(tmp_path, '["tiny-dbsnap-pkg"]')
    without = replace(with_packages, fingerprint_packages=())
    assert not any(key.startswith("package:") for key in compute_fingerprint(without)[1])
    assert compute_fingerprint(without)[0] != compute_fingerprint(with_packages)[0]
