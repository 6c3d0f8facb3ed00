#!/usr/bin/env bash
# Set up a fresh machine for this repository: a virtual environment with the project installed, and
# PostgreSQL server binaries (from Debian's packages, only when none are found). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$stamp" ]; then
  echo "bootstrap: installing pytest-dbsnap with the app and dev extras"
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e '.[app,dev]'
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
