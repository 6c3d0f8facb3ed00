"""Reference app for pytest-dbsnap: a catalogue of "reality nodes".

It exists so the plugin has a realistic target to test against: an Alembic-migrated
PostgreSQL schema (``python -m refapp.migrate``), a deliberately row-by-row seed that is
slow enough to make restoring a dump worthwhile (``python -m refapp.seed``), a Starlette
JSON API (``python -m refapp.backend``) and a static page that calls it
(``python -m refapp.frontend``). Every entry point is configured through environment
variables only (``DATABASE_URL``, ``PORT``, ``BACKEND_URL``), as a test harness would
start it.
"""
