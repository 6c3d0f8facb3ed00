# The two commands of the README. Each sets up what it needs on a fresh machine first.
.PHONY: setup smoke test lint bench plain

setup:
	@bash scripts/bootstrap.sh

# The main job: the ordered smoke suite against the reference app on the embedded PostgreSQL.
smoke: setup
	.venv/bin/pytest -m smoke --html=reports/smoke.html --self-contained-html --junitxml=reports/junit.xml

# Everything: lint, types, unit, integration, plugin and smoke tests, then a plain install (no extras) used by a
# strict project (warnings as errors, no pytest-xdist).
test: lint
	@bash scripts/bootstrap.sh test
	.venv/bin/pytest -p no:cacheprovider
	bash scripts/plain_install_check.sh

# `pip install .` without extras into a throwaway venv, and a tiny project with -W error against it.
plain:
	bash scripts/plain_install_check.sh

lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy

bench: setup
	.venv/bin/python benchmarks/run.py
