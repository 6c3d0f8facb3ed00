"""Phase 3, backend: it started on the restored database, is healthy, and its API answers correctly."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from pytest_dbsnap import RunningService, Settings

pytestmark = [pytest.mark.smoke, pytest.mark.order(3)]


def test_prepare_steps_ran(backend: RunningService, dbsnap_settings: Settings) -> None:
    assert dbsnap_settings.backend is not None
    if not dbsnap_settings.backend.prepare:
        pytest.skip("the backend has no prepare steps configured")
    prepare_log = dbsnap_settings.logs_dir / "backend-prepare.log"
    assert prepare_log.is_file()
    logged = prepare_log.read_text()
    assert all(
        (step if isinstance(step, str) else " ".join(step)).split()[-1] in logged
        for step in dbsnap_settings.backend.prepare
    )


def test_health_endpoint_is_ok(backend: RunningService) -> None:
    response = backend.client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok"}


def test_list_endpoint_pages_through_nodes(backend: RunningService, dbsnap_db: psycopg.Connection[Any]) -> None:
    response = backend.client.get("/api/reality-nodes", params={"limit": 5, "offset": 0})
    assert response.status_code == 200
    body = response.json()
    total = dbsnap_db.execute("SELECT count(*) FROM reality_nodes").fetchone()
    assert total is not None
    assert body["total"] == total[0]
    assert len(body["items"]) == min(5, total[0])


def test_detail_endpoint_and_missing_id(backend: RunningService, dbsnap_db: psycopg.Connection[Any]) -> None:
    first = dbsnap_db.execute("SELECT id, name, kind FROM reality_nodes ORDER BY id LIMIT 1").fetchone()
    assert first is not None, "the restored database has no nodes"
    found = backend.client.get(f"/api/reality-nodes/{first[0]}")
    assert found.status_code == 200
    assert (found.json()["name"], found.json()["kind"]) == (first[1], first[2])
    highest = dbsnap_db.execute("SELECT coalesce(max(id), 0) FROM reality_nodes").fetchone()
    assert highest is not None
    missing = backend.client.get(f"/api/reality-nodes/{highest[0] + 1000}")
    assert missing.status_code == 404
    assert "error" in missing.json()


def test_bad_query_parameter_is_a_client_error(backend: RunningService) -> None:
    response = backend.client.get("/api/reality-nodes", params={"limit": "many"})
    assert response.status_code in (400, 422)
    assert "error" in response.json()


def test_stats_agree_with_the_database(backend: RunningService, dbsnap_db: psycopg.Connection[Any]) -> None:
    stats = backend.client.get("/api/stats").json()
    counts = dbsnap_db.execute(
        "SELECT (SELECT count(*) FROM reality_nodes), (SELECT count(*) FROM reality_edges)"
    ).fetchone()
    assert counts is not None
    assert (stats["nodes"], stats["edges"]) == counts
