#!/usr/bin/env bash
# CI for a plain install: `pip install .` with no extras into a throwaway virtual environment, then a tiny project
# that uses the plugin (the dbsnap_db fixture and a smoke phase) with warnings as errors and without pytest-xdist, as a
# strict user project would. Exits non-zero when the plain install cannot do that, and when no test ran.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
work=$(mktemp -d "${TMPDIR:-/tmp}/dbsnap-plain.XXXXXX")
trap 'rm -rf "$work"' EXIT

# Installed from a copy of the sources: setuptools writes build/ and *.egg-info beside what it builds.
mkdir "$work/source"
cp pyproject.toml README.md "$work/source/"
cp -r pytest_dbsnap "$work/source/"
find "$work/source" -name __pycache__ -prune -exec rm -rf {} +
"$PYTHON" -m venv "$work/venv"
echo "plain install: pip install . (no extras) into $work/venv"
"$work/venv/bin/python" -m pip install --quiet --disable-pip-version-check "$work/source" 2>&1 \
  | { grep -v "^WARNING: Location .* is ignored" || true; }

mkdir "$work/project"
cat > "$work/project/pyproject.toml" <<'TOML'
[tool.pytest.ini_options]
addopts = ["--strict-markers", "--strict-config"]
filterwarnings = ["error"]

[tool.dbsnap]
database = "plain_app"
warm_cluster = false
TOML
cat > "$work/project/test_01_plain.py" <<'PY'
import pytest

pytestmark = pytest.mark.smoke


def test_the_database_answers(dbsnap_db):
    assert dbsnap_db.execute("SELECT 1").fetchone() == (1,)


def test_it_was_kept_as_it_was(dbsnap_database):
    assert dbsnap_database.method == "kept as it was"
PY

# A project without a seed command keeps its database (--skip-dump-restore). Nothing of the caller's
# environment but the basics reaches the run: no DBSNAP_* settings, no DATABASE_URL.
cd "$work/project"
if "$work/venv/bin/python" -c "import refapp" 2>/dev/null; then
  echo "plain install: FAILED, the install put the reference app (refapp) into the environment" >&2
  exit 1
fi
status=0
env -i PATH="$PATH" HOME="$HOME" LANG="${LANG:-C.UTF-8}" TMPDIR="${TMPDIR:-/tmp}" \
  "$work/venv/bin/python" -m pytest -W error -p no:cacheprovider -p no:xdist --skip-dump-restore \
  > "$work/output.txt" 2>&1 || status=$?
cat "$work/output.txt"
if [ "$status" -ne 0 ]; then
  echo "plain install: FAILED, pytest exited with $status" >&2
  exit 1
fi
if ! grep -Eq "^=+ 2 passed" "$work/output.txt"; then
  echo "plain install: FAILED, the two tests did not both run and pass" >&2
  exit 1
fi
echo "plain install: OK"
