# The two commands of the README. Each sets up what it needs on a fresh machine first.
.PHONY: setup smoke test lint bench

setup:
	@bash scripts/bootstrap.sh

# The main job: the ordered smoke suite against the reference app on the embedded PostgreSQL.
smoke: setup
	.venv/bin/pytest -m smoke --html=reports/smoke.html --self-contained-html --junitxml=reports/junit.xml

# Everything: lint, types, unit, integration, plugin and smoke tests.
test: setup lint
	.venv/bin/pytest -p no:cacheprovider

lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy

bench: setup
	.venv/bin/python benchmarks/run.py
