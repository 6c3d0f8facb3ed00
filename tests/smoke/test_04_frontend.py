"""Phase 4, frontend: the page answers with the expected markup and its assets load; in headless Chromium it
renders the database's nodes, passes the axe-core audit (nothing serious or critical) and logs no errors."""

from __future__ import annotations

import re
from typing import Any

import psycopg
import pytest

from pytest_dbsnap import RenderedPage, RunningService, describe_violations

pytestmark = [pytest.mark.smoke, pytest.mark.order(4)]


def test_page_answers_with_expected_markup(frontend: RunningService) -> None:
    response = frontend.client.get("/")
    assert response.status_code == 200
    page = response.text
    assert re.search(r'<html[^>]*\blang="en"', page), "the page has no lang attribute"
    assert re.search(r"<title>[^<]+</title>", page), "the page has no title"
    assert len(re.findall(r"<h1\b", page)) == 1, "the page needs exactly one h1"
    assert 'id="node-list"' in page
    assert "<main" in page
    for select_id in re.findall(r'<select[^>]*id="([^"]+)"', page):
        assert f'for="{select_id}"' in page, f"the control #{select_id} has no label"


def test_assets_load(frontend: RunningService) -> None:
    page = frontend.client.get("/").text
    assets = re.findall(r'(?:href|src)="(/[^"]+\.(?:css|js))"', page)
    assert assets, "the page references no stylesheet or script"
    for asset in assets:
        response = frontend.client.get(asset)
        assert response.status_code == 200, f"{asset} answered {response.status_code}"
        assert response.content, f"{asset} is empty"


def test_frontend_is_pointed_at_the_backend(frontend: RunningService, backend: RunningService) -> None:
    config = frontend.client.get("/config.js")
    assert config.status_code == 200
    assert backend.url in config.text


# --- in a real browser: the page renders the database's data, is accessible, and logs no errors ---------------


def test_rendered_list_shows_the_database(frontend_page: RenderedPage, dbsnap_db: psycopg.Connection[Any]) -> None:
    shown = [int(element.attributes["data-node-id"]) for element in frontend_page.rendered]
    first_rows = dbsnap_db.execute("SELECT id FROM reality_nodes ORDER BY id LIMIT %s", (len(shown),)).fetchall()
    assert shown, "the page rendered no nodes"
    assert shown == [row[0] for row in first_rows], "the page lists other nodes than the database's first rows"
    total = dbsnap_db.execute("SELECT count(*) FROM reality_nodes").fetchone()
    assert total is not None
    shown_total = re.search(r'id="total-nodes"[^>]*>([^<]*)<', frontend_page.html)
    assert shown_total is not None, "the page has no #total-nodes"
    assert shown_total[1].replace(",", "") == str(total[0]), f"the page shows {shown_total[1]!r} nodes in total"
    alert = re.search(r'id="error"[^>]*>([^<]*)<', frontend_page.html)
    assert alert is not None
    assert not alert[1].strip(), f"the page shows an error: {alert[1]}"


def test_no_serious_accessibility_violations(frontend_page: RenderedPage) -> None:
    blocking = frontend_page.blocking_violations
    assert not blocking, describe_violations(blocking, frontend_page.axe_version)


def test_no_console_errors(frontend_page: RenderedPage) -> None:
    errors = frontend_page.console_errors
    assert not errors, "the page logged errors:\n" + "\n".join(f"  {error}" for error in errors)
