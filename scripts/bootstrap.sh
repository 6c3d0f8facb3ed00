#!/usr/bin/env bash
# Set up a fresh machine for this repository: a virtual environment with the project installed, and
# PostgreSQL server binaries and Chromium (from Debian's packages, only when none are found). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$stamp" ]; then
  echo "bootstrap: installing pytest-dbsnap with the app, dev and browser extras"
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e '.[app,dev,browser]'
  rm -f .venv/.installed-* && touch "$stamp"
fi

have_postgres() {
  .venv/bin/python - <<'PY'
import sys
from pytest_dbsnap.errors import DbsnapError
from pytest_dbsnap.postgres import find_pg_tools
try:
    tools = find_pg_tools(None)
except DbsnapError as exc:
    sys.exit(1)
print(f"bootstrap: PostgreSQL {tools.version} binaries in {tools.bindir}")
PY
}
if ! have_postgres; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "bootstrap: no PostgreSQL binaries found; installing Debian's postgresql package"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    have_postgres
  else
    echo "bootstrap: no PostgreSQL binaries found. Install PostgreSQL (apt-get install postgresql," \
         "brew install postgresql) or set DBSNAP_PG_BINDIR to the folder of initdb and pg_ctl." >&2
    exit 1
  fi
fi

# The frontend phase renders the page in headless Chromium through Playwright, driving the system's Chromium by
# its path: no `playwright install` download, which closed CI networks refuse.
have_chromium() {
  .venv/bin/python - <<'PY'
import sys
from pytest_dbsnap.browser import find_chromium
found = find_chromium(None)
if found is None:
    sys.exit(1)
print(f"bootstrap: Chromium for the frontend phase at {found}")
PY
}
if ! have_chromium; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "bootstrap: no Chromium found; installing Debian's chromium package"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    have_chromium
  else
    echo "bootstrap: no Chromium found for the frontend phase. Install one (apt-get install chromium," \
         "brew install --cask chromium) or set browser_path in [tool.dbsnap.frontend] to its executable." >&2
    exit 1
  fi
fi
